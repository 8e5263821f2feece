//! The Hugging Face-style random checkpoints of the precision measurements (`hf_fidelity`):
//! Mixtral, Qwen2-MoE with its shared expert, and Switch, written as safetensors with the
//! families' tensor names and config keys, weights drawn N(0, 0.02^2) as transformers
//! initialises them; hidden size 64, 8 experts, top-2 (Switch top-1).

use super::checkpoints::{write_model, Tensors};
use std::path::PathBuf;
use veilmoe::model::checkpoint::StoredDtype;
use veilmoe::model::data::embedded_digits;
use veilmoe::model::SplitMix;

pub const D: usize = 64;
pub const E: usize = 8;
/// Routed experts' hidden units (Mixtral `intermediate_size`, Qwen `moe_intermediate_size`,
/// Switch `d_ff`).
const H: usize = 32;
/// Qwen's `shared_expert_intermediate_size` (four routed experts' worth, as in Qwen1.5-MoE).
const HS: usize = 128;

/// transformers' `initializer_range`.
const INIT_STD: f64 = 0.02;

struct Writer {
    rng: SplitMix,
    tensors: Tensors,
}

impl Writer {
    fn new(seed: u64) -> Writer {
        Writer {
            rng: SplitMix(seed),
            tensors: Tensors::new(),
        }
    }
    fn linear(&mut self, name: String, rows: usize, cols: usize) {
        let v = (0..rows * cols)
            .map(|_| (self.rng.gaussian() * INIT_STD) as f32)
            .collect();
        self.tensors.push((name, vec![rows, cols], v));
    }
}

pub fn mixtral() -> PathBuf {
    let mut w = Writer::new(1);
    let p = "model.layers.0.block_sparse_moe";
    w.linear(format!("{p}.gate.weight"), E, D);
    for i in 0..E {
        w.linear(format!("{p}.experts.{i}.w1.weight"), H, D);
        w.linear(format!("{p}.experts.{i}.w3.weight"), H, D);
        w.linear(format!("{p}.experts.{i}.w2.weight"), D, H);
    }
    let cfg = serde_json::json!({
        "model_type": "mixtral", "hidden_size": D, "intermediate_size": H,
        "num_local_experts": E, "num_experts_per_tok": 2, "num_hidden_layers": 1
    });
    write_model("hf-mixtral", &cfg, &w.tensors, StoredDtype::F32)
}

pub fn qwen2_moe() -> PathBuf {
    let mut w = Writer::new(2);
    let p = "model.layers.0.mlp";
    w.linear(format!("{p}.gate.weight"), E, D);
    for i in 0..E {
        w.linear(format!("{p}.experts.{i}.gate_proj.weight"), H, D);
        w.linear(format!("{p}.experts.{i}.up_proj.weight"), H, D);
        w.linear(format!("{p}.experts.{i}.down_proj.weight"), D, H);
    }
    w.linear(format!("{p}.shared_expert.gate_proj.weight"), HS, D);
    w.linear(format!("{p}.shared_expert.up_proj.weight"), HS, D);
    w.linear(format!("{p}.shared_expert.down_proj.weight"), D, HS);
    w.linear(format!("{p}.shared_expert_gate.weight"), 1, D);
    let cfg = serde_json::json!({
        "model_type": "qwen2_moe", "hidden_size": D, "moe_intermediate_size": H,
        "shared_expert_intermediate_size": HS, "num_experts": E, "num_experts_per_tok": 2,
        "norm_topk_prob": false, "num_hidden_layers": 1
    });
    write_model("hf-qwen2-moe", &cfg, &w.tensors, StoredDtype::F32)
}

pub fn switch() -> PathBuf {
    let mut w = Writer::new(3);
    let p = "encoder.block.1.layer.1.mlp";
    w.linear(format!("{p}.router.classifier.weight"), E, D);
    for i in 0..E {
        w.linear(format!("{p}.experts.expert_{i}.wi.weight"), H, D);
        w.linear(format!("{p}.experts.expert_{i}.wo.weight"), D, H);
    }
    let cfg = serde_json::json!({
        "model_type": "switch_transformers", "num_experts": E, "d_model": D, "d_ff": H,
        "dense_act_fn": "relu", "num_layers": 2
    });
    write_model("hf-switch", &cfg, &w.tensors, StoredDtype::F32)
}

/// The three families' checkpoints, written afresh.
pub fn families() -> [(&'static str, PathBuf); 3] {
    [
        ("Mixtral", mixtral()),
        ("Qwen2-MoE", qwen2_moe()),
        ("Switch", switch()),
    ]
}

/// The digits features centred and scaled to [-1, 1] (pixels are 0..16), the inputs of the
/// precision measurements: 200 calibration records and the 300 after them.
pub fn records() -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let all: Vec<Vec<f32>> = embedded_digits()
        .unwrap()
        .features
        .into_iter()
        .map(|r| r.into_iter().map(|v| v / 8.0 - 1.0).collect())
        .collect();
    (all[..200].to_vec(), all[200..500].to_vec())
}
