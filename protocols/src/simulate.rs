//! The plaintext reference's simulation of a preset's approximate reads.
//!
//! The reference ([`veilmoe_model::reference`]) knows nothing of presets; this is where a
//! preset's noise becomes its [`Rounding::Simulated`] standard deviation.

use veilmoe_engine::{compare, noise, Preset};
use veilmoe_model::Rounding;

/// Standard deviation (a fraction of the torus) of a requantizing read's phase noise on
/// `preset`: its noise at the blind rotation for an input at a quarter of the PBS budget.
pub fn read_noise_std(preset: &Preset) -> f64 {
    noise::variance_at_blind_rotation(preset, noise::pbs_input_budget(preset) / 4.0).sqrt()
}

/// Standard deviation (a fraction of the torus, at the difference's scale) of the noise that
/// decides a near tie of a comparison of router accumulators on `preset`
/// (`veilmoe_engine::compare`): the accumulators are linear in fresh encryptions, whose noise
/// is negligible beside the keyswitch's and the modulus switch's, so the refined comparison's.
pub fn comparison_noise_std(preset: &Preset) -> f64 {
    compare::decision_std(preset, 0.0)
}

/// The simulation of `preset`'s reads for a model quantized for `read_bits` (at most the
/// preset's message bits): the same noise in units of the boxes of a `read_bits`-bit read,
/// and its comparisons' (refined) noise.
pub fn simulated_rounding(preset: &Preset, read_bits: u32, seed: u64) -> Rounding {
    Rounding::simulated(read_noise_std(preset), read_bits, seed)
        .with_comparison_std(comparison_noise_std(preset), read_bits)
}
