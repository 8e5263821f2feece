//! Cost estimation from an operation trace: per-operation costs measured on this machine (one
//! thread), and a token's time as the sum over the trace's batches of
//! `ceil(batch / threads) x unit cost` (a batch of independent operations runs in parallel
//! rounds; a lone operation does not).
//!
//! The unit costs are calibrated through the engine itself: each calibration runs one engine
//! operation in a one-thread pool and divides its time by the counts the engine recorded, so the
//! units mean exactly what the trace counts. Operations recorded together (a PBS records its
//! keyswitch; packed products record their FFTs) are separated by subtracting the measured part.

use super::check::CheckError;
use super::probe::{probe_token, ProbeKeys};
use crate::bench::timing::median_ms;
use crate::model_source::ModelSource;
use serde::Serialize;
use std::collections::BTreeMap;
use veilmoe_engine::accounting::OpEvent;
use veilmoe_engine::keys::KeySizes;
use veilmoe_engine::{
    ClientKey, Cols, Encoding, Evaluator, OpKind, PackedWeights, Result, Rows, ServerKey,
    ValueRange, WeightMatrix,
};
use veilmoe_protocols::{ProtocolError, Strategy};

/// Milliseconds per recorded operation of each kind, single thread.
#[derive(Debug, Clone, Serialize)]
pub struct UnitCosts(pub BTreeMap<String, f64>);

impl UnitCosts {
    fn get(&self, k: OpKind) -> f64 {
        self.0.get(k.name()).copied().unwrap_or(0.0)
    }
}

/// Runs `f` with a fresh evaluator in a one-thread pool: median ms and the recorded counts.
fn timed(
    server: &ServerKey,
    runs: usize,
    f: &(dyn Fn(&Evaluator) -> Result<()> + Sync),
) -> Result<(f64, BTreeMap<OpKind, u64>)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| veilmoe_engine::EngineError::OutOfRange {
            context: "thread pool",
            detail: e.to_string(),
        })?;
    pool.install(|| {
        let ev = Evaluator::new(server);
        f(&ev)?;
        let counts = ev.ops().totals();
        let ms = median_ms(runs, &|| {
            let ev = Evaluator::new(server);
            let _ = f(&ev);
        });
        Ok((ms, counts))
    })
}

/// Measures the unit costs of every operation kind a protocol records.
pub fn calibrate_units(client: &ClientKey, server: &ServerKey, runs: usize) -> Result<UnitCosts> {
    let p = client.preset();
    let small = Encoding::signed(p.message_bits);
    let lut = veilmoe_engine::Lut::univariate(p, small, small, |v| v)?;
    let xs = client.encrypt_lwe(&[1; 8], small)?;
    let per = |(ms, counts): (f64, BTreeMap<OpKind, u64>), k: OpKind| {
        ms / counts.get(&k).copied().unwrap_or(1).max(1) as f64
    };
    let ks = per(
        timed(server, runs, &|ev| ev.keyswitch(&xs).map(|_| ()))?,
        OpKind::Keyswitch,
    );
    let pbs = per(
        timed(server, runs, &|ev| ev.pbs(&xs, &lut).map(|_| ()))?,
        OpKind::Pbs,
    ) - ks;
    let bits = client.encrypt_bits(&[1, 0], small)?;
    let cbs = per(
        timed(server, runs.min(3), &|ev| {
            ev.circuit_bootstrap(&bits).map(|_| ())
        })?,
        OpKind::CircuitBootstrap,
    ) - ks;
    let ev = Evaluator::new(server);
    let ggsw = ev.circuit_bootstrap(&bits)?;
    let packed = client.encrypt_packed(&[1; 64], Encoding::unsigned(12))?;
    let ext = per(
        timed(server, runs, &|ev| {
            ev.external_product(&ggsw[0], &packed).map(|_| ())
        })?,
        OpKind::ExternalProduct,
    );
    let (d, h) = (64usize, 64usize);
    let w = WeightMatrix::new(
        Rows(h),
        Cols(d),
        (0..h * d).map(|i| (i % 7) as i64 - 3).collect(),
    )?;
    let pw = PackedWeights::new(p, w.clone());
    let x = client
        .encrypt_packed(&[1; 64], Encoding::signed(16))?
        .with_range(ValueRange::new(-8, 7)?)?;
    let poly = per(
        timed(server, runs, &|ev| {
            ev.packed_products(&pw, None, &x).map(|_| ())
        })?,
        OpKind::PolyProduct,
    );
    let rows = ev.packed_products(&pw, None, &x)?;
    let extract = per(
        timed(server, runs, &|ev| ev.extract_rows(&rows).map(|_| ()))?,
        OpKind::SampleExtract,
    );
    let lwes = client
        .encrypt_lwe(&[1; 64], Encoding::signed(16))?
        .with_range(ValueRange::new(-8, 7)?)?;
    let wl = WeightMatrix::new(
        Rows(d),
        Cols(h),
        (0..h * d).map(|i| (i % 3) as i64 - 1).collect(),
    )?;
    let mul_add = per(
        timed(server, runs, &|ev| {
            ev.lwe_matvec(&wl, None, &lwes).map(|_| ())
        })?,
        OpKind::LweMulAdd,
    );
    let one = client.encrypt_lwe(&[1], small)?;
    let packing = per(
        timed(server, runs.min(3), &|ev| ev.pack(&one).map(|_| ()))?,
        OpKind::PackingKeyswitch,
    );
    let mut m = BTreeMap::new();
    for (k, v) in [
        (OpKind::Keyswitch, ks),
        (OpKind::Pbs, pbs),
        (OpKind::CircuitBootstrap, cbs),
        (OpKind::ExternalProduct, ext),
        (OpKind::PolyProduct, poly),
        (OpKind::Fft, 0.0),
        (OpKind::SampleExtract, extract),
        (OpKind::LweMulAdd, mul_add),
        (OpKind::PackingKeyswitch, packing),
    ] {
        m.insert(k.name().to_string(), v.max(0.0));
    }
    Ok(UnitCosts(m))
}

/// Estimated wall ms of a trace on `threads` threads, in total and per stage.
pub fn estimate_ms(
    trace: &[OpEvent],
    units: &UnitCosts,
    threads: usize,
) -> (f64, BTreeMap<String, f64>) {
    let t = threads.max(1) as u64;
    let mut per_stage: BTreeMap<String, f64> = BTreeMap::new();
    for e in trace {
        let rounds = e.count.div_ceil(t) as f64;
        *per_stage.entry(e.stage.clone()).or_default() += rounds * units.get(e.kind);
    }
    (per_stage.values().sum(), per_stage)
}

/// What `params estimate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EstimateReport {
    pub preset: String,
    pub model: String,
    pub strategy: Strategy,
    pub threads: usize,
    /// Operation counts of one token per stage and kind.
    pub ops_per_stage: BTreeMap<String, BTreeMap<String, u64>>,
    pub unit_costs_ms: BTreeMap<String, f64>,
    pub estimated_ms_per_token: f64,
    pub estimated_ms_per_stage: BTreeMap<String, f64>,
    pub batch: u64,
    pub estimated_seconds_per_batch: f64,
    pub server_key_bytes: u64,
    pub client_key_bytes: u64,
    /// Client -> server per token (a seeded packed GLWE per N input values).
    pub upload_bytes_per_token: u64,
    /// Server -> client per token (the output LWEs of every term, plus the echoed input).
    pub download_bytes_per_token: u64,
}

/// Estimates a model's cost on a preset: keys in memory, unit costs calibrated through the
/// engine, one token's real operation trace, then `ceil(batch / threads) x unit` per batch.
pub fn estimate(
    preset: &veilmoe_engine::Preset,
    source: &ModelSource,
    strategy: Strategy,
    threads: usize,
    batch: u64,
    status: &mut dyn FnMut(&str),
) -> std::result::Result<EstimateReport, CheckError> {
    let strat = strategy.oblivious()?;
    let model = source.load_classifier(preset)?;
    status(&format!("generating keys ({preset}) ..."));
    let keys = ProbeKeys::generate(preset);
    status("calibrating unit costs (one thread) ...");
    let units = calibrate_units(&keys.client, &keys.server, 5)?;
    status("tracing one token ...");
    let probe = probe_token(&keys.client, &keys.server, &model.moe, strat)?;
    let y_terms = match (&probe.y_terms, &probe.refusal) {
        (Some(n), _) => *n,
        (None, reason) => {
            return Err(ProtocolError::Config(format!(
                "the model cannot run on preset `{}`: {}",
                preset.name,
                reason.as_deref().unwrap_or("refused")
            ))
            .into())
        }
    };
    let (total, per_stage) = estimate_ms(&probe.trace, &units, threads);
    let ops_per_stage = probe
        .counts
        .into_iter()
        .map(|(s, m)| {
            (
                s,
                m.into_iter()
                    .map(|(k, v)| (k.name().to_string(), v))
                    .collect(),
            )
        })
        .collect();
    let sizes = KeySizes::of(preset);
    let n = preset.glwe.polynomial_size as u64;
    let d = model.features() as u64;
    let glwes = d.div_ceil(n);
    let upload = glwes * n * 8 + 64;
    let lwe = (preset.glwe.dimension as u64 * n + 1) * 8;
    let download = y_terms as u64 * d * lwe + upload;
    Ok(EstimateReport {
        preset: preset.name.clone(),
        model: source.label(),
        strategy,
        threads,
        ops_per_stage,
        unit_costs_ms: units.0,
        estimated_ms_per_token: total,
        estimated_ms_per_stage: per_stage,
        batch,
        estimated_seconds_per_batch: total * batch as f64 / 1e3,
        server_key_bytes: sizes.server_key,
        client_key_bytes: sizes.client_key,
        upload_bytes_per_token: upload,
        download_bytes_per_token: download,
    })
}

impl std::fmt::Display for EstimateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::params::human_bytes;
        writeln!(
            f,
            "params estimate: {} on preset {}, strategy {}, {} threads",
            self.model, self.preset, self.strategy, self.threads
        )?;
        for (stage, ops) in &self.ops_per_stage {
            let list: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
            writeln!(
                f,
                "  {:<16} {:>9.1} ms  {}",
                stage,
                self.estimated_ms_per_stage
                    .get(stage)
                    .copied()
                    .unwrap_or(0.0),
                list.join(", ")
            )?;
        }
        writeln!(
            f,
            "  per token: {:.2} s; batch of {}: {:.1} min",
            self.estimated_ms_per_token / 1e3,
            self.batch,
            self.estimated_seconds_per_batch / 60.0
        )?;
        write!(
            f,
            "  keys: server {}, client {}; per token: upload {}, download {}",
            human_bytes(self.server_key_bytes),
            human_bytes(self.client_key_bytes),
            human_bytes(self.upload_bytes_per_token),
            human_bytes(self.download_bytes_per_token)
        )
    }
}
