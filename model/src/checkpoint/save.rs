//! The Mixtral-format writer: a [`FloatMoeModel`] as `config.json` and `model.safetensors`.

use super::error::{CheckpointError, Result};
use super::float::FloatMoeModel;
use super::store::{safetensors_bytes, StoredDtype};
use crate::arch::{FfnKind, Gating};
use ndarray::Array2;
use std::path::{Path, PathBuf};

/// A Mixtral-format checkpoint in memory: the two files [`FloatMoeModel::save_mixtral`] writes.
pub(crate) struct MixtralFiles {
    /// `config.json`'s text (pretty JSON and a final newline).
    pub config_json: String,
    /// `model.safetensors` (f32).
    pub safetensors: Vec<u8>,
}

impl FloatMoeModel {
    /// Writes the model as a Mixtral-format checkpoint (layer 0): `config.json` (with the
    /// `"veilmoe"` object) and `model.safetensors` (f32). Only gated-SiLU models with
    /// softmax-over-selected gating and no expert or router biases fit that format.
    pub fn save_mixtral(&self, dir: impl AsRef<Path>) -> crate::Result<()> {
        Ok(self.save_mixtral_dir(dir.as_ref())?)
    }

    fn save_mixtral_dir(&self, dir: &Path) -> Result<()> {
        let files = self.mixtral_files(&dir.display().to_string())?;
        let io = |path: PathBuf| move |source| CheckpointError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        std::fs::write(dir.join("config.json"), files.config_json)
            .map_err(io(dir.join("config.json")))?;
        std::fs::write(dir.join("model.safetensors"), files.safetensors)
            .map_err(io(dir.join("model.safetensors")))?;
        Ok(())
    }

    /// The files of [`FloatMoeModel::save_mixtral`], in memory (`origin` names the model in
    /// errors). Loading them back with [`FloatMoeModel::from_bytes`] is loading the directory.
    pub(crate) fn mixtral_files(&self, origin: &str) -> Result<MixtralFiles> {
        let unsupported = |reason: &str| CheckpointError::Unsupported {
            origin: origin.to_string(),
            reason: reason.to_string(),
        };
        self.validate().map_err(|r| unsupported(&r))?;
        if self.shared.is_some() {
            return Err(unsupported(
                "a shared expert (Mixtral has none; Qwen2-MoE holds one)",
            ));
        }
        if self.config.ffn != FfnKind::GatedSilu || self.config.gating != Gating::SoftmaxSelected {
            return Err(unsupported(
                "Mixtral needs gated SiLU experts and softmax-over-selected gates",
            ));
        }
        if self.router_bias.is_some()
            || self
                .experts
                .iter()
                .any(|x| x.b1.is_some() || x.b2.is_some() || x.b3.is_some())
        {
            return Err(unsupported("Mixtral has no router or expert biases"));
        }
        let safetensors = safetensors_bytes(&self.mixtral_tensors(), StoredDtype::F32)?;
        let text = serde_json::to_string_pretty(&self.mixtral_config())
            .map_err(|e| unsupported(&e.to_string()))?;
        Ok(MixtralFiles {
            config_json: text + "\n",
            safetensors,
        })
    }

    /// config.json of a one-layer Mixtral sequence classifier, with the `"veilmoe"` object.
    fn mixtral_config(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "architectures": ["MixtralForSequenceClassification"],
            "model_type": "mixtral",
            "hidden_size": c.d.0,
            "intermediate_size": c.h.0,
            "num_local_experts": c.experts.0,
            "num_experts_per_tok": c.top_k.0,
            "num_hidden_layers": 1,
            "hidden_act": "silu",
            "num_labels": self.classes().unwrap_or(0),
            "torch_dtype": "float32",
            "veilmoe": {
                "residual": self.residual,
                "input_scale": self.input_scale,
                "quantization": self.quantization,
            },
        })
    }

    /// The tensors under Mixtral's names, in file order: router, each expert's w1, w3, w2,
    /// then the head (`score.*`).
    fn mixtral_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mat = |a: &Array2<f32>| (vec![a.nrows(), a.ncols()], a.iter().copied().collect());
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let p = "model.layers.0.block_sparse_moe";
        let (s, v) = mat(&self.router);
        tensors.push((format!("{p}.gate.weight"), s, v));
        for (i, x) in self.experts.iter().enumerate() {
            for (name, w) in [
                ("w1", Some(&x.w1)),
                ("w3", x.w3.as_ref()),
                ("w2", Some(&x.w2)),
            ] {
                if let Some(w) = w {
                    let (s, v) = mat(w);
                    tensors.push((format!("{p}.experts.{i}.{name}.weight"), s, v));
                }
            }
        }
        if let Some(h) = &self.head {
            let (s, v) = mat(&h.weight);
            tensors.push(("score.weight".into(), s, v));
            if let Some(b) = &h.bias {
                tensors.push(("score.bias".into(), vec![b.len()], b.to_vec()));
            }
        }
        tensors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{embedded_demo_model, DEMO_CONFIG, DEMO_WEIGHTS};

    #[test]
    fn resaving_the_demo_model_gives_its_files() {
        let demo = embedded_demo_model().unwrap();
        let files = demo.mixtral_files("demo").unwrap();
        assert!(files.config_json.as_bytes() == DEMO_CONFIG);
        assert!(files.safetensors == DEMO_WEIGHTS);
        let back = FloatMoeModel::from_bytes(
            "back",
            files.config_json.as_bytes(),
            &[("model.safetensors", &files.safetensors)],
            None,
        )
        .unwrap();
        assert_eq!(
            back,
            FloatMoeModel {
                origin: "back".into(),
                ..demo
            }
        );
    }

    #[test]
    fn models_mixtral_cannot_hold_are_refused() {
        let mut m = embedded_demo_model().unwrap();
        m.router_bias = Some(ndarray::Array1::zeros(m.config.experts.0));
        assert!(m.mixtral_files("biased").is_err());
    }
}
