//! A small pool of random models and the check of one input through the encrypted pool
//! against the plaintext reference (shared by the `test` and `default` preset tests).

use super::wide::{hidden_read_slack, noise_steps};
use veilmoe::engine::{ClientKey, Evaluator};
use veilmoe::model::pool::{Pool, PoolRouter};
use veilmoe::model::{
    argmax, Activation, ExpertCount, FfnKind, Gating, HiddenDim, InputQuantizer, ModelDim,
    MoeConfig, QuantParams, QuantizedClassifier, QuantizedMoe, Rounding, TopK,
};
use veilmoe::protocols::pool::PoolLayer;
use veilmoe::protocols::Select;

pub const D: usize = 4;

pub fn classifier(h: usize, e: usize, ffn: FfnKind, seed: u64) -> QuantizedClassifier {
    let cfg = MoeConfig {
        d: ModelDim(D),
        h: HiddenDim(h),
        experts: ExpertCount(e),
        top_k: TopK(1),
        ffn,
        gating: Gating::SoftmaxSelected,
    };
    QuantizedClassifier {
        moe: QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), seed, true),
        input: InputQuantizer {
            input_scale: 0.5,
            input_zero_point: 0,
        },
        x_scale: 0.0,
        y_scale: 1.0,
        head: None,
    }
}

/// Three models of increasing size; the router's rows favour model 0, 1 or 2 by the sign of
/// the first two features.
pub fn pool() -> Pool {
    Pool {
        models: vec![
            classifier(2, 1, FfnKind::Plain(Activation::Relu), 1),
            classifier(4, 2, FfnKind::Plain(Activation::Silu), 2),
            classifier(4, 4, FfnKind::GatedSilu, 3),
        ],
        router: PoolRouter {
            weights: vec![1, 1, 0, 0, -1, 1, 0, 0, 0, -2, 0, 0],
            bias: Some(vec![0, 1, 2]),
            quant: QuantParams::for_message_bits(4),
        },
    }
}

/// Runs `x` through the encrypted pool and checks it: the router's logits within one read step
/// of the reference and its choice exact from them, the chosen model's output equal to its
/// reference up to noise and off-by-one hidden reads, every other model's terms zero. Returns
/// the chosen model.
pub fn check_pool_input(client: &ClientKey, ev: &Evaluator, layer: &PoolLayer, x: &[i64]) -> usize {
    let pool = layer.pool();
    let spec = pool.router_spec();
    let x = x.to_vec();
    let out = layer
        .forward(ev, &layer.encrypt(client, &x).unwrap(), &Select)
        .unwrap();
    // router: logits within one read step, the choice exact from them
    let logits = client.decrypt_lwe(&out.logits).unwrap();
    let exact = spec.logits(&spec.accumulators(&x), &mut Rounding::Exact);
    for (a, b) in logits.iter().zip(&exact) {
        assert!((a - b).abs() <= 1, "pool logit {a} vs reference {b}");
    }
    let (m, y) = out.decrypt(client, pool).unwrap();
    assert_eq!(m, argmax(&logits), "choice from logits {logits:?}");
    // the chosen model's output: its reference, up to noise and off-by-one hidden reads
    let model = &pool.models[m].moe;
    let want = model.reference(&x, &mut Rounding::Exact);
    let (e, h) = (want.selected[0], model.config.h.0);
    let slack = hidden_read_slack(model);
    let noise: i64 = out.terms[m].iter().map(|(c, t)| c * noise_steps(t)).sum();
    for (i, (a, b)) in y.iter().zip(&want.y).enumerate() {
        let l1: i64 = model.experts[e].w2[i * h..(i + 1) * h]
            .iter()
            .map(|w| w.abs())
            .sum();
        assert!(
            (a - b).abs() <= l1 * slack + noise,
            "model {m} output {i}: {a} vs reference {b}"
        );
    }
    // every other model's terms: encryptions of zero
    for (k, terms) in out.terms.iter().enumerate().filter(|(k, _)| *k != m) {
        for (_, t) in terms {
            let v = client.decrypt_lwe(t).unwrap();
            assert!(
                v.iter().all(|&z| z.abs() <= noise_steps(t)),
                "model {k} (not chosen) decrypts to {v:?}"
            );
        }
    }
    m
}
