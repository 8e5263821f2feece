//! The FFT packing keyswitch (`engine/src/packing.rs`) on the `test` preset: PBS outputs packed
//! into GLWE coefficients decrypt to their values, the added noise stays within the model, and
//! a packed product over packed PBS outputs equals the LWE product it replaces.

mod common;

use common::noise::torus_error;
use common::{test_keys, Rng};
use veilmoe::engine::{
    noise, Cols, Encoding, Evaluator, Lut, LweVector, OpKind, PackedWeights, Rows, ValueRange,
    WeightMatrix,
};

/// PBS outputs `x^2` in `out` (big key), from 3-bit inputs.
fn squares_in(ev: &Evaluator, xs: &[i64], out: Encoding) -> LweVector {
    let k = test_keys();
    let p = k.client.preset();
    let ct = k.client.encrypt_lwe(xs, Encoding::unsigned(3)).unwrap();
    let lut = Lut::univariate(p, Encoding::unsigned(3), out, |v| v * v).unwrap();
    ev.pbs(&ct, &lut).unwrap()
}

/// Squares of `0..=7` in 6 bits: on `test` an 8-bit PBS output is read wrong now and then (its
/// noise is a few sigma from half an 8-bit step), which is not what these tests measure.
fn squares_of(ev: &Evaluator, xs: &[i64]) -> LweVector {
    squares_in(ev, xs, Encoding::unsigned(6))
}

#[test]
fn packing_keyswitch_repacks_pbs_outputs() {
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let n = k.client.preset().glwe.polynomial_size;
    let mut rng = Rng::new(7);
    // 30 values (one GLWE, most coefficients empty) and N + 5 (a full GLWE and a second one)
    for count in [30, n + 5] {
        let xs = rng.vec(count, 0, 7);
        let packed = ev.pack(&squares_of(&ev, &xs)).unwrap();
        let expect: Vec<i64> = xs.iter().map(|v| v * v).collect();
        assert_eq!(k.client.decrypt_packed(&packed).unwrap(), expect);
    }
    // counted per output GLWE: 1 + 2
    assert_eq!(ev.ops().total(OpKind::PackingKeyswitch), 3);
}

/// The packed phases against the inputs' own phases: the error is what the keyswitch added.
/// Over 8 packs of 64 PBS outputs, its mean square stays within [1/8, 1] of the model's
/// per-coefficient expectation (the FFT's rounding, tfhe's fit with its margin, is most of it).
#[test]
fn packing_keyswitch_noise_matches_the_model() {
    let k = test_keys();
    let p = k.client.preset();
    let ev = Evaluator::new(&k.server);
    let mut rng = Rng::new(11);
    let count = 64;
    let mut squares = Vec::new();
    for _ in 0..8 {
        let y = squares_of(&ev, &rng.vec(count, 0, 7));
        let inputs = k.client.decrypt_lwe_phases(&y).unwrap();
        let phases = k
            .client
            .decrypt_packed_phases(&ev.pack(&y).unwrap())
            .unwrap();
        for (phase, input) in phases.iter().zip(&inputs) {
            squares.push(torus_error(*phase, *input).powi(2));
        }
    }
    let mean = squares.iter().sum::<f64>() / squares.len() as f64;
    let model = noise::packing_keyswitch_coefficient_variance(p, count);
    eprintln!(
        "packing noise {mean:.3e}, model {model:.3e}: {:.3}",
        mean / model
    );
    assert!(
        (0.125..=1.0).contains(&(mean / model)),
        "measured {mean:e}, model {model:e}"
    );
}

/// A second stage through the packing (W over the packed PBS outputs, one product per row
/// group) has the phases of the LWE product it replaces, up to the packing's noise times the
/// row norm (about 1e-12 on `test`, where a PBS output's own noise is about 1e-6).
#[test]
fn packed_product_over_packed_pbs_outputs() {
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let p = k.client.preset();
    let mut rng = Rng::new(13);
    let (d, h) = (16, 24);
    let a = squares_in(&ev, &rng.vec(h, 0, 3), Encoding::signed(11))
        .with_range(ValueRange::new(0, 9).unwrap())
        .unwrap();
    let w = WeightMatrix::new(Rows(d), Cols(h), rng.vec(d * h, -3, 3)).unwrap();
    let bias = rng.vec(d, -5, 5);
    let lwe = ev.lwe_matvec(&w, Some(&bias), &a).unwrap();
    let packed = ev.pack(&a).unwrap();
    let rows = ev
        .packed_products(&PackedWeights::new(p, w), Some(&bias), &packed)
        .unwrap();
    let extracted = ev.extract_rows(&rows).unwrap();
    let lwe_phases = k.client.decrypt_lwe_phases(&lwe).unwrap();
    let packed_phases = k.client.decrypt_lwe_phases(&extracted).unwrap();
    for (x, y) in lwe_phases.iter().zip(&packed_phases) {
        let diff = torus_error(*x, *y).abs();
        assert!(diff < 1e-5, "packed product off by {diff:e} of the torus");
    }
    assert!(extracted.variance() > lwe.variance());
    assert!(extracted.variance() < lwe.variance() * 1.01);
}
