//! `params check`: will this model run correctly and securely on this preset?
//!
//! Accumulator ranges come from the quantized model (the widths the requantizing reads use; the
//! expert outputs are not read, they leave the server wide).
//! The noise side is not a second, analytic copy of the protocol that could drift from it: the
//! check generates keys for the preset in memory and runs one token through the real encrypted
//! layer, then reads the engine's own bookkeeping: for every stage, how many bootstrapped reads
//! (PBS and circuit-bootstrap inputs) it made and the largest input variance bound it tracked
//! (from the weights' 2-norms, the preset's noise, the FFT error, keyswitch and modulus switch).
//! Per-read failure probabilities follow from the noise model; per token and per batch by the
//! union bound. Noise bookkeeping depends only on the public architecture, never on the token.

use super::probe::{probe_token, ProbeKeys, StageCheck};
use crate::model_source::{ModelSource, SourceError};
use serde::Serialize;
use thiserror::Error;
use veilmoe_engine::{EngineError, Preset};
use veilmoe_model::{reference_fidelity, Fidelity, Rounding};
use veilmoe_protocols::{ProtocolError, Strategy};

#[derive(Debug, Error)]
pub enum CheckError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One wide accumulator: read back to m bits by a PBS, or returned wide to the client.
#[derive(Debug, Clone, Serialize)]
pub struct AccumulatorCheck {
    pub stage: String,
    /// Worst-case accumulator range (from the integer weights).
    pub min: i64,
    pub max: i64,
    /// Encoding width the accumulator lives in.
    pub width: u32,
    /// Whether a PBS reads it (false: it leaves the server wide and the client decrypts it at
    /// full width).
    pub read: bool,
    /// Low bits the read drops (the PBS reads `message_bits` + padding); 0 when not read.
    pub dropped_bits: u32,
    /// The box the encoding holds when it was sized from calibrated ranges and the worst case
    /// exceeds it (a value beyond it wraps); `None`: the worst case fits.
    pub calibrated_box: Option<(i64, i64)>,
}

/// Where precision is lost: the quantized reference (exact rounding) against the float model.
#[derive(Debug, Clone, Serialize)]
pub struct FidelityCheck {
    /// The records compared on.
    pub records: String,
    pub fidelity: Fidelity,
    /// The first stage whose cosine to the float values falls below [`FAITHFUL_COSINE`], in
    /// the order the token meets them (block output last); `None` when every stage keeps it.
    pub first_lossy_stage: Option<String>,
    /// Of the records compared on, how many push a value past a calibrated box (they would
    /// wrap under encryption), and how many there are.
    pub overflowing_records: (usize, usize),
}

/// A stage whose mean cosine to the float model is below this has visibly lost meaning.
pub const FAITHFUL_COSINE: f64 = 0.9;

impl FidelityCheck {
    fn new(
        records: String,
        fidelity: Fidelity,
        overflowing_records: (usize, usize),
    ) -> FidelityCheck {
        let first_lossy_stage = fidelity
            .stages
            .iter()
            .map(|s| (s.stage, s.fidelity.cosine_mean))
            .chain(std::iter::once((
                "block output",
                fidelity.block_output.cosine_mean,
            )))
            .find(|(_, c)| *c < FAITHFUL_COSINE)
            .map(|(s, _)| s.to_string());
        FidelityCheck {
            records,
            fidelity,
            first_lossy_stage,
            overflowing_records,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub preset: String,
    pub security_bits: u32,
    /// Certified by Concrete's lattice-estimator-fitted curves (see `veilmoe_engine::security`).
    pub estimated_security_bits: u32,
    pub insecure: bool,
    pub message_bits: u32,
    pub model: String,
    pub experts: usize,
    pub top_k: usize,
    pub d: usize,
    pub h: usize,
    pub strategy: Strategy,
    pub accumulators: Vec<AccumulatorCheck>,
    /// The quantized model against its float model (`None` for a model file: no float
    /// weights to compare with).
    pub fidelity: Option<FidelityCheck>,
    pub stages: Vec<StageCheck>,
    /// Union bound over the token's reads (log2).
    pub log2_p_fail_token: f64,
    pub batch: u64,
    pub log2_p_fail_batch: f64,
    pub pass: bool,
    /// What failed and what to change (empty when it passes).
    pub advice: Vec<String>,
}

/// Runs the check; `status` gets one line per phase.
pub fn check(
    preset: &Preset,
    source: &ModelSource,
    strategy: Strategy,
    batch: u64,
    status: &mut dyn FnMut(&str),
) -> Result<CheckReport, CheckError> {
    let strat = strategy.oblivious()?;
    let (model, float) = source.load_with_float(preset)?;
    let moe = &model.moe;
    let fidelity = match &float {
        Some(f) => {
            status(&format!("fidelity to the float model on {} ...", f.origin));
            let overflowing = model
                .overflowing_records(&f.records)
                .map_err(ProtocolError::from)?
                .len();
            Some(FidelityCheck::new(
                f.origin.clone(),
                reference_fidelity(&f.float, &model, &f.records, &mut Rounding::Exact)
                    .map_err(ProtocolError::from)?,
                (overflowing, f.records.len()),
            ))
        }
        None => None,
    };
    let m = preset.message_bits;
    let (lo, hi) = moe.encrypted_output_range();
    let first = moe.input_width();
    let out = moe.slot_output_width();
    let (flo, fhi) = moe.first_stage_range();
    let accumulators = vec![
        AccumulatorCheck {
            stage: "first stage (router, W1, W3)".into(),
            min: flo as i64,
            max: fhi as i64,
            width: first,
            read: true,
            dropped_bits: first - m,
            calibrated_box: moe.first_stage_declared(),
        },
        AccumulatorCheck {
            stage: match moe.output_digits {
                Some(g) => format!("expert output (W2 = 2^{} hi + lo, per digit)", g.shift),
                None => "expert output (W2)".into(),
            },
            min: lo as i64,
            max: hi as i64,
            width: out,
            read: false,
            dropped_bits: 0,
            calibrated_box: moe.expert_output_declared(),
        },
    ];
    let mut advice = Vec::new();
    let estimate = preset.estimated_security();
    if preset.insecure || preset.security_bits < 128 || estimate.certified_bits < 128 {
        advice.push(format!(
            "preset `{}` is below 128-bit security ({}; estimated {estimate} from Concrete's \
             lattice-estimator curves): tests only, never real data",
            preset.name,
            if preset.insecure {
                "marked insecure".to_string()
            } else {
                format!("claims {} bits", preset.security_bits)
            }
        ));
    }
    status(&format!("generating keys ({preset}) ..."));
    let keys = ProbeKeys::generate(preset);
    status("running one token through the encrypted layer ...");
    let probe = probe_token(&keys.client, &keys.server, moe, strat)?;
    advice.extend(probe.refusal.clone());
    let token = probe.log2_p_fail_token();
    let stages = probe.stages;
    let pass = advice.is_empty() && stages.iter().all(|s| s.within_budget);
    Ok(CheckReport {
        preset: preset.name.clone(),
        security_bits: preset.security_bits,
        estimated_security_bits: estimate.certified_bits,
        insecure: preset.insecure,
        message_bits: m,
        model: source.label(),
        experts: moe.config.experts.0,
        top_k: moe.config.top_k.0,
        d: moe.config.d.0,
        h: moe.config.h.0,
        strategy,
        accumulators,
        fidelity,
        stages,
        log2_p_fail_token: token,
        batch,
        log2_p_fail_batch: token + (batch.max(1) as f64).log2(),
        pass,
        advice,
    })
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "params check: {} (E = {}, k = {}, d = {}, h = {}) on preset {} ({}), strategy {}",
            self.model,
            self.experts,
            self.top_k,
            self.d,
            self.h,
            self.preset,
            if self.insecure {
                "INSECURE".to_string()
            } else {
                format!("{}-bit security", self.security_bits)
            },
            self.strategy
        )?;
        writeln!(
            f,
            "  accumulators ({} bits read per PBS):",
            self.message_bits
        )?;
        for a in &self.accumulators {
            let fate = if a.read {
                format!("read dropping {} low bits", a.dropped_bits)
            } else {
                "returned wide (no read)".to_string()
            };
            let calibrated = match a.calibrated_box {
                Some((lo, hi)) => {
                    format!(" (worst case; calibrated box [{lo}, {hi}]: a value beyond it wraps)")
                }
                None => String::new(),
            };
            writeln!(
                f,
                "    {:<30} [{}, {}]{calibrated} in {} bits, {fate}",
                a.stage, a.min, a.max, a.width
            )?;
        }
        match &self.fidelity {
            Some(fc) => {
                let fd = &fc.fidelity;
                writeln!(f, "  fidelity to the float model ({}):", fc.records)?;
                for s in &fd.stages {
                    writeln!(f, "    {:<30} {}", s.stage, s.fidelity)?;
                }
                writeln!(f, "    {:<30} {}", "block output", fd.block_output)?;
                write!(
                    f,
                    "    experts agree with the float router on {:.1} % of records",
                    100.0 * fd.expert_agreement
                )?;
                match fd.top1_agreement {
                    Some(t) => writeln!(f, ", predictions on {:.1} %", 100.0 * t)?,
                    None => writeln!(f)?,
                }
                let (over, n) = fc.overflowing_records;
                if self.accumulators.iter().any(|a| a.calibrated_box.is_some()) {
                    writeln!(
                        f,
                        "    calibrated ranges: {over} of {n} records push a value past its box \
                         (it would wrap under encryption)"
                    )?;
                }
                match &fc.first_lossy_stage {
                    Some(stage) => writeln!(
                        f,
                        "    precision is first lost at: {stage} (cosine below {FAITHFUL_COSINE})"
                    )?,
                    None => writeln!(
                        f,
                        "    every stage keeps a cosine of {FAITHFUL_COSINE} or more"
                    )?,
                }
            }
            None => writeln!(
                f,
                "  fidelity to the float model: not measured (a model file holds no float \
                 weights; pass the checkpoint directory)"
            )?,
        }
        writeln!(f, "  bootstrapped reads per token:")?;
        for s in &self.stages {
            writeln!(
                f,
                "    {:<14} {:>6} reads, max variance {:.2e} (budget {:.2e}) {} p_fail/read 2^{:.1}",
                s.stage,
                s.reads,
                s.max_variance,
                s.budget,
                if s.within_budget { "ok  " } else { "OVER" },
                s.log2_p_fail_per_read
            )?;
        }
        writeln!(
            f,
            "  failure probability: 2^{:.1} per token, 2^{:.1} per batch of {}",
            self.log2_p_fail_token, self.log2_p_fail_batch, self.batch
        )?;
        if self.pass {
            write!(f, "  verdict: PASS")
        } else {
            writeln!(f, "  verdict: FAIL")?;
            for a in &self.advice {
                writeln!(f, "    - {a}")?;
            }
            Ok(())
        }
    }
}
