//! Qwen2-MoE's shared expert under encryption on the `test` preset: the gate bits, the wide
//! output and the layer output against the plaintext reference under every oblivious strategy,
//! the operation trace independent of the routing, and a float checkpoint-shaped model with a
//! shared expert quantized and run end to end.

mod common;

use common::wide::check_token;
use common::{test_keys, Rng};
use rayon::prelude::*;
use veilmoe::engine::{Evaluator, OpKind};
use veilmoe::model::checkpoint::{FloatExpert, FloatSharedExpert};
use veilmoe::model::{
    quantize_with, Activation, ExpertCount, FfnKind, FloatMoeModel, Gating, HiddenDim, ModelDim,
    MoeConfig, QuantParams, QuantizeOptions, QuantizedMoe, Rounding, TopK,
};
use veilmoe::protocols::layer::output_coefficients;
use veilmoe::protocols::{ComputeAll, ExpertStrategy, MoeLayer, Select};

use common::small_config as config;

/// Runs `tokens` random tokens through the encrypted layer and checks every one: routing
/// exact from the decrypted logits, slot outputs and the shared expert against the reference,
/// the layer output against the gated sum of the decrypted parts. Returns how many tokens
/// decrypted to exactly the reference's layer output.
fn check_layer(
    model: &QuantizedMoe,
    tokens: usize,
    seed: u64,
    strategy: &dyn ExpertStrategy,
) -> usize {
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let layer = MoeLayer::new(&ev, model.clone()).expect("layer");
    let mut rng = Rng::new(seed);
    let (lo, hi) = (model.quant.input_min(), model.quant.input_max());
    let inputs: Vec<Vec<i64>> = (0..tokens)
        .map(|_| rng.vec(model.config.d.0, lo, hi))
        .collect();
    inputs
        .par_iter()
        .map(|x| {
            let out = layer
                .forward(&ev, &layer.encrypt(&k.client, x).unwrap(), strategy)
                .expect("forward");
            assert!(
                out.shared.is_some(),
                "the layer evaluates its shared expert"
            );
            check_token(&k.client, model, x, &out);
            let coefficients: Vec<i64> = out.y_terms.iter().map(|(c, _)| *c).collect();
            assert_eq!(coefficients, output_coefficients(model));
            let y = out.decrypt_y(&k.client).unwrap();
            (y == model.reference(x, &mut Rounding::Exact).y) as usize
        })
        .sum()
}

/// Every gating with a shared expert, under select and compute-all: the shared gate and output
/// match the reference up to the encrypted path's reads (one step off near a box edge, bounded
/// per value by the checks), and the layer output is their gated sum. How many tokens decrypt
/// to exactly the reference's output is printed (on `test`, whose PBS noise is ~8x the
/// secure presets', about half).
#[test]
fn shared_expert_matches_reference() {
    let cases = [
        (
            config(4, 2, FfnKind::GatedSilu, Gating::SoftmaxThenTopK),
            5,
            &Select as &dyn ExpertStrategy,
        ),
        (
            config(8, 1, FfnKind::GatedSilu, Gating::SoftmaxThenTopK),
            3,
            &Select,
        ),
        // k = 1 Mixtral: the routed gate is the constant G beside the shared expert
        (
            config(
                4,
                1,
                FfnKind::Plain(Activation::Silu),
                Gating::SoftmaxSelected,
            ),
            4,
            &Select,
        ),
        (
            config(4, 2, FfnKind::GatedSilu, Gating::SoftmaxSelected),
            6,
            &ComputeAll,
        ),
    ];
    for (i, (cfg, hs, strategy)) in cases.into_iter().enumerate() {
        let seed = 40 + i as u64;
        let model = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), seed, true)
            .with_random_shared(hs, seed);
        let tokens = 24;
        let exact = check_layer(&model, tokens, seed, strategy);
        eprintln!(
            "E={} k={} {} hs={hs} {}: {exact}/{tokens} tokens exactly the reference",
            cfg.experts.0,
            cfg.top_k.0,
            cfg.ffn.name(),
            strategy.name()
        );
    }
}

/// The shared expert's cost is the documented one and the same for every token: the trace
/// does not depend on the routing, and its stage holds 4 h_s + gate_bits PBS and gate_bits
/// circuit bootstraps (gated FFN).
#[test]
fn shared_expert_trace_and_op_counts() {
    let k = test_keys();
    let cfg = config(8, 2, FfnKind::GatedSilu, Gating::SoftmaxThenTopK);
    let hs = 6;
    let model = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), 7, true)
        .with_random_shared(hs, 7);
    let layer = MoeLayer::new(&Evaluator::new(&k.server), model.clone()).unwrap();
    let mut rng = Rng::new(7);
    let mut traces = Vec::new();
    let mut routes = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let x = rng.vec(4, -8, 7);
        let ev = Evaluator::new(&k.server);
        let out = layer
            .forward(&ev, &layer.encrypt(&k.client, &x).unwrap(), &Select)
            .unwrap();
        routes.insert(
            k.client
                .decrypt_lwe(&out.routing.slots[0].index_bits)
                .unwrap(),
        );
        let counts = ev.ops().counts();
        let gate_bits = model.quant.gate_bits as u64;
        assert_eq!(
            counts["shared-expert"][&OpKind::Pbs],
            4 * hs as u64 + gate_bits
        );
        traces.push(ev.ops().trace());
    }
    assert!(
        routes.len() >= 2,
        "the tokens should reach different experts: {routes:?}"
    );
    for t in &traces[1..] {
        assert_eq!(t, &traces[0], "trace differs between tokens");
    }
}

/// A Qwen2-MoE-shaped float block (weights N(0, 0.02^2) as transformers initialises them, a
/// shared expert with its sigmoid gate) quantized on calibration records and run encrypted:
/// the decrypted output equals the quantized reference's up to the encrypted path's reads, and
/// dropping the shared expert from the float model moves its output (the shared expert counts).
#[test]
fn quantized_qwen_block_with_shared_expert_runs_encrypted() {
    let (d, h, hs, e) = (8, 4, 8, 4);
    let cfg = MoeConfig {
        d: ModelDim(d),
        h: HiddenDim(h),
        experts: ExpertCount(e),
        top_k: TopK(2),
        ffn: FfnKind::GatedSilu,
        gating: Gating::SoftmaxThenTopK,
    };
    let mut float = FloatMoeModel::random(cfg, 0.02 * (d as f64).sqrt(), 3);
    let extra = FloatMoeModel::random(
        MoeConfig {
            h: HiddenDim(hs),
            ..cfg
        },
        0.02 * (d as f64).sqrt(),
        4,
    );
    let ffn: FloatExpert = extra.experts[0].clone();
    float.shared = Some(FloatSharedExpert {
        ffn,
        gate: extra.router.row(0).to_owned(),
    });
    float.validate().unwrap();
    let records = Rng::new(5).unit_records(200, d);
    let (q, report) =
        quantize_with(&float, &QuantizeOptions::for_message_bits(4), &records).unwrap();
    let moe = q.moe.clone();
    assert!(moe.shared.as_ref().is_some_and(|s| s.h == hs), "{report}");
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let layer = MoeLayer::new(&ev, moe.clone()).unwrap();
    for r in records.iter().take(6) {
        let x = q.quantize_input(r).unwrap();
        let out = layer
            .forward(&ev, &layer.encrypt(&k.client, &x).unwrap(), &Select)
            .unwrap();
        check_token(&k.client, &moe, &x, &out);
    }
    let mut without = float.clone();
    without.shared = None;
    let moved = records
        .iter()
        .filter(|r| {
            let (a, b) = (float.block_output(r), without.block_output(r));
            a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-6)
        })
        .count();
    assert_eq!(
        moved,
        records.len(),
        "the shared expert contributes to every record"
    );
}

/// A shared expert that does not fit its layer (as a hostile or damaged model file may hold)
/// is refused by validation, and so by the layer and the model-file decoder, with a cause.
#[test]
fn a_malformed_shared_expert_is_refused() {
    use veilmoe::format::{Binding, ObjectKind};
    use veilmoe::model::model_file::{decode_model_file, encode_model_file, ModelFile};
    let cfg = config(4, 2, FfnKind::GatedSilu, Gating::SoftmaxThenTopK);
    let good = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), 3, true)
        .with_random_shared(5, 3);
    good.validate().unwrap();
    type Damage = fn(&mut veilmoe::model::SharedExpert);
    let damages: [(&str, Damage); 6] = [
        ("hidden size", |s| s.h = 0),
        ("w2", |s| {
            s.weights.w2.pop();
        }),
        ("w3", |s| s.weights.w3 = None),
        ("gate", |s| s.gate.push(1)),
        ("gate bias", |s| s.gate_bias = i64::MAX),
        ("gate scale", |s| s.gate_scale = f64::NAN),
    ];
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    for (what, damage) in damages {
        let mut bad = good.clone();
        damage(bad.shared.as_mut().unwrap());
        let e = bad.validate().expect_err(what).to_string();
        assert!(
            e.contains("shared"),
            "{what}: the cause names the shared expert: {e}"
        );
        assert!(MoeLayer::new(&ev, bad).is_err(), "{what}");
    }
    // a model file with a damaged shared expert: refused by the decoder, with the cause
    let (float, records) = float_with_shared(cfg, 9, 40);
    let (mut q, _) =
        quantize_with(&float, &QuantizeOptions::for_message_bits(4), &records).unwrap();
    let bytes = encode_model_file(&q, "test").unwrap();
    assert_eq!(decode_model_file(&bytes, "test").unwrap().model, q);
    q.moe.shared.as_mut().unwrap().weights.w1.truncate(3);
    let e = encode_model_file(&q, "test").unwrap_err().to_string();
    assert!(e.contains("shared expert w1"), "{e}");
    // written by another program, bypassing the encoder's check
    let file = ModelFile {
        id: q.id(),
        source: "damaged".into(),
        model: q,
    };
    let bytes =
        veilmoe::format::encode(ObjectKind::QuantizedModel, &Binding::UNBOUND, &file).unwrap();
    let e = decode_model_file(&bytes, "test").unwrap_err().to_string();
    assert!(e.contains("shared expert w1"), "{e}");
}

/// `params check` and `quantize` report the shared expert's gate and output among the stages.
#[test]
fn fidelity_reports_the_shared_expert_stages() {
    use veilmoe::model::reference_fidelity;
    let cfg = config(4, 2, FfnKind::GatedSilu, Gating::SoftmaxThenTopK);
    let (float, records) = float_with_shared(cfg, 12, 60);
    let (q, _) = quantize_with(&float, &QuantizeOptions::for_message_bits(4), &records).unwrap();
    let f = reference_fidelity(&float, &q, &records, &mut Rounding::Exact).unwrap();
    let stages: Vec<&str> = f.stages.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            "router logits",
            "pre-activation",
            "silu factor",
            "shared gate",
            "shared expert output"
        ]
    );
    // 3 gate bits: the gate is within half a step (1/14) of the float sigmoid, over all records
    let gate = &f.stages[3].fidelity;
    assert!(gate.cosine_mean > 0.95 && gate.relative_l2 < 0.2, "{gate}");
}

/// A float block of `cfg` (weights of std 1/sqrt(fan-in)) with a shared expert of the routed
/// experts' shape, and `n` records in [-1, 1].
fn float_with_shared(cfg: MoeConfig, seed: u64, n: usize) -> (FloatMoeModel, Vec<Vec<f32>>) {
    let mut m = FloatMoeModel::random(cfg, 1.0, seed);
    let extra = FloatMoeModel::random(cfg, 1.0, seed + 1);
    m.shared = Some(FloatSharedExpert {
        ffn: extra.experts[0].clone(),
        gate: extra.router.row(0).to_owned(),
    });
    let d = cfg.d.0;
    let records = Rng::new(seed).unit_records(n, d);
    (m, records)
}
