//! Operation accounting: what the server did, grouped by a stage tag the caller sets.
//!
//! Every server-side operation of [`crate::Evaluator`] records one [`OpEvent`] (kind, count, the
//! size that matters for its cost) under the current stage. The counts feed benchmarks and the
//! params tool's cost estimates; the ordered event list is the server's *operation trace*, which
//! must be identical for every input for a protocol to be data-oblivious.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Kinds of server operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OpKind {
    /// Programmable bootstrapping (one blind rotation; many-LUT outputs are not counted extra).
    Pbs,
    /// LWE keyswitch big -> small.
    Keyswitch,
    /// Circuit bootstrap of one bit into a GGSW (itself `level` PBS plus packing keyswitches).
    CircuitBootstrap,
    /// External product GGSW x GLWE (a CMUX is one).
    ExternalProduct,
    /// LWE -> GLWE packing keyswitch, counted per output GLWE (its FFT form costs the same for
    /// one value or N).
    PackingKeyswitch,
    /// GLWE x plaintext polynomial product (FFT domain), counted per product.
    PolyProduct,
    /// Forward/backward FFT of one polynomial.
    Fft,
    /// Multiply-accumulate of one LWE ciphertext by a plaintext scalar.
    LweMulAdd,
    /// Sample extraction of one coefficient.
    SampleExtract,
}

impl OpKind {
    pub const ALL: [OpKind; 9] = [
        OpKind::Pbs,
        OpKind::Keyswitch,
        OpKind::CircuitBootstrap,
        OpKind::ExternalProduct,
        OpKind::PackingKeyswitch,
        OpKind::PolyProduct,
        OpKind::Fft,
        OpKind::LweMulAdd,
        OpKind::SampleExtract,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Pbs => "pbs",
            OpKind::Keyswitch => "keyswitch",
            OpKind::CircuitBootstrap => "circuit_bootstrap",
            OpKind::ExternalProduct => "external_product",
            OpKind::PackingKeyswitch => "packing_keyswitch",
            OpKind::PolyProduct => "poly_product",
            OpKind::Fft => "fft",
            OpKind::LweMulAdd => "lwe_mul_add",
            OpKind::SampleExtract => "sample_extract",
        }
    }
}

/// One recorded operation batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEvent {
    pub stage: String,
    pub kind: OpKind,
    /// How many operations of this kind the batch did.
    pub count: u64,
    /// The cost-relevant size (for example the LWE dimension or the number of outputs).
    pub size: u64,
}

/// Thread-safe recorder of operations, and of the wall time spent in each stage (a stage runs
/// from one `set_stage` to the next), so a benchmark can say where a token's time goes.
#[derive(Debug, Default)]
pub struct OpLog {
    stage: Mutex<String>,
    events: Mutex<Vec<OpEvent>>,
    timing: Mutex<StageTiming>,
    reads: Mutex<BTreeMap<String, NoisyReads>>,
}

/// The bootstrapped reads (PBS and circuit-bootstrap inputs) of one stage: how many, and the
/// largest input variance bound the engine tracked for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NoisyReads {
    pub count: u64,
    pub max_variance: f64,
}

#[derive(Debug, Default)]
struct StageTiming {
    started: Option<std::time::Instant>,
    ms: BTreeMap<String, f64>,
}

/// Per-stage, per-kind totals.
pub type OpCounts = BTreeMap<String, BTreeMap<OpKind, u64>>;

impl OpLog {
    pub fn new() -> OpLog {
        OpLog {
            stage: Mutex::new("main".into()),
            events: Mutex::new(Vec::new()),
            timing: Mutex::new(StageTiming {
                started: Some(std::time::Instant::now()),
                ms: BTreeMap::new(),
            }),
            reads: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets the stage tag for the following operations (and closes the previous stage's time).
    pub fn set_stage(&self, stage: &str) {
        let mut current = lock(&self.stage);
        self.close_stage(&current);
        *current = stage.to_string();
    }

    fn close_stage(&self, stage: &str) {
        let mut t = lock(&self.timing);
        let now = std::time::Instant::now();
        if let Some(start) = t.started.replace(now) {
            *t.ms.entry(stage.to_string()).or_default() +=
                now.duration_since(start).as_secs_f64() * 1e3;
        }
    }

    /// Notes `count` bootstrapped reads of input variance `variance` in the current stage.
    pub fn note_read(&self, count: u64, variance: f64) {
        let stage = self.stage();
        let mut reads = lock(&self.reads);
        let r = reads.entry(stage).or_default();
        r.count += count;
        r.max_variance = r.max_variance.max(variance);
    }

    /// Bootstrapped reads per stage (what a failure-probability check needs).
    pub fn reads(&self) -> BTreeMap<String, NoisyReads> {
        lock(&self.reads).clone()
    }

    /// Wall time per stage so far, in milliseconds (the current stage up to now).
    pub fn stage_ms(&self) -> BTreeMap<String, f64> {
        let current = lock(&self.stage);
        self.close_stage(&current);
        lock(&self.timing).ms.clone()
    }

    /// The current stage tag.
    pub fn stage(&self) -> String {
        lock(&self.stage).clone()
    }

    /// Records a batch of `count` operations of `kind`.
    pub fn record(&self, kind: OpKind, count: u64, size: u64) {
        if count == 0 {
            return;
        }
        let stage = self.stage();
        lock(&self.events).push(OpEvent {
            stage,
            kind,
            count,
            size,
        });
    }

    /// The ordered trace.
    pub fn trace(&self) -> Vec<OpEvent> {
        lock(&self.events).clone()
    }

    /// Totals per stage and kind.
    pub fn counts(&self) -> OpCounts {
        let mut out = OpCounts::new();
        for e in lock(&self.events).iter() {
            *out.entry(e.stage.clone())
                .or_default()
                .entry(e.kind)
                .or_default() += e.count;
        }
        out
    }

    /// Totals per kind over all stages.
    pub fn totals(&self) -> BTreeMap<OpKind, u64> {
        let mut out = BTreeMap::new();
        for e in lock(&self.events).iter() {
            *out.entry(e.kind).or_default() += e.count;
        }
        out
    }

    /// Total of one kind.
    pub fn total(&self, kind: OpKind) -> u64 {
        self.totals().get(&kind).copied().unwrap_or(0)
    }

    /// Forgets all events (keeps the stage).
    pub fn clear(&self) {
        lock(&self.events).clear();
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the log stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_by_stage_and_keep_order() {
        let log = OpLog::new();
        log.set_stage("router");
        log.record(OpKind::Pbs, 8, 866);
        log.record(OpKind::Keyswitch, 8, 2048);
        log.set_stage("expert");
        log.record(OpKind::Pbs, 4, 866);
        log.record(OpKind::Fft, 0, 1);
        let c = log.counts();
        assert_eq!(c["router"][&OpKind::Pbs], 8);
        assert_eq!(c["expert"][&OpKind::Pbs], 4);
        assert_eq!(log.total(OpKind::Pbs), 12);
        let t = log.trace();
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].stage, "expert");
    }
}
