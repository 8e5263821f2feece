//! What the quantizer may do ([`QuantizeOptions`]) and the choices it makes ([`QuantChoice`]),
//! which a quantization-aware trained model declares in its config.json.

/// What the quantizer may do.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// Bits a PBS reads (the preset's message bits).
    pub message_bits: u32,
    /// The preset's noise budget: largest 2-norm of a dot product over PBS outputs.
    pub max_norm2: f64,
    /// Shift of the first-stage reads: the first-stage weights get about this many bits of
    /// precision (wider costs nothing in noise: the packed inputs are fresh encryptions).
    pub first_stage_shift: u32,
    /// Gate bits (see [`crate::quant::QuantParams::gate_bits`]).
    pub gate_bits: u32,
    /// Search the choices by calibration (`false`: the defaults of [`QuantChoice`]).
    pub search: bool,
    /// Use the choice a model declares (`FloatMoeModel::quantization`) instead of searching:
    /// a quantization-aware trained model is only accurate under the quantization it was
    /// trained for.
    pub use_model_choice: bool,
    /// Calibration records used to score a candidate (evenly spaced; all for the input range).
    pub max_scored: usize,
}

impl QuantizeOptions {
    /// Options for a preset reading `message_bits`, with the 4-bit presets' noise budget
    /// (`max_norm2 = 5`).
    pub fn for_message_bits(message_bits: u32) -> QuantizeOptions {
        QuantizeOptions {
            message_bits,
            max_norm2: 5.0,
            first_stage_shift: 10,
            gate_bits: 3,
            search: true,
            use_model_choice: true,
            max_scored: 1000,
        }
    }
}

/// The choices the search makes (see the module docs). A model trained for one quantization
/// (quantization-aware training) declares it in config.json (`"veilmoe": {"quantization":
/// {...}}`, these field names); [`super::quantize_with`] then uses it as is.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantChoice {
    pub router_prune: f64,
    pub w1_prune: f64,
    pub w3_prune: f64,
    /// Fraction of the largest reachable activation mapped to the top of the factor range.
    pub act_clip: f64,
    /// Integer value of the largest W2 weight (before clipping to the noise limit).
    pub w2_top: f64,
    /// Largest L1 norm of an integer W2 row (`None`: only the noise limit). The output read's
    /// shift follows the worst row's L1 norm, so a small budget keeps the read fine.
    pub w2_l1: Option<i64>,
    /// Subtract the per-input median over experts from the router rows first (see
    /// `center_router`: the routing does not change, the read step shrinks).
    pub router_center: bool,
    /// `None`: placed from calibration.
    pub logit_zero_point: Option<i64>,
    /// Switch/Qwen gating numerator (`None`: half the cap).
    pub switch_numerator: Option<i64>,
}

impl Default for QuantChoice {
    fn default() -> Self {
        QuantChoice {
            router_prune: 0.0,
            w1_prune: 0.0,
            w3_prune: 0.0,
            act_clip: 1.0,
            w2_top: 3.0,
            w2_l1: None,
            router_center: true,
            logit_zero_point: None,
            switch_numerator: None,
        }
    }
}
