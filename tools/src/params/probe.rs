//! One token through the real encrypted layer, for the `params` tools: its operation trace (for
//! cost estimates) and the engine's per-stage record of bootstrapped reads (for failure
//! probabilities). `params check`, `estimate` and `sweep` all read the protocol from here
//! rather than from an analytic copy of it that could drift.
//!
//! Both records depend only on the public architecture (shapes, strategy, preset), never on
//! the token's values: the server does not branch on data, so a zero token is as good as any.

use serde::Serialize;
use veilmoe_engine::accounting::{OpCounts, OpEvent};
use veilmoe_engine::{noise, ClientKey, EngineError, Evaluator, Preset, ServerKey};
use veilmoe_model::QuantizedMoe;
use veilmoe_protocols::{ExpertStrategy, MoeLayer, ProtocolError};

/// The bootstrapped reads of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageCheck {
    pub stage: String,
    pub reads: u64,
    pub max_variance: f64,
    pub budget: f64,
    pub within_budget: bool,
    /// log2 of one read's failure probability at `max_variance` (the worse of the figure
    /// calibrated on the preset's published one and veilmoe's noise model).
    pub log2_p_fail_per_read: f64,
}

/// log2 of one read's failure probability at input variance `var`: the worse of two figures.
/// One is calibrated on the preset's published figure: the Gaussian tail whose kappa gives
/// exactly the declared probability at the budget (Concrete's p_error -> kappa = sqrt(2)
/// erfc^-1(p_error)), scaled by the standard deviation at the blind rotation (input, keyswitch
/// and modulus switch). The other is veilmoe's own noise model ([`noise::log2_p_fail`]), which is
/// about 4 bits more pessimistic than tfhe's published figure on `default` (2^-124.6 against
/// 2^-128.6 at the budget): until the two agree, a report takes the worse.
pub fn calibrated_log2_p_fail(preset: &Preset, var: f64) -> f64 {
    let budget = noise::pbs_input_budget(preset);
    let kappa = noise::kappa_for_log2_p(preset.log2_p_fail);
    let ratio = noise::variance_at_blind_rotation(preset, budget)
        / noise::variance_at_blind_rotation(preset, var);
    let calibrated = noise::log2_erfc(kappa * ratio.sqrt() / std::f64::consts::SQRT_2);
    calibrated.max(noise::log2_p_fail(preset, var, preset.pbs_read_bits()))
}

/// What one probed token recorded.
#[derive(Debug, Clone)]
pub struct TokenProbe {
    /// Every recorded operation batch, in order.
    pub trace: Vec<OpEvent>,
    /// Operation counts per stage.
    pub counts: OpCounts,
    /// Bootstrapped reads per stage, with their largest tracked input variance.
    pub stages: Vec<StageCheck>,
    /// Output LWE vectors the client downloads (one per gated term), when the token completed.
    pub y_terms: Option<usize>,
    /// Why the token could not complete within the preset's limits (noise budget or encoding
    /// range), with what to change; `None` when it completed.
    pub refusal: Option<String>,
}

impl TokenProbe {
    /// Union bound of the token's read failure probabilities (log2).
    pub fn log2_p_fail_token(&self) -> f64 {
        log2_sum(
            self.stages
                .iter()
                .map(|s| s.log2_p_fail_per_read + (s.reads as f64).log2()),
        )
    }

    /// Completed, and every read within the preset's noise budget.
    pub fn within_limits(&self) -> bool {
        self.refusal.is_none() && self.stages.iter().all(|s| s.within_budget)
    }
}

/// log2(sum 2^x) without overflow.
fn log2_sum(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp2()).sum::<f64>().log2()
}

/// Runs one zero token of `moe` with `strategy`. A noise-budget or range refusal by the engine
/// is part of the answer (`refusal`); any other error is returned.
pub fn probe_token(
    client: &ClientKey,
    server: &ServerKey,
    moe: &QuantizedMoe,
    strategy: &dyn ExpertStrategy,
) -> Result<TokenProbe, ProtocolError> {
    let preset = client.preset();
    let ev = Evaluator::new(server);
    let budget = noise::pbs_input_budget(preset);
    let outcome = (|| -> Result<usize, ProtocolError> {
        let layer = MoeLayer::new(&ev, moe.clone())?;
        let ct = layer.encrypt(client, &vec![0i64; moe.config.d.0])?;
        Ok(layer.forward(&ev, &ct, strategy)?.y_terms.len())
    })();
    let (y_terms, refusal) = match outcome {
        Ok(n) => (Some(n), None),
        Err(ProtocolError::Engine(EngineError::NoiseBudget {
            context,
            variance,
            budget,
        })) => (
            None,
            Some(format!(
                "stage `{}`: {context} variance {variance:.2e} exceeds the budget {budget:.2e}: \
                 use smaller weights (a lower 2-norm per output row), fewer experts (a shallower \
                 CMUX tree) or fewer bits, or a preset with a larger budget",
                ev.ops().stage()
            )),
        ),
        Err(ProtocolError::Engine(EngineError::OutOfRange { context, detail })) => (
            None,
            Some(format!(
                "{context}: {detail}: the accumulator does not fit the encoding; use fewer \
                 weight bits or a preset with more precision"
            )),
        ),
        Err(other) => return Err(other),
    };
    let stages = ev
        .ops()
        .reads()
        .into_iter()
        .map(|(stage, r)| StageCheck {
            stage,
            reads: r.count,
            max_variance: r.max_variance,
            budget,
            within_budget: r.max_variance <= budget,
            log2_p_fail_per_read: calibrated_log2_p_fail(preset, r.max_variance),
        })
        .collect();
    Ok(TokenProbe {
        trace: ev.ops().trace(),
        counts: ev.ops().counts(),
        stages,
        y_terms,
        refusal,
    })
}

/// Keys for probing a preset, made in memory (never written).
pub struct ProbeKeys {
    pub client: ClientKey,
    pub server: ServerKey,
}

impl ProbeKeys {
    pub fn generate(preset: &Preset) -> ProbeKeys {
        let client = ClientKey::generate(preset);
        let server = client.server_key();
        ProbeKeys { client, server }
    }
}
