//! Tiny synthetic checkpoints of each family (Mixtral, Qwen2-MoE with its shared expert,
//! OLMoE, Switch) written to temporary directories, and the float arithmetic to check their
//! forward passes by hand.

use std::path::PathBuf;
use veilmoe::model::checkpoint::{safetensors_bytes, StoredDtype};

pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A fresh directory under cargo's temporary directory for integration tests (`target/tmp`):
/// emptied when made again, so runs do not pile checkpoints up in the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ckpt-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn write_model(
    name: &str,
    config: &serde_json::Value,
    tensors: &Tensors,
    dtype: StoredDtype,
) -> PathBuf {
    let dir = temp_dir(name);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(tensors, dtype).unwrap(),
    )
    .unwrap();
    dir
}

/// Deterministic small values, exactly representable in f16 and bf16 (multiples of 1/16 in
/// [-1, 1]).
pub fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) % 33) as f32 - 16.0) / 16.0)
        .collect()
}

pub fn mat(rows: usize, cols: usize, seed: usize) -> (Vec<usize>, Vec<f32>) {
    (vec![rows, cols], values(rows * cols, seed))
}

pub fn push(t: &mut Tensors, name: &str, (shape, v): (Vec<usize>, Vec<f32>)) {
    t.push((name.to_string(), shape, v));
}

pub fn get<'a>(t: &'a Tensors, name: &str) -> &'a [f32] {
    &t.iter().find(|(n, _, _)| n == name).unwrap().2
}

pub fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks(x.len())
        .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Indices of the k largest, ties to the lowest index.
pub fn top(v: &[f32], k: usize) -> Vec<usize> {
    let mut i: Vec<usize> = (0..v.len()).collect();
    i.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap().then(a.cmp(&b)));
    i.truncate(k);
    i
}

pub fn gated_ffn(w1: &[f32], w3: &[f32], w2: &[f32], x: &[f32]) -> Vec<f32> {
    let u = matvec(w1, x);
    let v = matvec(w3, x);
    let a: Vec<f32> = u.iter().zip(&v).map(|(u, v)| silu(*u) * v).collect();
    matvec(w2, &a)
}

pub fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

pub const D: usize = 4;
pub const H: usize = 3;
pub const E: usize = 3;

pub fn mixtral_config(k: usize) -> serde_json::Value {
    serde_json::json!({
        "model_type": "mixtral",
        "hidden_size": D,
        "intermediate_size": H,
        "num_local_experts": E,
        "num_experts_per_tok": k,
        "hidden_act": "silu",
        "veilmoe": { "residual": true, "input_scale": 0.5 }
    })
}

/// MoE block at `layer`, Mixtral names, plus a head.
pub fn mixtral_tensors(layer: usize) -> Tensors {
    let mut t = Tensors::new();
    let p = format!("model.layers.{layer}.block_sparse_moe");
    push(&mut t, &format!("{p}.gate.weight"), mat(E, D, 1));
    for i in 0..E {
        push(
            &mut t,
            &format!("{p}.experts.{i}.w1.weight"),
            mat(H, D, 10 + i),
        );
        push(
            &mut t,
            &format!("{p}.experts.{i}.w3.weight"),
            mat(H, D, 20 + i),
        );
        push(
            &mut t,
            &format!("{p}.experts.{i}.w2.weight"),
            mat(D, H, 30 + i),
        );
    }
    push(&mut t, "score.weight", mat(2, D, 40));
    push(&mut t, "score.bias", (vec![2], vec![0.25, -0.5]));
    // a non-MoE tensor of another layer, ignored
    push(
        &mut t,
        "model.layers.0.self_attn.q_proj.weight",
        mat(D, D, 50),
    );
    t
}

/// Hidden units of the tiny Qwen checkpoint's shared expert (unlike H, to check the shapes).
pub const HS: usize = 5;

/// Routed experts, without a shared expert (OLMoE's layout).
pub fn olmoe_tensors() -> Tensors {
    let mut t = Tensors::new();
    let p = "model.layers.0.mlp";
    push(&mut t, &format!("{p}.gate.weight"), mat(E, D, 2));
    for i in 0..E {
        push(
            &mut t,
            &format!("{p}.experts.{i}.gate_proj.weight"),
            mat(H, D, 11 + i),
        );
        push(
            &mut t,
            &format!("{p}.experts.{i}.up_proj.weight"),
            mat(H, D, 21 + i),
        );
        push(
            &mut t,
            &format!("{p}.experts.{i}.down_proj.weight"),
            mat(D, H, 31 + i),
        );
    }
    t
}

/// Qwen2-MoE: the routed experts plus the shared expert and its sigmoid gate.
pub fn qwen_tensors() -> Tensors {
    let mut t = olmoe_tensors();
    let p = "model.layers.0.mlp";
    push(
        &mut t,
        &format!("{p}.shared_expert.gate_proj.weight"),
        mat(HS, D, 60),
    );
    push(
        &mut t,
        &format!("{p}.shared_expert.up_proj.weight"),
        mat(HS, D, 62),
    );
    push(
        &mut t,
        &format!("{p}.shared_expert.down_proj.weight"),
        mat(D, HS, 63),
    );
    push(
        &mut t,
        &format!("{p}.shared_expert_gate.weight"),
        mat(1, D, 61),
    );
    t
}

/// Switch MoE block at encoder layer 1 (2 experts, d_ff 3) with a 3-class head.
pub fn switch_model(name: &str, dtype: StoredDtype) -> (PathBuf, Tensors) {
    let (e, h) = (2, 3);
    let mut t = Tensors::new();
    let p = "encoder.block.1.layer.1.mlp";
    push(
        &mut t,
        &format!("{p}.router.classifier.weight"),
        mat(e, D, 3),
    );
    for i in 0..e {
        push(
            &mut t,
            &format!("{p}.experts.expert_{i}.wi.weight"),
            mat(h, D, 12 + i),
        );
        push(
            &mut t,
            &format!("{p}.experts.expert_{i}.wo.weight"),
            mat(D, h, 32 + i),
        );
    }
    push(&mut t, "classifier.weight", mat(3, D, 41));
    let config = serde_json::json!({
        "model_type": "switch_transformers",
        "num_experts": e,
        "d_model": D,
        "d_ff": h,
        "dense_act_fn": "relu",
        "num_layers": 2
    });
    (write_model(name, &config, &t, dtype), t)
}
