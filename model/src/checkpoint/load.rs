//! Loading: config.json's family and `"veilmoe"` object, the family's block, the optional
//! head, from a model directory or from in-memory files.

use super::error::{CheckpointError, Result};
use super::float::{FloatHead, FloatMoeModel};
use super::store::TensorStore;
use super::{mixtral, qwen2_moe, switch};
use serde::Deserialize;
use std::path::Path;

/// Model family, from config.json's `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Mixtral,
    Qwen2Moe,
    Olmoe,
    SwitchTransformers,
}

impl Family {
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "mixtral" => Some(Family::Mixtral),
            "qwen2_moe" => Some(Family::Qwen2Moe),
            "olmoe" => Some(Family::Olmoe),
            "switch_transformers" => Some(Family::SwitchTransformers),
            _ => None,
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Mixtral => "mixtral",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Olmoe => "olmoe",
            Family::SwitchTransformers => "switch_transformers",
        }
    }
}

/// The `"veilmoe"` object of config.json (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeilmoeExtras {
    #[serde(default)]
    pub residual: bool,
    #[serde(default = "one")]
    pub input_scale: f64,
    /// The quantization the model was trained for (see [`crate::quantize::QuantChoice`]).
    #[serde(default)]
    pub quantization: Option<crate::quantize::QuantChoice>,
}

fn one() -> f64 {
    1.0
}

impl Default for VeilmoeExtras {
    fn default() -> Self {
        VeilmoeExtras {
            residual: false,
            input_scale: 1.0,
            quantization: None,
        }
    }
}

fn load_from_store(
    config_json: &[u8],
    mut store: TensorStore<'_>,
    layer: Option<usize>,
) -> Result<FloatMoeModel> {
    let origin = store.origin().to_string();
    let bad = |reason: String| CheckpointError::Config {
        origin: origin.clone(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(config_json).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| CheckpointError::MissingKey {
            origin: origin.clone(),
            model_type: "(any)".into(),
            key: "model_type".into(),
        })?;
    let family =
        Family::from_model_type(model_type).ok_or_else(|| CheckpointError::UnknownModelType {
            origin: origin.clone(),
            model_type: model_type.to_string(),
        })?;
    let extras: VeilmoeExtras = match value.get("veilmoe") {
        None | Some(serde_json::Value::Null) => VeilmoeExtras::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("`veilmoe`: {e}")))?,
    };
    if !(extras.input_scale.is_finite() && extras.input_scale > 0.0) {
        return Err(bad(format!(
            "`veilmoe.input_scale` must be positive and finite, got {}",
            extras.input_scale
        )));
    }
    let block = match family {
        Family::Mixtral => mixtral::load(&value, &mut store, layer)?,
        Family::Qwen2Moe | Family::Olmoe => qwen2_moe::load(&value, model_type, &mut store, layer)?,
        Family::SwitchTransformers => switch::load(&value, &mut store, layer)?,
    };
    let head = load_head(&mut store, block.config.d.0)?;
    let not_evaluated = not_evaluated(&store, &block.prefix);
    Ok(FloatMoeModel {
        family,
        origin,
        layer: block.layer,
        config: block.config,
        router: block.router,
        router_bias: block.router_bias,
        experts: block.experts,
        shared: block.shared,
        head,
        residual: extras.residual,
        input_scale: extras.input_scale,
        quantization: extras.quantization,
        not_evaluated,
    })
}

/// Tensors under the block's prefix that its loader did not read (what veilmoe would not
/// evaluate), grouped by their parent module and named: a checkpoint feature that veilmoe
/// does not evaluate is a warning, never silence.
fn not_evaluated(store: &TensorStore<'_>, prefix: &str) -> Vec<String> {
    let mut groups: std::collections::BTreeMap<&str, usize> = Default::default();
    for name in store.unread_under(prefix) {
        let module = name.rsplit_once('.').map_or(name, |(m, _)| m);
        *groups.entry(module).or_default() += 1;
    }
    groups
        .into_iter()
        .map(|(module, n)| {
            format!("`{module}` ({n} tensor(s)): not evaluated, the block output lacks it")
        })
        .collect()
}

/// `score.*` (sequence classification) or `classifier.*`, if present.
fn load_head(store: &mut TensorStore<'_>, d: usize) -> Result<Option<FloatHead>> {
    for prefix in ["score", "classifier"] {
        let w = format!("{prefix}.weight");
        if let Some(shape) = store.shape(&w).map(|s| s.to_vec()) {
            let classes = match shape.as_slice() {
                [c, _] => *c,
                _ => 0,
            };
            if classes == 0 {
                return Err(CheckpointError::Shape {
                    name: w,
                    expected: vec![shape.first().copied().unwrap_or(0).max(1), d],
                    found: shape,
                });
            }
            let weight = store.matrix(&w, classes, d)?;
            let bias = store.optional_vector(&format!("{prefix}.bias"), classes)?;
            return Ok(Some(FloatHead { weight, bias }));
        }
    }
    Ok(None)
}

impl FloatMoeModel {
    /// Loads the first MoE block of a model directory.
    pub fn load(dir: impl AsRef<Path>) -> crate::Result<FloatMoeModel> {
        FloatMoeModel::load_layer(dir, None)
    }

    /// Loads the MoE block of `layer` (or the first one) of a model directory.
    pub fn load_layer(dir: impl AsRef<Path>, layer: Option<usize>) -> crate::Result<FloatMoeModel> {
        Ok(Self::load_dir(dir.as_ref(), layer)?)
    }

    fn load_dir(dir: &Path, layer: Option<usize>) -> Result<FloatMoeModel> {
        let cfg_path = dir.join("config.json");
        let config = std::fs::read(&cfg_path).map_err(|source| CheckpointError::Io {
            path: cfg_path,
            source,
        })?;
        let store = TensorStore::from_dir(dir)?;
        load_from_store(&config, store, layer)
    }

    /// Loads from in-memory files (the same code path as directories): config.json's bytes
    /// and `(file name, bytes)` of each safetensors file. `origin` names the model in errors.
    pub fn from_bytes(
        origin: &str,
        config_json: &[u8],
        safetensors: &[(&str, &[u8])],
        layer: Option<usize>,
    ) -> crate::Result<FloatMoeModel> {
        let store = TensorStore::from_bytes(origin, safetensors)?;
        Ok(load_from_store(config_json, store, layer)?)
    }
}
