//! The embedded demo model (see `model/demo/digits-moe`).

use super::float::FloatMoeModel;

/// The demo model's files, embedded so that binaries need no files (see `model/demo/digits-moe`).
pub(crate) const DEMO_CONFIG: &[u8] = include_bytes!("../../demo/digits-moe/config.json");
pub(crate) const DEMO_WEIGHTS: &[u8] = include_bytes!("../../demo/digits-moe/model.safetensors");

/// The embedded demo model: a Mixtral-format MoE classifier of the UCI handwritten digits
/// (d = 64 pixels, E = 4 experts, top-1, h = 16, residual, 10-class head), trained by
/// [`crate::train::train_digits`] with its default options (the `train_digits` tool writes
/// these files) and loaded through the same code path as a model directory.
pub fn embedded_demo_model() -> crate::Result<FloatMoeModel> {
    FloatMoeModel::from_bytes(
        "embedded:digits-moe",
        DEMO_CONFIG,
        &[("model.safetensors", DEMO_WEIGHTS)],
        None,
    )
}
