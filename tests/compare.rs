//! Comparisons of wide values by the sign of their difference (`Evaluator::greater_than`) on
//! the `test` preset: decided as `a > b` beyond the refined noise margin over the whole range of
//! differences the torus holds (near ties one sign read would decide either way included), and
//! wrong near the threshold as often as the noise model says.

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
/// threshold than the refined margin is decided as `a > b` (ties give 0), over the whole range
/// of differences the torus holds, including both extremes and a band of differences inside
/// one sign read's margin (which it would decide either way); the near ties are counted, not
/// judged. Three PBS per pair.
#[test]
fn greater_than_decides_by_the_sign_of_the_difference() {
    use veilmoe::engine::compare::{comparison_margin, comparison_refinement, decision_margin};
    let k = test_keys();
    let p = k.client.preset();
    let ev = Evaluator::new(&k.server);
    let mut rng = Rng::new(41);
    let mut coarse_near_decided = 0;
    for width in [8u32, 12, 20] {
        let enc = Encoding::signed(width);
        let step = 2f64.powi(-(width as i32) - 1);
        // 7/8 of the encoding: the differences span 7/8 of the torus, within the thresholds
        // and the margin
        let top = (1i64 << (width - 1)) / 8 * 7;
        let mut a: Vec<i64> = vec![top, -top, 0, 0, 5, 6, top, -top];
        let mut b: Vec<i64> = vec![-top, top, 0, 1, 6, 5, top, -top];
        let probe = k.client.encrypt_lwe(&[0], enc).unwrap();
        let var = 2.0 * probe.variance();
        let (coarse, fine) = (comparison_margin(p, var), decision_margin(p, var));
        // differences between twice the refined margin and a quarter of the coarse one (1.1 to
        // 2.3 standard deviations of one sign read), both signs
        let (lo, hi) = (
            (2.0 * fine / step).ceil() as i64 + 1,
            (coarse / step / 4.0).floor() as i64,
        );
        for i in 0..48 {
            let x = rng.range(-top / 2, top / 2);
            let y = match i % 3 {
                0 => (x + rng.range(-3, 3)).clamp(-top, top),
                1 if lo < hi => x + rng.range(lo, hi) * if i % 2 == 0 { 1 } else { -1 },
                _ => rng.range(-top, top),
            };
            a.push(x);
            b.push(y);
        }
        let range = ValueRange::new(-top, top).unwrap();
        let (ca, cb) = (
            encrypt_within(&a, enc, range),
            encrypt_within(&b, enc, range),
        );
        assert!(comparison_refinement(p, ca.variance() + cb.variance()).is_some());
        let before = ev.ops().total(OpKind::Pbs);
        let bits = ev.greater_than(&ca, &cb, Encoding::signed(4)).unwrap();
        assert_eq!(ev.ops().total(OpKind::Pbs) - before, 3 * a.len() as u64);
        assert_eq!(bits.range(), ValueRange::new(0, 1).unwrap());
        let got = k.client.decrypt_lwe(&bits).unwrap();
        let mut near = 0;
        for i in 0..a.len() {
            let d = a[i] - b[i];
            let x = (d as f64 - 0.5).abs() * step;
            if x < fine {
                near += 1;
                assert!(got[i] == 0 || got[i] == 1);
                continue;
            }
            assert_eq!(got[i], (d > 0) as i64, "width {width}: {} > {}", a[i], b[i]);
            coarse_near_decided += (x < coarse) as usize;
        }
        println!(
            "width {width}: {near} of {} pairs within the margin",
            a.len()
        );
    }
    // one sign read would have decided these either way
    assert!(coarse_near_decided >= 30, "{coarse_near_decided}");
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
/// 1.5 modelled standard deviations of the refined decision from the threshold, on either side,
/// are decided wrongly about Phi(-1.5) = 6.7 % of the time (the model's variance at the blind
/// rotation of the scaled difference, which the PBS noise tests also check, over the scale);
/// the count must fall within [0.4, 2.2] of the model's (a binomial of ~70 is 4 standard
/// deviations inside that band).
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
    let sigma = veilmoe::engine::compare::decision_std(p, 2.0 * probe.variance());
    let step = 2f64.powi(-17);
    let t = 1.5;
    let off = (t * sigma / step).round() as i64;
    assert!(off >= 8, "the refined deviation is {off} units");
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
