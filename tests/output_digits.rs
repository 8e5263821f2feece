//! W2 in two digits (`veilmoe::model::output_digits`) under encryption: the Hugging Face-style
//! checkpoints of the precision measurements, quantized with the defaults (which split W2), run
//! with Select-Then-Compute on `test`. Every output term has d values and the public
//! coefficients `[2^k c, c]`; every digit of every slot output and of the shared expert is the
//! reference's up to its noise and a hidden read one step off, and the layer output is their
//! gated sum as the client adds it (`common::wide::check_token`).

mod common;

use common::hf_families::{mixtral, qwen2_moe, records, switch};
use common::test_keys;
use common::wide::check_token;
use veilmoe::engine::Evaluator;
use veilmoe::model::checkpoint::FloatMoeModel;
use veilmoe::model::quantize::{quantize_with, QuantizeOptions};
use veilmoe::protocols::layer::output_coefficients;
use veilmoe::protocols::{MoeLayer, Select};

/// Encrypted tokens per family.
const TOKENS: usize = 2;

#[test]
fn digit_outputs_add_up_to_the_reference() {
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let (calib, test) = records();
    let p = k.client.preset();
    for dir in [mixtral(), qwen2_moe(), switch()] {
        let m = FloatMoeModel::load(&dir).unwrap();
        let opts = QuantizeOptions::for_reads(p.message_bits, p.max_norm2);
        let q = quantize_with(&m, &opts, &calib).unwrap().0;
        let moe = &q.moe;
        let digits = moe.output_digits.expect("the defaults split W2");
        assert!(digits.shift >= 1);
        // one piece under the same options would hold W2 4^k times tighter
        let whole = quantize_with(
            &m,
            &QuantizeOptions {
                output_digits: false,
                ..opts.clone()
            },
            &calib,
        )
        .unwrap()
        .0;
        assert!(whole.moe.output_digits.is_none());
        let largest = |q: &veilmoe::model::QuantizedMoe| {
            q.experts.iter().flat_map(|x| &x.w2).map(|w| w.abs()).max()
        };
        assert!(
            largest(moe) > largest(&whole.moe),
            "digits allow a finer W2"
        );

        let layer = MoeLayer::new(&ev, moe.clone()).unwrap();
        let d = moe.config.d.0;
        for r in test.iter().take(TOKENS) {
            let x = q.quantize_input(r).unwrap();
            let out = layer
                .forward(&ev, &layer.encrypt(&k.client, &x).unwrap(), &Select)
                .unwrap();
            let coefficients: Vec<i64> = out.y_terms.iter().map(|(c, _)| *c).collect();
            assert_eq!(coefficients, output_coefficients(moe));
            for pair in coefficients.chunks(2) {
                assert_eq!(pair[0], pair[1] << digits.shift);
            }
            assert!(out.y_terms.iter().all(|(_, t)| t.len() == d));
            assert!(out.slot_outputs.iter().all(|o| o.len() == 2 * d));
            check_token(&k.client, moe, &x, &out);
        }
    }
}

/// The capacity strategy over a model with W2 in two digits (the Switch checkpoint, worst-case
/// ranges so that random tokens stay in their boxes): every slot's digits against the
/// reference, and each token's output as the client adds up its slot's digits
/// (`CapacityOutput::decrypt_y`).
#[test]
fn capacity_adds_up_the_digits() {
    let k = test_keys();
    let (calib, _) = records();
    let p = k.client.preset();
    let m = FloatMoeModel::load(switch()).unwrap();
    let opts = QuantizeOptions {
        calibrated_headroom: None,
        ..QuantizeOptions::for_reads(p.message_bits, p.max_norm2)
    };
    let q = quantize_with(&m, &opts, &calib).unwrap().0;
    assert!(q.moe.output_digits.is_some());
    let (entries, _) =
        common::capacity::check_capacity_model(&k.client, &k.server, q.moe, 3, vec![1; 8], 5);
    assert_eq!(entries, 3);
}

/// The measurement BENCHMARKS.md quotes (`common::encrypted_fidelity`): each family quantized
/// for `preset` with pairwise routing, W2 in one piece and in two digits, `tokens` held-out
/// records encrypted.
fn digits_fidelity_on(preset: &str, tokens: usize) {
    digits_fidelity_of(
        preset,
        tokens,
        &common::hf_families::families(),
        &[false, true],
    );
}

/// [`digits_fidelity_on`] for some families, with W2 in one piece and / or in two digits.
fn digits_fidelity_of(
    preset: &str,
    tokens: usize,
    families: &[(&str, std::path::PathBuf)],
    digit_choices: &[bool],
) {
    let variants = |p: &veilmoe::engine::Preset| {
        digit_choices
            .iter()
            .map(|&digits| {
                let opts = QuantizeOptions {
                    pairwise_routing: true,
                    output_digits: digits,
                    ..QuantizeOptions::for_reads(p.message_bits, p.max_norm2)
                };
                (format!("W2 digits {digits}"), opts)
            })
            .collect()
    };
    common::encrypted_fidelity::encrypted_fidelity(preset, tokens, families, &variants);
}

#[test]
#[ignore = "`fine` keys and 3 x 2 x 6 encrypted tokens (minutes)"]
fn digits_fidelity_on_fine() {
    digits_fidelity_on("fine", 6);
}

#[test]
#[ignore = "`default` keys and 3 x 2 x 6 encrypted tokens (minutes)"]
fn digits_fidelity_on_default() {
    digits_fidelity_on("default", 6);
}

/// The measure for the Switch checkpoint: all 300 held-out records encrypted on `fine`
/// (about 18 minutes on 2 cores).
#[test]
#[ignore = "`fine` keys and 300 encrypted tokens (about 18 minutes)"]
fn switch_over_300_records_on_fine() {
    digits_fidelity_of("fine", 300, &[("Switch", switch())], &[true]);
}
