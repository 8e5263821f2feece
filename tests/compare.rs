//! Comparisons of wide values by the sign of their difference (`Evaluator::greater_than`) on
//! the `test` preset: decided as `a > b` beyond the noise margin over the whole range of
//! differences the torus holds, and wrong near the threshold as often as the noise model says.

mod common;

use common::{test_keys, Rng};
use veilmoe::engine::{Encoding, Evaluator, OpKind, ValueRange};

/// `values` encrypted in `enc` under the test keys, declared within `range`.
fn encrypt_within(values: &[i64], enc: Encoding, range: ValueRange) -> veilmoe::engine::LweVector {
    test_keys()
        .client
        .encrypt_lwe(values, enc)
        .unwrap()
        .with_range(range)
        .unwrap()
}

/// Comparisons of wide values by the sign of their difference: every pair further from the
/// threshold than the noise margin is decided as `a > b` (ties give 0), over the whole range of
/// differences the torus holds, including both extremes; the near ties are counted, not judged.
#[test]
fn greater_than_decides_by_the_sign_of_the_difference() {
    use veilmoe::engine::compare::comparison_margin;
    let k = test_keys();
    let p = k.client.preset();
    let ev = Evaluator::new(&k.server);
    let mut rng = Rng::new(41);
    for width in [8u32, 12, 20] {
        let enc = Encoding::signed(width);
        // 15/16 of the encoding: the differences span 15/16 of the torus, within the margin
        let top = (1i64 << (width - 1)) / 16 * 15;
        let mut a: Vec<i64> = vec![top, -top, 0, 0, 5, 6, top, -top];
        let mut b: Vec<i64> = vec![-top, top, 0, 1, 6, 5, top, -top];
        for _ in 0..56 {
            let x = rng.range(-top, top);
            // a third of the pairs within a few units of each other
            let y = if rng.range(0, 2) == 0 {
                (x + rng.range(-3, 3)).clamp(-top, top)
            } else {
                rng.range(-top, top)
            };
            a.push(x);
            b.push(y);
        }
        let range = ValueRange::new(-top, top).unwrap();
        let (ca, cb) = (
            encrypt_within(&a, enc, range),
            encrypt_within(&b, enc, range),
        );
        let before = ev.ops().total(OpKind::Pbs);
        let bits = ev.greater_than(&ca, &cb, Encoding::signed(4)).unwrap();
        assert_eq!(ev.ops().total(OpKind::Pbs) - before, a.len() as u64);
        assert_eq!(bits.range(), ValueRange::new(0, 1).unwrap());
        let got = k.client.decrypt_lwe(&bits).unwrap();
        let margin = comparison_margin(p, ca.variance() + cb.variance());
        let step = 2f64.powi(-(width as i32) - 1);
        let mut near = 0;
        for i in 0..a.len() {
            let d = a[i] - b[i];
            if ((d as f64 - 0.5).abs() * step) < margin {
                near += 1;
                assert!(got[i] == 0 || got[i] == 1);
                continue;
            }
            assert_eq!(got[i], (d > 0) as i64, "width {width}: {} > {}", a[i], b[i]);
        }
        println!(
            "width {width}: {near} of {} pairs within the margin",
            a.len()
        );
    }
    // differences whose sign could wrap (the whole encoding on both sides) are refused
    let enc = Encoding::signed(8);
    let wide = ValueRange::new(-128, 127).unwrap();
    let x = k
        .client
        .encrypt_lwe(&[127], enc)
        .unwrap()
        .with_range(wide)
        .unwrap();
    let y = k
        .client
        .encrypt_lwe(&[-128], enc)
        .unwrap()
        .with_range(wide)
        .unwrap();
    assert!(ev.greater_than(&x, &y, Encoding::signed(4)).is_err());
}

/// The comparison's noise model against its measured error rate: pairs whose difference sits
/// 1.5 modelled standard deviations from the threshold, on either side, are decided wrongly
/// about Phi(-1.5) = 6.7 % of the time (the model's variance at the blind rotation, which the
/// PBS noise tests also check); the count must fall within [0.4, 2.2] of the model's (a
/// binomial of ~70 is 4 standard deviations inside that band).
#[test]
fn greater_than_error_rate_matches_the_noise_model() {
    let k = test_keys();
    let p = k.client.preset();
    let ev = Evaluator::new(&k.server);
    let enc = Encoding::signed(16);
    let range = ValueRange::new(-4000, 4000).unwrap();
    let mut rng = Rng::new(43);
    let n = 1024;
    let probe = k.client.encrypt_lwe(&[0], enc).unwrap();
    let sigma =
        veilmoe::engine::noise::variance_at_blind_rotation(p, 2.0 * probe.variance()).sqrt();
    let step = 2f64.powi(-17);
    let t = 1.5;
    let off = (t * sigma / step).round() as i64;
    let (mut a, mut b, mut want) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let x = rng.range(-3000, 3000);
        // d - 1/2 = +-off: d = off + 1 (a > b) or d = 1 - off (a < b)
        let d = if i % 2 == 0 { off + 1 } else { 1 - off };
        a.push(x);
        b.push(x - d);
        want.push((d > 0) as i64);
    }
    let (ca, cb) = (
        encrypt_within(&a, enc, range),
        encrypt_within(&b, enc, range),
    );
    let got = k
        .client
        .decrypt_lwe(&ev.greater_than(&ca, &cb, Encoding::signed(4)).unwrap())
        .unwrap();
    let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    let z = (off as f64 - 0.5) * step / sigma;
    let expected = n as f64
        * 0.5
        * 2f64.powf(veilmoe::engine::noise::log2_erfc(
            z / std::f64::consts::SQRT_2,
        ));
    println!("{wrong} wrong of {n}, the model expects {expected:.1} (z = {z:.3})");
    let ratio = wrong as f64 / expected;
    assert!(
        (0.4..=2.2).contains(&ratio),
        "{wrong} wrong, expected {expected:.1}"
    );
}
