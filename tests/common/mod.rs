//! Shared test fixtures: one key set per test binary (key generation is the expensive part).
#![allow(dead_code)]

pub mod calibrated;
pub mod capacity;
pub mod checkpoints;
pub mod encrypted_fidelity;
pub mod hf_families;
pub mod noise;
pub mod pool;
pub mod wide;

use std::sync::OnceLock;
use veilmoe::engine::{ClientKey, Preset, ServerKey};
use veilmoe::model::{
    ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, QuantizedMoe, TopK,
};

/// The value of decrypted bits, least significant first (index bits, gate bits).
pub fn from_bits(bits: &[i64]) -> i64 {
    bits.iter().enumerate().map(|(b, &v)| v << b).sum()
}

pub struct Keys {
    pub client: ClientKey,
    pub server: ServerKey,
}

/// Keys on the insecure `test` preset, generated once per test binary.
pub fn test_keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let preset = Preset::load("test", true).expect("test preset");
        let client = ClientKey::generate(&preset);
        let server = client.server_key();
        Keys { client, server }
    })
}

/// A layer of d = h = 4 (small enough for hundreds of encrypted tokens on `test`).
pub fn small_config(e: usize, k: usize, ffn: FfnKind, gating: Gating) -> MoeConfig {
    MoeConfig {
        d: ModelDim(4),
        h: HiddenDim(4),
        experts: ExpertCount(e),
        top_k: TopK(k),
        ffn,
        gating,
    }
}

/// Deterministic xorshift generator for test inputs (not for crypto).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [lo, hi] (inclusive).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    pub fn vec(&mut self, n: usize, lo: i64, hi: i64) -> Vec<i64> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }
    /// `n` calibration records of `d` features in [-1, 1] (steps of 0.001), for quantizing a
    /// random float model.
    pub fn unit_records(&mut self, n: usize, d: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|_| self.range(-1000, 1000) as f32 / 1000.0)
                    .collect()
            })
            .collect()
    }
}

/// Replaces the first stage (router, W1, W3) by rows with a single weight 1 and no bias: every
/// first-stage accumulator is then an input value, read whole (input shift 0), so every read of
/// the layer is exact: the encrypted routing equals the reference's, and a slot's output equals
/// its input's reference up to ciphertext noise alone.
pub fn exact_first_stage(moe: &mut QuantizedMoe, seed: u64) {
    let (d, h, e) = (moe.config.d.0, moe.config.h.0, moe.config.experts.0);
    let mut rng = Rng::new(seed);
    let mut unit_rows = |rows: usize| -> Vec<i64> {
        let mut w = vec![0; rows * d];
        for r in 0..rows {
            w[r * d + rng.range(0, d as i64 - 1) as usize] = 1;
        }
        w
    };
    moe.router = unit_rows(e);
    moe.router_bias = None;
    for x in &mut moe.experts {
        x.w1 = unit_rows(h);
        x.b1 = None;
        if x.w3.is_some() {
            x.w3 = Some(unit_rows(h));
            x.b3 = None;
        }
    }
    assert_eq!(moe.input_shift(), 0, "the first stage must be read whole");
}
