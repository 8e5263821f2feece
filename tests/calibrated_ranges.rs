//! Calibrated ranges (issue 13 item 3) on the `test` preset: a model whose first-stage reads
//! are finer, and whose output encoding narrower, than its worst case allows runs encrypted,
//! equals the reference on every token whose values stay in their boxes, and a token that
//! overflows runs to the end (its output is meaningless, as documented) and is counted by
//! `QuantizedMoe::overflows`. The engine refuses such rows unless their range is declared.

mod common;

use common::calibrated::{calibrated, overflowing_input};
use common::wide::check_token;
use common::{small_config, test_keys, Rng};
use rayon::prelude::*;
use veilmoe::engine::{Cols, Encoding, Evaluator, PackedWeights, Rows, ValueRange, WeightMatrix};
use veilmoe::model::{Activation, FfnKind, Gating, QuantParams, QuantizedMoe, Rounding};
use veilmoe::protocols::{ComputeAll, ExpertStrategy, MoeLayer, Select};

#[test]
fn the_engine_takes_a_declared_range_in_place_of_the_worst_case() {
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let p = k.client.preset();
    // worst case 4 * 7 * 8 = 224 does not fit 8 signed bits; the inputs used reach 4 * 7 * 2
    let w = WeightMatrix::new(Rows(2), Cols(4), vec![7, 7, 7, 7, -7, 7, -7, 7]).unwrap();
    let enc = Encoding::signed(8);
    let x = vec![2i64, 2, -1, 1];
    let ct = k.client.encrypt_packed(&x, enc).unwrap();
    let plain = PackedWeights::new(p, w.clone());
    let input_range = ValueRange { min: -8, max: 7 };
    let ct = ct.with_range(input_range).unwrap();
    let refused = ev.packed_products(&plain, None, &ct);
    assert!(refused.is_err(), "the worst case must be refused");
    let declared = PackedWeights::new(
        p,
        w.clone()
            .with_declared_range(ValueRange {
                min: -128,
                max: 127,
            })
            .unwrap(),
    );
    let rows = ev.packed_products(&declared, None, &ct).unwrap();
    let y = k
        .client
        .decrypt_lwe(&ev.extract_rows(&rows).unwrap())
        .unwrap();
    assert_eq!(y, w.apply_plain(&x, None));
    // a declared range must hold 0
    assert!(w
        .with_declared_range(ValueRange { min: 1, max: 127 })
        .is_err());
}

/// Every strategy and gating on a model read one bit finer than its worst case: tokens within
/// the read box match the reference (every check of `check_token`), the overflowing token runs.
#[test]
fn a_calibrated_model_matches_the_reference_within_its_read_box() {
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let cases = [
        (
            small_config(4, 2, FfnKind::GatedSilu, Gating::SoftmaxSelected),
            None,
            &Select as &dyn ExpertStrategy,
        ),
        (
            small_config(
                4,
                1,
                FfnKind::Plain(Activation::Relu),
                Gating::SoftmaxThenTopK,
            ),
            None,
            &ComputeAll,
        ),
        (
            small_config(2, 1, FfnKind::GatedSilu, Gating::SoftmaxThenTopK),
            Some(6),
            &Select,
        ),
    ];
    for (i, (cfg, shared, strategy)) in cases.into_iter().enumerate() {
        let seed = 40 + i as u64;
        let mut model = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), seed, true);
        if let Some(hs) = shared {
            model = model.with_random_shared(hs, seed);
        }
        let model = calibrated(model, 1, 1);
        let layer = MoeLayer::new(&ev, model.clone()).expect("a declared range is accepted");
        let mut rng = Rng::new(seed);
        let (lo, hi) = (model.quant.input_min(), model.quant.input_max());
        let mut inputs: Vec<Vec<i64>> = (0..16).map(|_| rng.vec(4, lo / 2, hi / 2)).collect();
        inputs.push(overflowing_input(&model));
        let results: Vec<(bool, bool)> = inputs
            .par_iter()
            .map(|x| {
                let out = layer
                    .forward(&ev, &layer.encrypt(&k.client, x).unwrap(), strategy)
                    .expect("an overflowing token still runs");
                let y = out.decrypt_y(&k.client).expect("and decrypts");
                let overflows = model.overflows(x) > 0;
                if !overflows {
                    check_token(&k.client, &model, x, &out);
                }
                let exact = y == model.reference(x, &mut Rounding::Exact).y;
                (overflows, exact)
            })
            .collect();
        let within = results.iter().filter(|(o, _)| !o).count();
        let exact = results.iter().filter(|(o, x)| !o && *x).count();
        eprintln!(
            "case {i}: {within} of {} tokens within the read box, {exact} of them exactly the reference",
            results.len()
        );
        assert!(results.last().unwrap().0, "the crafted input overflows");
        assert!(within >= 8, "most half-range tokens stay in the box");
    }
}

/// The shift is part of the model: a calibrated model encrypts its input at the narrower
/// width, and validation bounds the declared shift.
#[test]
fn the_calibrated_shift_sets_the_input_width_and_is_validated() {
    let model = QuantizedMoe::random(
        small_config(4, 2, FfnKind::GatedSilu, Gating::SoftmaxSelected),
        QuantParams::for_message_bits(4),
        3,
        true,
    );
    let worst = model.input_width();
    let cal = calibrated(model.clone(), 2, 1);
    assert_eq!(cal.input_width(), worst - 2);
    assert_eq!(cal.input_shift(), model.input_shift() - 2);
    assert_eq!(cal.expert_output_width(), model.expert_output_width() - 1);
    let bad = QuantizedMoe {
        calibrated_shift: Some(veilmoe::model::quantized::MAX_CALIBRATED_SHIFT + 1),
        ..model.clone()
    };
    assert!(bad.validate().is_err());
    // the hidden activations share the outputs' encoding: it must hold them
    let narrow = QuantizedMoe {
        calibrated_output_width: Some(2),
        ..model
    };
    assert!(narrow.validate().is_err());
}
