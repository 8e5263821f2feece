//! What the quantizer may do ([`QuantizeOptions`]) and the choices it makes ([`QuantChoice`]),
//! which a quantization-aware trained model declares in its config.json.

/// What the quantizer may do.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// Bits a PBS reads (the preset's message bits).
    pub message_bits: u32,
    /// The preset's noise budget: largest 2-norm of a dot product over PBS outputs that a PBS
    /// still reads within the preset's failure probability.
    pub max_norm2: f64,
    /// How much noise a wide (unread) expert output may carry, as a factor on the standard
    /// deviation of a PBS input at the preset's budget (a dot product of 2-norm `max_norm2`
    /// over PBS outputs). No PBS reads `W2 a`: its noise only blurs what the client decrypts, so
    /// W2 rows may be larger than a read's budget allows (see
    /// [`QuantizeOptions::w2_norm2_limit`]). At 8 the output's noise std stays within 0.042
    /// read step on `default` (whose budget std is 0.0052 read step), a seventh of the rounding
    /// error (std 0.29 step) a read of the output used to add. The factor trades W2's precision
    /// against that noise; measured on the Hugging Face-style checkpoints (BENCHMARKS.md), the
    /// former 2.68 held W2 so coarse that the decrypted Qwen2-MoE block reached cosine 0.911 on
    /// `default` where 8 reaches 0.950 (0.945 -> 0.971 on `fine`); past about 10 the limit no
    /// longer binds and only the noise grows; with more activation reads (which divide the
    /// allowance) 16 pays (at most [`MAX_WIDE_OUTPUT_NOISE`]).
    pub wide_output_noise: f64,
    /// Shift of the first-stage reads for inputs of `message_bits`: the first-stage weights
    /// get about this many bits of precision (wider costs nothing in noise: the packed inputs
    /// are fresh encryptions). Each input bit beyond a read's adds one to the shift. By
    /// default [`DEFAULT_FIRST_STAGE_SHIFT`]; a model that declares the quantization it was
    /// trained for keeps [`TRAINED_FIRST_STAGE_SHIFT`].
    pub first_stage_shift: u32,
    /// Bits of the client's quantized input (`None`: the read's `message_bits`; by default
    /// [`DEFAULT_INPUT_BITS`]). No PBS reads an input, so wider inputs cost nothing on the
    /// server but a wider encoding; they keep the detail of the data that near-tied router
    /// logits depend on (on the Hugging Face-style checkpoints at 5-bit reads, 8-bit inputs
    /// choose the float router's experts on 99.3 % of records where 5-bit inputs do on 97 %).
    /// A model that declares the quantization it was trained for keeps its reads' width, as it
    /// was trained.
    pub input_bits: Option<u32>,
    /// Size the integer reads from calibrated ranges times this headroom rather than from the
    /// worst case over every input of the box (`None`): the first-stage rows (router, W1, W3,
    /// shared gate) are scaled so that the calibration records' accumulators fit the read box,
    /// and the expert outputs' encoding is as wide as their calibration range needs. The worst
    /// case of a dense row is several times its typical accumulator, so calibrated reads are
    /// 2-3 bits finer, and a narrower output encoding divides the output noise in output
    /// steps. The price: an input far outside the calibration data can wrap a read or an
    /// output (see [`crate::QuantizedMoe::overflows`]); the report gives the rate on the
    /// calibration records. A model that declares the quantization it was trained for is
    /// quantized with worst-case ranges, as it was trained.
    pub calibrated_headroom: Option<f64>,
    /// Split W2 in two digits whose products the client adds (see [`crate::output_digits`]):
    /// the noise allowance then holds for each digit's row, so W2 may be `2^k` times finer at
    /// about the same relative output noise. Each digit costs one more leveled product per
    /// output and doubles the gates' external products.
    pub output_digits: bool,
    /// Gate bits (see [`crate::quant::QuantParams::gate_bits`]).
    pub gate_bits: u32,
    /// Reads of each pre-activation, 1, 2 or 4 (see
    /// [`crate::quant::QuantParams::activation_reads`]): 2 reads resolve the activation one bit
    /// finer than the preset's reads for one more PBS per hidden unit (gated: three more, the
    /// second read's factor and product). Not with `linear_in_product`. A model that declares
    /// the quantization it was trained for keeps one read.
    pub activation_reads: u32,
    /// Read a gated FFN's linear factor inside its product's quarter squares (see
    /// [`crate::QuantizedMoe::linear_in_product`]): h PBS fewer per expert (a quarter of a
    /// gated expert's), for a factor one bit coarser, since W3's rows are scaled for the factor
    /// range instead of the whole read box. No effect on plain FFNs.
    pub linear_in_product: bool,
    /// Choose experts by pairwise comparisons of the router accumulators (see
    /// [`crate::QuantizedMoe::pairwise_routing`]); 2, 4 or [`crate::pairwise::MAX_EXPERTS`]
    /// experts.
    pub pairwise_routing: bool,
    /// Search the choices by calibration (`false`: the defaults of [`QuantChoice`]).
    pub search: bool,
    /// Use the choice a model declares (`FloatMoeModel::quantization`) instead of searching:
    /// a quantization-aware trained model is only accurate under the quantization it was
    /// trained for.
    pub use_model_choice: bool,
    /// Calibration records used to score a candidate (evenly spaced; all for the input range).
    pub max_scored: usize,
}

/// Default gate bits of a searched quantization: gates are softmax probabilities, and 3 bits
/// (steps of 1/7) moved the Hugging Face-style Mixtral block's output by 0.01 of cosine on
/// `fine` (0.968 -> 0.978 with 6 bits); each bit costs a PBS and a circuit bootstrap per gate.
pub const DEFAULT_GATE_BITS: u32 = 6;

/// Gate bits of a model that declares the quantization it was trained for: the trainer's
/// (`train_digits` trains under them; [`QuantChoice`] does not declare gate bits).
pub const TRAINED_GATE_BITS: u32 = 3;

/// Default first-stage shift (see [`QuantizeOptions::first_stage_shift`]). Pairwise routing
/// compares the router accumulators themselves, so the router weights' rounding is what
/// decides near-tied experts: on the Hugging Face-style checkpoints at 5-bit reads, 3 bits
/// more than [`TRAINED_FIRST_STAGE_SHIFT`] choose the float router's experts on 100 % of the
/// 300 held-out records (Mixtral, Switch; Qwen2-MoE 99.7 %) where 10 did on 99.0-99.7 %, and
/// lift the Switch block from cosine 0.989 to 0.993 (BENCHMARKS.md). 16 gains nothing more.
pub const DEFAULT_FIRST_STAGE_SHIFT: u32 = 13;

/// First-stage shift of a model that declares the quantization it was trained for (the
/// trainer's: `train_digits` trains under it).
pub const TRAINED_FIRST_STAGE_SHIFT: u32 = 10;

/// Default width of the client's quantized input (see [`QuantizeOptions::input_bits`]).
pub const DEFAULT_INPUT_BITS: u32 = 8;

/// Default headroom of calibrated ranges (see [`QuantizeOptions::calibrated_headroom`]): the
/// calibration maximum of every row at two thirds of its read box.
pub const DEFAULT_CALIBRATED_HEADROOM: f64 = 1.5;

/// Largest [`QuantizeOptions::wide_output_noise`]: twice the default, the output's noise std
/// still within 0.084 read step on `default`. Measured on the Hugging Face-style checkpoints
/// on `fine` with 2 activation reads (BENCHMARKS.md), 16 against 8 lifts the Qwen2-MoE
/// reference from 0.977 to 0.991 and Mixtral's from 0.965 to 0.987; encrypted, Qwen2-MoE's
/// output is 0.003 below its reference over 50 records (0.9876), most of it the doubled noise
/// (the simulated reads cost 0.0003). The layer
/// (`veilmoe_protocols::layer::WIDE_OUTPUT_NOISE`) accepts up to this times 1.25.
pub const MAX_WIDE_OUTPUT_NOISE: f64 = 16.0;

impl QuantizeOptions {
    /// Options for a preset reading `message_bits`, with the 4-bit presets' noise budget
    /// (`max_norm2 = 5`).
    pub fn for_message_bits(message_bits: u32) -> QuantizeOptions {
        Self::for_reads(message_bits, 5.0)
    }

    /// Options for a preset reading `message_bits` whose noise budget is a dot product of
    /// 2-norm `max_norm2` over PBS outputs (the preset's `max_norm2`: 5 on `default`, 4 on
    /// `fine`), so that the wide outputs' noise stays within what the preset was sized for.
    pub fn for_reads(message_bits: u32, max_norm2: f64) -> QuantizeOptions {
        QuantizeOptions {
            message_bits,
            max_norm2,
            wide_output_noise: 8.0,
            first_stage_shift: DEFAULT_FIRST_STAGE_SHIFT,
            input_bits: Some(DEFAULT_INPUT_BITS.max(message_bits)),
            calibrated_headroom: Some(DEFAULT_CALIBRATED_HEADROOM),
            output_digits: true,
            gate_bits: DEFAULT_GATE_BITS,
            activation_reads: 1,
            linear_in_product: false,
            pairwise_routing: false,
            search: true,
            use_model_choice: true,
            max_scored: 1000,
        }
    }

    /// Largest squared 2-norm of an integer W2 row: its output's noise (the hidden PBS outputs'
    /// noise times the row, doubled for a gated FFN whose hidden values are differences of two
    /// PBS outputs, and times the activation reads summed) stays within `wide_output_noise`
    /// times the budget's standard deviation. Where
    /// the layer subtracts two slot outputs (`wider`: Mixtral top-2), their encoding is one bit
    /// wider, which doubles the noise relative to the value: the limit is a quarter.
    pub fn w2_norm2_limit(&self, gated: bool, wider: bool) -> i64 {
        let norm = self.max_norm2 * self.wide_output_noise;
        let gated_factor = if gated { 2.0 } else { 1.0 } * self.activation_reads.max(1) as f64;
        let width_factor = if wider { 4.0 } else { 1.0 };
        ((norm * norm / gated_factor / width_factor).floor() as i64).max(1)
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
    /// Largest L1 norm of an integer W2 row (`None`: only the noise limit). It used to keep
    /// the expert-output read's shift fine; with the output returned wide there is no read,
    /// but a smaller row can still steer the greedy search elsewhere, so budgets stay a
    /// coordinate (and a trained model's declared one is honoured).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// W2's squared-norm limit grows with the square of the output-noise factor and is divided
    /// by the activation reads: 16 with 4 reads allows what 8 with one read does.
    #[test]
    fn the_w2_limit_grows_with_the_square_of_the_output_noise() {
        let at = |noise: f64, reads: u32| QuantizeOptions {
            wide_output_noise: noise,
            activation_reads: reads,
            ..QuantizeOptions::for_reads(5, 4.0)
        };
        for (gated, wider) in [(false, false), (true, false), (true, true)] {
            let base = at(8.0, 1).w2_norm2_limit(gated, wider);
            assert_eq!(at(16.0, 1).w2_norm2_limit(gated, wider), 4 * base);
            assert_eq!(at(16.0, 4).w2_norm2_limit(gated, wider), base);
            assert_eq!(at(16.0, 2).w2_norm2_limit(gated, wider), 2 * base);
        }
        assert_eq!(at(8.0, 1).w2_norm2_limit(true, false), 512);
    }

    /// A noise factor outside (0, 16] is refused before any quantization work.
    #[test]
    fn an_output_noise_beyond_the_maximum_is_refused() {
        let model = crate::checkpoint::embedded_demo_model().unwrap();
        let calibration = vec![vec![0.0f32; model.features()]];
        for noise in [17.0, 0.0, f64::NAN] {
            let opts = QuantizeOptions {
                wide_output_noise: noise,
                ..QuantizeOptions::for_reads(4, 5.0)
            };
            let err = crate::quantize::quantize_with(&model, &opts, &calibration).unwrap_err();
            assert!(err.to_string().contains("noise factor"), "{err}");
        }
    }
}
