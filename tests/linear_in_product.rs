//! A gated FFN's linear factor read inside its product's quarter squares
//! (`QuantizedMoe::linear_in_product`), on the insecure `test` preset: the encrypted layer still
//! equals the reference up to noise and one-step reads (random layers and a quantized
//! checkpoint with calibrated ranges), costs h PBS fewer per evaluated FFN, its operation trace
//! does not depend on the data, and the flag survives the model file. The secure end-to-end
//! check is `default_preset::linear_factor_in_the_product_on_default`.

mod common;

use common::wide::{check_token, run_select_tokens};
use common::{test_keys, Rng};
use std::collections::BTreeSet;
use veilmoe::engine::Evaluator;
use veilmoe::model::model_file::{decode_model_file, encode_model_file};
use veilmoe::model::{
    quantize_with, ExpertCount, FfnKind, FloatMoeModel, Gating, HiddenDim, ModelDim, MoeConfig,
    QuantParams, QuantizeOptions, QuantizedMoe, TopK,
};
use veilmoe::protocols::{MoeLayer, Select};

fn gated_config(d: usize, h: usize, e: usize, k: usize) -> MoeConfig {
    MoeConfig {
        d: ModelDim(d),
        h: HiddenDim(h),
        experts: ExpertCount(e),
        top_k: TopK(k),
        ffn: FfnKind::GatedSilu,
        gating: Gating::SoftmaxSelected,
    }
}

/// Runs `tokens` random tokens through Select-Then-Compute, checks each against the reference
/// ([`check_token`]) and returns the PBS of one token and whether every token's operation trace
/// was the same; panics if the tokens did not reach at least two routings.
fn run_checked(model: &QuantizedMoe, tokens: usize, seed: u64) -> (u64, bool) {
    let k = test_keys();
    let mut rng = Rng::new(seed);
    let inputs: Vec<Vec<i64>> = (0..tokens)
        .map(|_| rng.vec(model.config.d.0, -8, 7))
        .collect();
    let runs = run_select_tokens((&k.client, &k.server), model, &inputs, |_, _, _| ());
    let routes: BTreeSet<_> = runs.iter().map(|r| r.check.selected.clone()).collect();
    assert!(
        routes.len() >= 2,
        "the tokens should reach several routings"
    );
    let same = runs.iter().all(|r| r.trace == runs[0].trace);
    (runs[0].pbs, same)
}

#[test]
fn select_with_the_linear_factor_in_the_product_matches_the_reference() {
    // Mixtral top-2 with a Qwen2-MoE shared expert, and top-1 over 8 experts.
    for (e, top, shared) in [(4, 2, Some(6)), (8, 1, None)] {
        let (d, h) = (8, 4);
        let mut random = QuantizedMoe::random(
            gated_config(d, h, e, top),
            QuantParams::for_message_bits(4),
            21,
            true,
        );
        if let Some(hs) = shared {
            random = random.with_random_shared(hs, 22);
        }
        let fused = random.with_linear_in_product();
        assert!(fused.linear_in_product);
        let (fused_pbs, same) = run_checked(&fused, 24, 5);
        assert!(same, "E = {e}: the trace depends on the token");
        // The same weights with the factor read on its own (they fit the read box too).
        let separate = QuantizedMoe {
            linear_in_product: false,
            ..fused.clone()
        };
        let (separate_pbs, _) = run_checked(&separate, 4, 6);
        let saved = (top * h + shared.unwrap_or(0)) as u64;
        assert_eq!(
            separate_pbs - fused_pbs,
            saved,
            "E = {e}: one linear read per hidden unit of every evaluated FFN is saved"
        );
    }
}

#[test]
fn a_checkpoint_quantized_for_it_runs_with_calibrated_ranges() {
    let (d, h, e) = (8, 8, 4);
    let float = FloatMoeModel::random(gated_config(d, h, e, 2), 2.0, 31);
    let records = Rng::new(31).unit_records(128, d);
    let opts = QuantizeOptions {
        search: false,
        linear_in_product: true,
        ..QuantizeOptions::for_message_bits(4)
    };
    let (q, report) = quantize_with(&float, &opts, &records).unwrap();
    assert!(q.moe.linear_in_product && report.linear_in_product);
    assert!(q.moe.calibrated_shift.is_some());
    // W3 fits the factor range on the calibration records (the headroom covers them) ...
    let (lo, hi) = q.moe.linear_factor_box();
    let inputs: Vec<Vec<i64>> = records
        .iter()
        .map(|r| q.quantize_input(r).unwrap())
        .collect();
    for x in &inputs {
        assert_eq!(q.moe.linear_factor_overflows(x), 0, "box [{lo}, {hi}]");
    }
    // ... so the encrypted W3 products are declared within it, below the worst case.
    assert_eq!(q.moe.w3_declared(), Some((lo, hi)));
    // Encrypted: equal to the reference, with h PBS fewer per slot than the same model
    // reading its factor on its own.
    let k = test_keys();
    let layer_of = |m: &QuantizedMoe| MoeLayer::new(&Evaluator::new(&k.server), m.clone());
    let fused_layer = layer_of(&q.moe).unwrap();
    for x in inputs.iter().take(4) {
        let ev = Evaluator::new(&k.server);
        let out = fused_layer
            .forward(&ev, &fused_layer.encrypt(&k.client, x).unwrap(), &Select)
            .unwrap();
        check_token(&k.client, &q.moe, x, &out);
    }
    // The flag is part of the model file (and of the model id).
    let bytes = encode_model_file(&q, "test").unwrap();
    let back = decode_model_file(&bytes, "memory").unwrap();
    assert!(back.model.moe.linear_in_product);
    let mut other = q.clone();
    other.moe.linear_in_product = false;
    assert_ne!(other.id(), q.id());
}
