//! Measured noise of PBS outputs and CMUX outputs, for the tests that hold the noise model
//! (engine/src/noise.rs) against reality on a preset.

use super::Rng;
use veilmoe::engine::{ClientKey, Encoding, Evaluator, GgswBit, Lut, ServerKey};

/// `count` circuit-bootstrapped GGSWs of 1 (the worst case for the noise of what they select).
pub fn ggsws_of_one(ev: &Evaluator, client: &ClientKey, count: usize) -> Vec<GgswBit> {
    let bits = client
        .encrypt_bits(&vec![1; count], Encoding::unsigned(4))
        .unwrap();
    ev.circuit_bootstrap(&bits).unwrap()
}

/// Mean squared error of CMUX outputs through 64 circuit-bootstrapped GGSWs of 1, each
/// selecting between its own fresh pair of packed ciphertexts, and the model's variance. The
/// noise has a random scale per GGSW (outputs of one GGSW vary together: with 16 GGSWs the mean
/// over a key set's 16,384 coefficients still ranged 0.75-1.04 of the bound over repeated runs,
/// alike within and across key sets), so the mean is taken over many GGSWs, not coefficients.
pub fn measured_cmux_variance(client: &ClientKey, server: &ServerKey, seed: u64) -> (f64, f64) {
    let ev = Evaluator::new(server);
    let n = client.preset().glwe.polynomial_size;
    let mut rng = Rng::new(seed);
    let enc = Encoding::unsigned(8);
    let ggsw = ggsws_of_one(&ev, client, 64);
    let (mut sum, mut count, mut model) = (0.0f64, 0.0f64, 0.0f64);
    for g in &ggsw {
        let a = rng.vec(n, 0, 255);
        let b = rng.vec(n, 0, 255);
        let ca = client.encrypt_packed(&a, enc).unwrap();
        let cb = client.encrypt_packed(&b, enc).unwrap();
        let sel = ev.cmux_tree(std::slice::from_ref(g), &[ca, cb]).unwrap();
        model = sel.variance();
        for (phase, &v) in client.decrypt_packed_phases(&sel).unwrap().iter().zip(&b) {
            let err = phase.wrapping_sub(enc.encode(v).unwrap()) as i64 as f64 / 2f64.powi(64);
            sum += err * err;
            count += 1.0;
        }
    }
    (sum / count, model)
}

/// Mean squared error of `count` PBS outputs (the identity on random values of the preset's
/// signed encoding) and the model's `pbs_output_variance`. A PBS output's noise is a sum over
/// the whole blind rotation, so unlike a CMUX's it has no per-key scale to average over.
pub fn measured_pbs_output_variance(
    client: &ClientKey,
    server: &ServerKey,
    count: usize,
    seed: u64,
) -> (f64, f64) {
    let p = client.preset();
    let ev = Evaluator::new(server);
    let enc = Encoding::signed(p.message_bits);
    let lut = Lut::univariate(p, enc, enc, |v| v).unwrap();
    let mut rng = Rng::new(seed);
    let xs = rng.vec(count, enc.min(), enc.max());
    let out = ev
        .pbs(&client.encrypt_lwe(&xs, enc).unwrap(), &lut)
        .unwrap();
    let sum: f64 = client
        .decrypt_lwe_phases(&out)
        .unwrap()
        .iter()
        .zip(&xs)
        .map(|(phase, &v)| {
            let err = phase.wrapping_sub(enc.encode(v).unwrap()) as i64 as f64 / 2f64.powi(64);
            err * err
        })
        .sum();
    (
        sum / count as f64,
        veilmoe::engine::noise::pbs_output_variance(p),
    )
}
