//! Float MoE block -> [`QuantizedClassifier`], calibrated on sample inputs.
//!
//! The integer semantics are fixed by [`crate::quant`] and [`crate::quantized`]: every requantizing
//! read is a power-of-two shift chosen from the **worst-case** accumulator range over all
//! inputs in the signed m-bit box, not from typical values. So the real value of one read step
//! of a weight row is about (row's worst-case range) / 2^m whatever the integer scale: what
//! decides resolution is how small a row's L1 norm is next to its typical output. The
//! quantizer therefore works row by row from worst-case ranges, and chooses, by calibration:
//!
//! - **first stage** (router, W1, W3; one shared shift `s`): each group gets the finest scale
//!   at which its worst-case row still fits the `s + m`-bit read. Router rows share one scale
//!   (the argmax must not change), W1 rows share one (it is the activation's input scale),
//!   W3 rows each get their own (the scale folds into W2's column). Small weights can be
//!   rounded to zero (`*_prune`, relative to the row's largest weight) to shrink the L1 norm;
//! - **activation**: `act_out_scale` places the largest reachable activation at the top of
//!   the factor range, times a clipping factor `act_clip` <= 1;
//! - **second stage** (W2): one scale for all experts, chosen by the integer value `w2_top`
//!   of the largest weight. No PBS reads `W2 a` (the output leaves the server wide), so the
//!   only limit is the noise the client decrypts: a row's 2-norm stays within
//!   `wide_output_noise` (8) times the 2-norm a read's budget allows (divided by sqrt 2 for
//!   gated FFNs, whose hidden values are differences of two PBS outputs, and by 2 where the
//!   Mixtral top-2 combination widens the slot outputs' encoding by a bit): on `default` the
//!   output's noise std is then at most 0.042 read step. With W2 in two digits (the
//!   default, [`crate::output_digits`]) the limit holds for each digit's row, so the whole row
//!   may be `4^k` times larger: W2 is `2^k` times finer at about the same relative noise. Rows
//!   that exceed their limit lose their smallest weights and weights are clipped to the
//!   limit's square root;
//! - **router**: the rows are first centred (the per-input median over experts is subtracted:
//!   every logit moves by the same amount, so routing and gates are unchanged, while the L1
//!   norms and thus the read step shrink); then the logit zero point that places the typical
//!   top logit at the top of `[0, logit_max]`, and (Switch/Qwen gating) the softmax numerator.
//!
//! A model that declares the quantization it was trained for (`"veilmoe": {"quantization":
//! ...}` in config.json, see [`QuantChoice`]) is quantized with exactly that choice: a
//! quantization-aware trained model is accurate under its own quantization, and a search on
//! calibration data where it already agrees ~100% with its float self has no signal to improve
//! it.
//!
//! The input zero point is folded into the first-stage biases, so the block needs no zero
//! point of its own. The input itself is quantized to `input_bits` (8 by default, wider than
//! a read: no PBS reads it), and the first-stage shift grows by the bits it has beyond a read. The search is coordinate descent maximising agreement with the float
//!
//! The code, by job:
//! - [`options`]: [`QuantizeOptions`] and [`QuantChoice`];
//! - `search`: [`quantize_with`], the coordinate descent over choices;
//! - `context`: what every candidate shares (calibration, input quantizer, float outputs) and
//!   the scoring of a candidate;
//! - `build`: the quantization of one fixed choice, stage by stage, with the per-stage helpers
//!   in `first_stage` (router, W1, W3) and `second_stage` (activation scale, W2);
//! - [`report`]: [`QuantizeReport`] and its display;
//! - [`accuracy`]: accuracy and agreement helpers on labelled data.

pub mod accuracy;
mod build;
mod context;
mod first_stage;
pub mod options;
pub mod report;
mod search;
mod second_stage;

pub use accuracy::{
    evaluate_accuracy, float_accuracy, quantized_predictions, rounding_agreement, AccuracyReport,
};
pub(crate) use first_stage::center_router;
pub use options::{
    QuantChoice, QuantizeOptions, DEFAULT_FIRST_STAGE_SHIFT, DEFAULT_INPUT_BITS,
    TRAINED_FIRST_STAGE_SHIFT,
};
pub use report::QuantizeReport;
pub use search::quantize_with;

use crate::checkpoint::FloatMoeModel;
use crate::classifier::QuantizedClassifier;
use crate::error::Result;
use context::Context;

/// Quantizes `model` for a preset reading `message_bits`, calibrated on raw `calibration`
/// records (searching the choices; see [`quantize_with`] for the options and the report).
pub fn quantize(
    model: &FloatMoeModel,
    message_bits: u32,
    calibration: &[Vec<f32>],
) -> Result<QuantizedClassifier> {
    quantize_with(
        model,
        &QuantizeOptions::for_message_bits(message_bits),
        calibration,
    )
    .map(|(q, _)| q)
}

/// Quantizes with a fixed choice (no search): what a quantization-aware training loop calls
/// to get the integer model and its real steps for its current float weights.
pub fn quantize_fixed(
    model: &FloatMoeModel,
    opts: &QuantizeOptions,
    choice: &QuantChoice,
    calibration: &[Vec<f32>],
) -> Result<(QuantizedClassifier, QuantizeReport)> {
    Context::new(model, opts, calibration)?.build_scored(choice, 1)
}
