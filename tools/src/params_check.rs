//! `params check`: will this model run correctly and securely on this preset?
//!
//! Accumulator ranges come from the quantized model (the widths the requantizing reads use).
//! The noise side is not a second, analytic copy of the protocol that could drift from it: the
//! check generates keys for the preset in memory and runs one token through the real encrypted
//! layer, then reads the engine's own bookkeeping: for every stage, how many bootstrapped reads
//! (PBS and circuit-bootstrap inputs) it made and the largest input variance bound it tracked
//! (from the weights' 2-norms, the preset's noise, the FFT error, keyswitch and modulus switch).
//! Per-read failure probabilities follow from the noise model; per token and per batch by the
//! union bound. Noise bookkeeping depends only on the public architecture, never on the token.

use crate::model_source::{load_classifier, ModelError, ModelSource};
use serde::Serialize;
use thiserror::Error;
use veilmoe_engine::{noise, EngineError, Preset};
use veilmoe_protocols::ProtocolError;

#[derive(Debug, Error)]
pub enum CheckError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One requantizing read of a wide accumulator.
#[derive(Debug, Clone, Serialize)]
pub struct AccumulatorCheck {
    pub stage: String,
    /// Worst-case accumulator range (from the integer weights).
    pub min: i64,
    pub max: i64,
    /// Encoding width the accumulator lives in.
    pub width: u32,
    /// Low bits the read drops (the PBS reads `message_bits` + padding).
    pub dropped_bits: u32,
}

/// The bootstrapped reads of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageCheck {
    pub stage: String,
    pub reads: u64,
    pub max_variance: f64,
    pub budget: f64,
    pub within_budget: bool,
    /// log2 of one read's failure probability at `max_variance` (calibrated on the preset's
    /// published figure at its budget).
    pub log2_p_fail_per_read: f64,
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
    pub strategy: String,
    pub accumulators: Vec<AccumulatorCheck>,
    pub stages: Vec<StageCheck>,
    /// Union bound over the token's reads (log2).
    pub log2_p_fail_token: f64,
    pub batch: u64,
    pub log2_p_fail_batch: f64,
    pub pass: bool,
    /// What failed and what to change (empty when it passes).
    pub advice: Vec<String>,
}

/// Worst-case range of every first-stage accumulator (router, W1, W3 rows with biases) over
/// inputs in the signed m-bit range.
fn first_stage_range(moe: &veilmoe_protocols::QuantizedMoe) -> (i64, i64) {
    let d = moe.config.d.0;
    let (lo, hi) = (moe.quant.input_min(), moe.quant.input_max());
    let mut mats: Vec<(&[i64], Option<&[i64]>)> = vec![(&moe.router, moe.router_bias.as_deref())];
    for x in &moe.experts {
        mats.push((&x.w1, x.b1.as_deref()));
        if let Some(w3) = &x.w3 {
            mats.push((w3, x.b3.as_deref()));
        }
    }
    let (mut min, mut max) = (0i64, 0i64);
    for (w, b) in mats {
        for (r, row) in w.chunks(d).enumerate() {
            let bias = b.map_or(0, |b| b[r]);
            let (mut rl, mut rh) = (bias, bias);
            for &c in row {
                rl += (c * lo).min(c * hi);
                rh += (c * lo).max(c * hi);
            }
            min = min.min(rl);
            max = max.max(rh);
        }
    }
    (min, max)
}

/// log2 of one read's failure probability at input variance `var`, calibrated on the preset's
/// published figure: the Gaussian tail whose kappa gives exactly the declared probability at
/// the budget (Concrete's p_error -> kappa = sqrt(2) erfc^-1(p_error)), scaled by the standard
/// deviation at the blind rotation (input + keyswitch + modulus switch).
pub fn calibrated_log2_p_fail(preset: &Preset, var: f64) -> f64 {
    let budget = noise::pbs_input_budget(preset);
    let kappa = noise::kappa_for_log2_p(preset.log2_p_fail);
    let ratio = noise::variance_at_blind_rotation(preset, budget)
        / noise::variance_at_blind_rotation(preset, var);
    noise::log2_erfc(kappa * ratio.sqrt() / std::f64::consts::SQRT_2)
}

/// Runs the check; `status` gets one line per phase.
pub fn check(
    preset: &Preset,
    source: &ModelSource,
    strategy: &str,
    batch: u64,
    status: &mut dyn FnMut(&str),
) -> Result<CheckReport, CheckError> {
    let strat = crate::job::strategy_by_name(strategy)
        .map_err(|e| CheckError::Protocol(ProtocolError::Config(e.to_string())))?;
    let model = load_classifier(source, preset.message_bits)?;
    let moe = &model.moe;
    let m = preset.message_bits;
    let (lo, hi) = moe.expert_output_range();
    let first = moe.input_width();
    let out = moe.expert_output_width();
    let (flo, fhi) = first_stage_range(&model.moe);
    let accumulators = vec![
        AccumulatorCheck {
            stage: "first stage (router, W1, W3)".into(),
            min: flo,
            max: fhi,
            width: first,
            dropped_bits: first - m,
        },
        AccumulatorCheck {
            stage: "expert output (W2)".into(),
            min: lo as i64,
            max: hi as i64,
            width: out,
            dropped_bits: out - m,
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
    let keys = crate::probe::ProbeKeys::generate(preset);
    status("running one token through the encrypted layer ...");
    let probe = crate::probe::probe_token(&keys.client, &keys.server, moe, strat)?;
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
        strategy: strategy.to_string(),
        accumulators,
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
            writeln!(
                f,
                "    {:<30} [{}, {}] in {} bits, read dropping {} low bits",
                a.stage, a.min, a.max, a.width, a.dropped_bits
            )?;
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
