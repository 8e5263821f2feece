//! Which model a batch command runs, and its quantization: the embedded digits demo model
//! (calibrated on its own training split) or a Hugging Face-format directory (calibrated on the
//! records the user gives). Quantization is deterministic, so the client (encrypt, decrypt) and
//! the server (infer) derive the same model and the same model id from the same inputs.

use crate::input::{read_records, InputError};
use std::path::{Path, PathBuf};
use thiserror::Error;
use veilmoe_protocols::checkpoint::{embedded_demo_model, FloatMoeModel};
use veilmoe_protocols::digits::{digits_split, embedded_digits, load_digits, Dataset};
use veilmoe_protocols::quantize::quantize;
use veilmoe_protocols::{ProtocolError, QuantizedClassifier};

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("--model {0}: quantizing a model directory needs --calibration FILE (sample records)")]
    NoCalibration(String),
    #[error("--model {0}: scoring accuracy needs --test FILE (labelled records: features, then the label)")]
    NoTestData(String),
}

/// The `--model` / `--calibration` options every model-using command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A Hugging Face-format model directory (config.json + *.safetensors); default: the
    /// embedded digits demo model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Calibration records (.csv/.npy) for quantizing a --model directory (the embedded model
    /// calibrates on its own training split).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        match &self.model {
            Some(dir) => ModelSource::Dir {
                dir: dir.clone(),
                calibration: self.calibration.clone(),
            },
            None => ModelSource::Embedded,
        }
    }
}

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// The digits demo model compiled into the binary.
    Embedded,
    /// A Hugging Face-format directory and calibration records for its quantization.
    Dir {
        dir: PathBuf,
        calibration: Option<PathBuf>,
    },
}

/// Loads the float model of `source`.
pub fn load_float(source: &ModelSource) -> Result<FloatMoeModel, ModelError> {
    Ok(match source {
        ModelSource::Embedded => embedded_demo_model()?,
        ModelSource::Dir { dir, .. } => FloatMoeModel::load(dir)?,
    })
}

/// The records that calibrate the quantization of `model` (loaded from `source`).
pub fn calibration_records(
    source: &ModelSource,
    model: &FloatMoeModel,
) -> Result<Vec<Vec<f32>>, ModelError> {
    Ok(match source {
        ModelSource::Embedded => digits_split(&embedded_digits()?).0.features,
        ModelSource::Dir { dir, calibration } => {
            let path = calibration
                .as_ref()
                .ok_or_else(|| ModelError::NoCalibration(dir.display().to_string()))?;
            read_records(path, model.features())?
        }
    })
}

/// Loads and quantizes the model of `source` for a preset reading `message_bits` bits per PBS.
pub fn load_classifier(
    source: &ModelSource,
    message_bits: u32,
) -> Result<QuantizedClassifier, ModelError> {
    let model = load_float(source)?;
    let calibration = calibration_records(source, &model)?;
    Ok(quantize(&model, message_bits, &calibration)?)
}

/// The labelled records that score a model's accuracy: `--test FILE` (a CSV, optionally
/// gzip'd, of features then an integer label per line), or the embedded model's own test split.
pub fn test_records(source: &ModelSource, test: Option<&Path>) -> Result<Dataset, ModelError> {
    match (test, source) {
        (Some(path), _) => Ok(load_digits(path)?),
        (None, ModelSource::Embedded) => Ok(digits_split(&embedded_digits()?).1),
        (None, ModelSource::Dir { dir, .. }) => {
            Err(ModelError::NoTestData(dir.display().to_string()))
        }
    }
}

impl ModelSource {
    /// How reports name the model.
    pub fn label(&self) -> String {
        match self {
            ModelSource::Embedded => "embedded digits-moe".into(),
            ModelSource::Dir { dir, .. } => dir.display().to_string(),
        }
    }
}
