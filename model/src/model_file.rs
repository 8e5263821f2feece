//! The quantized-model file: what `veilmoe quantize` writes and every later command reads, so
//! that the client and the server agree on the model by its id rather than by re-running the
//! quantization with bit-identical float arithmetic.
//!
//! It is a project envelope of kind `QuantizedModel`, bound to no preset and no key set (a model
//! is quantized for a number of bits, not for keys), whose payload is a [`ModelFile`]: the
//! integer weights, the public quantization parameters, the client-side input quantizer and
//! head, the model id and a free-text note of where the model came from. Reading checks the
//! envelope (length, checksum, kind, binding), bounds the read by [`MAX_MODEL_FILE_BYTES`],
//! validates every shape and parameter, and recomputes the id.

use crate::classifier::{ModelId, QuantizedClassifier};
use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use veilmoe_format::{Binding, ObjectKind};

/// Largest model file read (weights of E = 128 experts at d = h = 1024 fit many times over).
pub const MAX_MODEL_FILE_BYTES: u64 = 1 << 30;

/// The payload of a model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub id: ModelId,
    /// Where the model came from (checkpoint directory, calibration file, quantizer choices).
    pub source: String,
    pub model: QuantizedClassifier,
}

fn file_error(path: &Path) -> impl Fn(veilmoe_format::FormatError) -> ModelError + '_ {
    move |source| ModelError::ModelFile {
        path: path.display().to_string(),
        source,
    }
}

/// Bytes of a model file for `model` (validated first).
pub fn encode_model_file(model: &QuantizedClassifier, source: &str) -> Result<Vec<u8>> {
    model.validate()?;
    let file = ModelFile {
        id: model.id(),
        source: source.to_string(),
        model: model.clone(),
    };
    veilmoe_format::encode(ObjectKind::QuantizedModel, &Binding::UNBOUND, &file).map_err(|source| {
        ModelError::ModelFile {
            path: "<memory>".into(),
            source,
        }
    })
}

/// Writes `model` to `path` atomically; returns its id.
pub fn write_model_file(path: &Path, model: &QuantizedClassifier, source: &str) -> Result<ModelId> {
    let bytes = encode_model_file(model, source)?;
    veilmoe_format::write_atomic(path, &bytes).map_err(file_error(path))?;
    Ok(model.id())
}

/// Decodes and validates a model file's bytes (`origin` names it in errors).
pub fn decode_model_file(bytes: &[u8], origin: &str) -> Result<ModelFile> {
    let path = Path::new(origin);
    let (header, payload) = veilmoe_format::read_header(bytes).map_err(file_error(path))?;
    header
        .expect_kind(ObjectKind::QuantizedModel)
        .map_err(file_error(path))?;
    if !header.binding().is_unbound() {
        return Err(file_error(path)(veilmoe_format::FormatError::Malformed {
            what: "quantized model",
            reason: "a model file is bound to no preset or key set, this one claims one".into(),
        }));
    }
    let file: ModelFile = veilmoe_format::decode_payload(ObjectKind::QuantizedModel, payload)
        .map_err(file_error(path))?;
    file.model.validate().map_err(|e| ModelError::Data {
        origin: origin.to_string(),
        reason: format!("the model in this file is not valid: {e}"),
    })?;
    let id = file.model.id();
    if id != file.id {
        return Err(ModelError::Data {
            origin: origin.to_string(),
            reason: format!(
                "the file says model {} but its content hashes to {id}",
                file.id
            ),
        });
    }
    Ok(file)
}

/// Reads and validates a model file.
pub fn read_model_file(path: &Path) -> Result<ModelFile> {
    let bytes = veilmoe_format::read_file(path, MAX_MODEL_FILE_BYTES).map_err(file_error(path))?;
    decode_model_file(&bytes, &path.display().to_string())
}
