//! Checkpoint loading (Mixtral, Qwen2-MoE/OLMoE, Switch), its error paths, and quantization of
//! the embedded digits model. Plaintext only: tiny synthetic checkpoints written to a temporary
//! directory, forward passes compared with hand computations.

mod common;

use common::checkpoints::*;
use std::path::PathBuf;
use veilmoe::engine::Preset;
use veilmoe::model::checkpoint::{
    embedded_demo_model, CheckpointError, Family, FloatMoeModel, StoredDtype,
};
use veilmoe::model::data::{digits_split, embedded_digits};
use veilmoe::model::quantize::{evaluate_accuracy, quantize_with, QuantizeOptions};
use veilmoe::model::{Activation, FfnKind, Gating, ModelError, Rounding};
use veilmoe::protocols::simulated_rounding;

#[test]
fn mixtral_round_trip_and_forward() {
    let t = mixtral_tensors(1);
    let dir = write_model("mixtral", &mixtral_config(2), &t, StoredDtype::F32);
    let m = FloatMoeModel::load(&dir).unwrap();
    assert_eq!(m.family, Family::Mixtral);
    assert_eq!(m.layer, 1);
    assert_eq!(
        (
            m.config.d.0,
            m.config.h.0,
            m.config.experts.0,
            m.config.top_k.0
        ),
        (D, H, E, 2)
    );
    assert_eq!(m.config.ffn, FfnKind::GatedSilu);
    assert_eq!(m.config.gating, Gating::SoftmaxSelected);
    assert!(m.residual);
    assert_eq!(m.input_scale, 0.5);
    let p = "model.layers.1.block_sparse_moe";
    assert_eq!(
        m.router.as_slice().unwrap(),
        get(&t, &format!("{p}.gate.weight"))
    );
    assert_eq!(m.experts[2].w2.shape(), &[D, H]);
    assert_eq!(
        m.experts[2].w2.as_slice().unwrap(),
        get(&t, &format!("{p}.experts.2.w2.weight"))
    );
    assert_eq!(
        m.experts[1].w3.as_ref().unwrap().as_slice().unwrap(),
        get(&t, &format!("{p}.experts.1.w3.weight"))
    );
    assert_eq!(m.classes(), Some(2));

    // hand computation: x = raw * 0.5, top-2, softmax over the two selected logits
    let raw = [1.0f32, -2.0, 0.5, 3.0];
    let x: Vec<f32> = raw.iter().map(|v| v * 0.5).collect();
    let r = matvec(get(&t, &format!("{p}.gate.weight")), &x);
    let sel = top(&r, 2);
    let g = softmax(&[r[sel[0]], r[sel[1]]]);
    let mut hidden = x.clone();
    for (slot, &e) in sel.iter().enumerate() {
        let o = gated_ffn(
            get(&t, &format!("{p}.experts.{e}.w1.weight")),
            get(&t, &format!("{p}.experts.{e}.w3.weight")),
            get(&t, &format!("{p}.experts.{e}.w2.weight")),
            &x,
        );
        for (h, o) in hidden.iter_mut().zip(o) {
            *h += g[slot] * o;
        }
    }
    let mut want = matvec(get(&t, "score.weight"), &hidden);
    want[0] += 0.25;
    want[1] -= 0.5;
    assert_close(&m.forward(&raw), &want);
    let (s, _) = m.route(&m.model_input(&raw));
    assert_eq!(s, sel);
}

#[test]
fn layer_selection() {
    let mut t = mixtral_tensors(3);
    t.extend(
        mixtral_tensors(1)
            .into_iter()
            .filter(|(n, _, _)| n.contains("block_sparse_moe")),
    );
    let dir = write_model("layers", &mixtral_config(1), &t, StoredDtype::F32);
    assert_eq!(FloatMoeModel::load(&dir).unwrap().layer, 1);
    assert_eq!(FloatMoeModel::load_layer(&dir, Some(3)).unwrap().layer, 3);
    match FloatMoeModel::load_layer(&dir, Some(2)) {
        Err(ModelError::Checkpoint(CheckpointError::MissingLayer {
            layer, available, ..
        })) => {
            assert_eq!((layer, available), (2, vec![1, 3]));
        }
        other => panic!("expected a missing-layer error, got {other:?}"),
    }
}

#[test]
fn qwen2_moe_bf16_softmax_then_top_k() {
    let t = qwen_tensors();
    let config = serde_json::json!({
        "model_type": "qwen2_moe",
        "hidden_size": D,
        "intermediate_size": 99,
        "moe_intermediate_size": H,
        "num_experts": E,
        "num_experts_per_tok": 2,
        "norm_topk_prob": false
    });
    let dir = write_model("qwen", &config, &t, StoredDtype::BF16);
    let m = FloatMoeModel::load(&dir).unwrap();
    assert_eq!(m.family, Family::Qwen2Moe);
    assert_eq!(m.config.gating, Gating::SoftmaxThenTopK);
    assert_eq!(m.config.h.0, H);
    // Every tensor of the block is evaluated, the shared expert included.
    assert!(m.not_evaluated.is_empty(), "{:?}", m.not_evaluated);
    assert_eq!(m.shared.as_ref().map(|s| s.hidden()), Some(HS));
    assert!(m.head.is_none() && !m.residual);
    let p = "model.layers.0.mlp";
    // bf16 holds these values exactly
    assert_eq!(
        m.experts[0].w1.as_slice().unwrap(),
        get(&t, &format!("{p}.experts.0.gate_proj.weight"))
    );
    let x = [0.5f32, 1.0, -1.5, 2.0];
    let r = matvec(get(&t, &format!("{p}.gate.weight")), &x);
    let probs = softmax(&r);
    let mut want = vec![0.0f32; D];
    for &e in &top(&r, 2) {
        let o = gated_ffn(
            get(&t, &format!("{p}.experts.{e}.gate_proj.weight")),
            get(&t, &format!("{p}.experts.{e}.up_proj.weight")),
            get(&t, &format!("{p}.experts.{e}.down_proj.weight")),
            &x,
        );
        for (w, o) in want.iter_mut().zip(o) {
            *w += probs[e] * o;
        }
    }
    // plus sigmoid(gate . x) * FFN_shared(x)
    let g =
        1.0 / (1.0 + (-matvec(get(&t, &format!("{p}.shared_expert_gate.weight")), &x)[0]).exp());
    let o = gated_ffn(
        get(&t, &format!("{p}.shared_expert.gate_proj.weight")),
        get(&t, &format!("{p}.shared_expert.up_proj.weight")),
        get(&t, &format!("{p}.shared_expert.down_proj.weight")),
        &x,
    );
    for (w, o) in want.iter_mut().zip(o) {
        *w += g * o;
    }
    assert_close(&m.forward(&x), &want);
}

/// A shared expert with a tensor missing is refused with that tensor's name; a tensor of the
/// block that no loader reads is a named warning.
#[test]
fn qwen2_moe_partial_shared_expert_and_unread_tensors() {
    let config = serde_json::json!({
        "model_type": "qwen2_moe", "hidden_size": D, "moe_intermediate_size": H,
        "num_experts": E, "num_experts_per_tok": 2
    });
    let partial: Tensors = qwen_tensors()
        .into_iter()
        .filter(|(n, _, _)| !n.ends_with("shared_expert.down_proj.weight"))
        .collect();
    let dir = write_model("qwen-partial", &config, &partial, StoredDtype::F32);
    match FloatMoeModel::load(&dir) {
        Err(ModelError::Checkpoint(CheckpointError::MissingTensor { name, .. })) => {
            assert_eq!(name, "model.layers.0.mlp.shared_expert.down_proj.weight")
        }
        other => panic!("expected a missing-tensor error, got {other:?}"),
    }
    let mut extra = qwen_tensors();
    push(
        &mut extra,
        "model.layers.0.mlp.expert_bias.weight",
        mat(1, E, 5),
    );
    let dir = write_model("qwen-extra", &config, &extra, StoredDtype::F32);
    let m = FloatMoeModel::load(&dir).unwrap();
    assert_eq!(m.not_evaluated.len(), 1, "{:?}", m.not_evaluated);
    assert!(
        m.not_evaluated[0].contains("model.layers.0.mlp.expert_bias"),
        "{:?}",
        m.not_evaluated
    );
}

#[test]
fn olmoe_intermediate_size_and_renormalized_gates() {
    let config = serde_json::json!({
        "model_type": "olmoe",
        "hidden_size": D,
        "intermediate_size": H,
        "num_experts": E,
        "num_experts_per_tok": 2,
        "norm_topk_prob": true
    });
    let dir = write_model("olmoe", &config, &olmoe_tensors(), StoredDtype::F16);
    let m = FloatMoeModel::load(&dir).unwrap();
    assert_eq!(m.family, Family::Olmoe);
    assert!(m.shared.is_none() && m.not_evaluated.is_empty());
    assert_eq!(m.config.h.0, H);
    assert_eq!(m.config.gating, Gating::SoftmaxSelected);
}

#[test]
fn switch_f16_top1_relu() {
    let p = "encoder.block.1.layer.1.mlp";
    let (dir, t) = switch_model("switch", StoredDtype::F16);
    let m = FloatMoeModel::load(&dir).unwrap();
    assert_eq!(m.family, Family::SwitchTransformers);
    assert_eq!(m.layer, 1);
    assert_eq!(m.config.ffn, FfnKind::Plain(Activation::Relu));
    assert_eq!(m.config.gating, Gating::SoftmaxThenTopK);
    assert_eq!(m.config.top_k.0, 1);
    assert!(m.experts[0].w3.is_none());
    assert_eq!(m.classes(), Some(3));
    let x = [1.0f32, 0.5, -0.25, 2.0];
    let r = matvec(get(&t, &format!("{p}.router.classifier.weight")), &x);
    let sel = top(&r, 1)[0];
    let gate = softmax(&r)[sel];
    let hid: Vec<f32> = matvec(get(&t, &format!("{p}.experts.expert_{sel}.wi.weight")), &x)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    let y: Vec<f32> = matvec(
        get(&t, &format!("{p}.experts.expert_{sel}.wo.weight")),
        &hid,
    )
    .into_iter()
    .map(|v| gate * v)
    .collect();
    let want = matvec(get(&t, "classifier.weight"), &y);
    assert_close(&m.forward(&x), &want);
}

fn load_err(dir: &PathBuf) -> CheckpointError {
    match FloatMoeModel::load(dir) {
        Err(ModelError::Checkpoint(e)) => e,
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn missing_tensor_is_named() {
    let name = "model.layers.1.block_sparse_moe.experts.2.w3.weight";
    let t: Tensors = mixtral_tensors(1)
        .into_iter()
        .filter(|(n, _, _)| n != name)
        .collect();
    let dir = write_model("missing", &mixtral_config(2), &t, StoredDtype::F32);
    let e = load_err(&dir);
    assert!(matches!(e, CheckpointError::MissingTensor { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(name) && msg.contains(&dir.display().to_string()),
        "{msg}"
    );
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let name = "model.layers.1.block_sparse_moe.experts.0.w2.weight";
    let t: Tensors = mixtral_tensors(1)
        .into_iter()
        .map(|(n, s, v)| {
            if n == name {
                (n, vec![H, D], v)
            } else {
                (n, s, v)
            }
        })
        .collect();
    let dir = write_model("shape", &mixtral_config(2), &t, StoredDtype::F32);
    let e = load_err(&dir);
    match &e {
        CheckpointError::Shape {
            name: n,
            expected,
            found,
        } => {
            assert_eq!(
                (n.as_str(), expected.clone(), found.clone()),
                (name, vec![D, H], vec![H, D])
            );
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("[4, 3]") && msg.contains("[3, 4]") && msg.contains(name),
        "{msg}"
    );
}

#[test]
fn unknown_model_type_and_missing_key() {
    let mut cfg = mixtral_config(1);
    cfg["model_type"] = "llama".into();
    let dir = write_model("unknown", &cfg, &mixtral_tensors(1), StoredDtype::F32);
    let e = load_err(&dir);
    assert!(
        matches!(e, CheckpointError::UnknownModelType { ref model_type, .. } if model_type == "llama"),
        "{e:?}"
    );

    let mut cfg = mixtral_config(1);
    cfg.as_object_mut().unwrap().remove("num_local_experts");
    let dir = write_model("nokey", &cfg, &mixtral_tensors(1), StoredDtype::F32);
    let e = load_err(&dir);
    assert!(e.to_string().contains("num_local_experts"), "{e}");
    assert!(matches!(e, CheckpointError::MissingKey { .. }));

    let mut cfg = mixtral_config(1);
    cfg["veilmoe"]["residul"] = true.into();
    let dir = write_model("typo", &cfg, &mixtral_tensors(1), StoredDtype::F32);
    assert!(load_err(&dir).to_string().contains("residul"));

    let dir = write_model(
        "nomoe",
        &mixtral_config(1),
        &Tensors::from([(
            "model.layers.0.mlp.up_proj.weight".to_string(),
            vec![2, 2],
            vec![0.0; 4],
        )]),
        StoredDtype::F32,
    );
    assert!(matches!(load_err(&dir), CheckpointError::NoMoeLayer { .. }));
}

#[test]
fn truncated_or_corrupted_safetensors_are_errors() {
    let dir = write_model(
        "trunc",
        &mixtral_config(1),
        &mixtral_tensors(1),
        StoredDtype::F32,
    );
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // cut into the data: the header still parses, the file does not
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, CheckpointError::Safetensors { .. }), "{e:?}");
    assert!(e.to_string().contains("model.safetensors"));
    // cut into the header
    std::fs::write(&path, &bytes[..20]).unwrap();
    assert!(matches!(
        load_err(&dir),
        CheckpointError::Safetensors { .. }
    ));
    // not a safetensors file at all
    std::fs::write(&path, b"hello").unwrap();
    assert!(matches!(
        load_err(&dir),
        CheckpointError::Safetensors { .. }
    ));
    // no weights
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(load_err(&dir), CheckpointError::NoWeights { .. }));
    // no config
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(matches!(load_err(&dir), CheckpointError::Io { .. }));
}

#[test]
fn embedded_demo_model_round_trips_through_save() {
    let m = embedded_demo_model().unwrap();
    assert_eq!(
        (
            m.features(),
            m.config.experts.0,
            m.config.h.0,
            m.config.top_k.0
        ),
        (64, 4, 16, 1)
    );
    let dir = temp_dir("save");
    m.save_mixtral(&dir).unwrap();
    let back = FloatMoeModel::load(&dir).unwrap();
    assert_eq!(back.router, m.router);
    assert_eq!(back.experts, m.experts);
    assert_eq!(back.head, m.head);
    assert_eq!(
        (back.residual, back.input_scale),
        (m.residual, m.input_scale)
    );
}

/// The acceptance criterion of the demo: on the 360-record test split, the quantized model's
/// exact integer reference is within 2 points of the float model (4-bit reads).
#[test]
fn embedded_digits_model_quantizes_within_two_points() {
    let m = embedded_demo_model().unwrap();
    let (train, test) = digits_split(&embedded_digits().unwrap());
    let (q, report) =
        quantize_with(&m, &QuantizeOptions::for_message_bits(4), &train.features).unwrap();
    q.validate().unwrap();
    let exact = evaluate_accuracy(&m, &q, &test, &mut Rounding::Exact).unwrap();
    println!("{report}\nexact: {exact}");
    assert_eq!(exact.records, 360);
    assert!(exact.float_accuracy() >= 0.95, "{exact}");
    assert!(
        exact.quantized_accuracy() >= exact.float_accuracy() - 0.02,
        "quantized accuracy more than 2 points below float: {exact}"
    );
    // the encrypted path's approximate reads, simulated on the default preset
    let preset = Preset::load("default", false).unwrap();
    let sim = evaluate_accuracy(
        &m,
        &q,
        &test,
        &mut simulated_rounding(&preset, preset.message_bits, 1),
    )
    .unwrap();
    println!("simulated: {sim}");
    assert!(
        sim.quantized_accuracy() >= exact.float_accuracy() - 0.03,
        "{sim}"
    );
    // the W2 rows respect the preset's noise budget
    assert!(report.w2_norm2_sq <= report.w2_norm2_sq_limit);
}

/// The search path of the quantizer on each family's tiny model: a valid classifier whose
/// weights respect the integer limits, and a reference that runs on every record.
#[test]
fn quantizer_search_covers_every_family() {
    let calib: Vec<Vec<f32>> = (0..40)
        .map(|i| {
            (0..D)
                .map(|k| (((i * 5 + k * 3) % 11) as f32 - 5.0) / 4.0)
                .collect()
        })
        .collect();
    let mixtral = write_model(
        "q-mixtral",
        &mixtral_config(2),
        &mixtral_tensors(0),
        StoredDtype::F32,
    );
    let qwen_cfg = serde_json::json!({
        "model_type": "qwen2_moe", "hidden_size": D, "moe_intermediate_size": H,
        "num_experts": E, "num_experts_per_tok": 1
    });
    let qwen = write_model("q-qwen", &qwen_cfg, &qwen_tensors(), StoredDtype::F32);
    let (switch, _) = switch_model("q-switch", StoredDtype::F32);
    for dir in [mixtral, qwen, switch] {
        let m = FloatMoeModel::load(&dir).unwrap();
        let (q, rep) = quantize_with(&m, &QuantizeOptions::for_message_bits(4), &calib).unwrap();
        q.validate().unwrap();
        assert!(rep.candidates > 10, "the search ran: {rep}");
        assert!(rep.w2_norm2_sq <= rep.w2_norm2_sq_limit);
        assert!(rep.relative_error.is_finite());
        for r in &calib {
            let out = q.reference_outputs(r, &mut Rounding::Exact).unwrap();
            assert_eq!(out.len(), m.forward(r).len());
        }
    }
}

/// Without the declared quantization, the calibrated search also keeps the demo model within
/// reach of its float accuracy (a looser bound: the search does not know the training).
#[test]
fn searched_quantization_of_the_demo_model() {
    let m = embedded_demo_model().unwrap();
    assert!(
        m.quantization.is_some(),
        "the demo model declares its quantization"
    );
    let (train, test) = digits_split(&embedded_digits().unwrap());
    let opts = QuantizeOptions {
        use_model_choice: false,
        max_scored: 400,
        ..QuantizeOptions::for_message_bits(4)
    };
    let (q, rep) = quantize_with(&m, &opts, &train.features).unwrap();
    let acc = evaluate_accuracy(&m, &q, &test, &mut Rounding::Exact).unwrap();
    println!("{rep}\nsearched: {acc}");
    assert!(
        acc.quantized_accuracy() >= acc.float_accuracy() - 0.04,
        "{acc}"
    );
}
