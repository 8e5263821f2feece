//! The integer semantics of a quantized MoE layer, in one place.
//!
//! Every lookup table of the encrypted path and every step of the plaintext reference is built
//! from these functions, so the two cannot drift apart. Values read by a PBS live in the
//! preset's signed `m`-bit domain `[-2^(m-1), 2^(m-1))` (`m = message_bits`).

/// Rounds `a / 2^shift` to the nearest integer, halves upwards: the value a PBS box centred on
/// `q * 2^shift` returns. Near a box edge the encrypted path may return the neighbour
/// ("approximate rounding"); see [`crate::reference::Rounding`].
pub fn round_shift(a: i64, shift: u32) -> i64 {
    if shift == 0 {
        a
    } else {
        (a + (1i64 << (shift - 1))) >> shift
    }
}

/// Pointwise activation of an expert FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    Silu,
}

impl Activation {
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            // tanh approximation, as GPT-2 style checkpoints use
            Activation::Gelu => {
                0.5 * x
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
            }
            Activation::Silu => x / (1.0 + (-x).exp()),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
        }
    }
}

/// `clamp(round(act(q * in_scale) / out_scale), lo, hi)`: the activation table of one hidden
/// unit, from the requantized pre-activation `q`.
pub fn activation_table(
    act: Activation,
    q: i64,
    in_scale: f64,
    out_scale: f64,
    lo: i64,
    hi: i64,
) -> i64 {
    let v = (act.apply(q as f64 * in_scale) / out_scale).round() as i64;
    v.clamp(lo, hi)
}

/// Quarter-square product tables: `a * b = qsq(a + b) - qsq(a - b)` exactly for integers,
/// because `a + b` and `a - b` have the same parity.
pub fn quarter_square(s: i64) -> i64 {
    (s * s).div_euclid(4)
}

/// Logistic sigmoid.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Mixtral top-2 gate of the first slot: `round(G * sigmoid(delta * logit_scale))` where
/// `delta = v1 - v2 >= 0`; the second slot gets `G - g1`.
pub fn mixtral_gate(delta: i64, logit_scale: f64, g_max: i64) -> i64 {
    ((g_max as f64) * sigmoid(delta as f64 * logit_scale)).round() as i64
}

/// Switch/Qwen (softmax over all experts, then top-k) term of expert `j` for a slot whose logit
/// is `v`: `min(round(S * exp((l_j - v) * logit_scale)), cap)`.
pub fn switch_term(diff: i64, logit_scale: f64, s: i64, cap: i64) -> i64 {
    ((s as f64 * (diff as f64 * logit_scale).exp()).round() as i64).min(cap)
}

/// Switch/Qwen gate from the requantized partition sum `zq = round(Z / 2^shift)`:
/// `clamp(round(G * S / (zq * 2^shift)), 0, G)` (G when `zq = 0`).
pub fn switch_gate(zq: i64, shift: u32, s: i64, g_max: i64) -> i64 {
    if zq <= 0 {
        return g_max;
    }
    let z = (zq as f64) * 2f64.powi(shift as i32);
    ((g_max as f64 * s as f64 / z).round() as i64).clamp(0, g_max)
}

/// Bits needed by a signed encoding whose PBS reads `m` bits, so that every value of
/// `[lo, hi]` falls well inside the boxes `[-2^(m-1), 2^(m-1) - 1]` after the shift
/// `width - m` (the top box keeps half a box of headroom against noise).
pub fn read_width(lo: i128, hi: i128, m: u32) -> u32 {
    let top = (1i128 << (m - 1)) - 1;
    let bottom = 1i128 << (m - 1);
    let mut w = m;
    while hi > top << (w - m) || -lo > bottom << (w - m) {
        w += 1;
    }
    w
}

/// Bits of a signed encoding holding `[lo, hi]` exactly (no PBS reads it).
pub fn hold_width(lo: i128, hi: i128) -> u32 {
    let mut w = 1;
    while hi > (1i128 << (w - 1)) - 1 || -lo > 1i128 << (w - 1) {
        w += 1;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarter_squares_multiply_exactly() {
        for a in -8..8 {
            for b in -8..8 {
                assert_eq!(quarter_square(a + b) - quarter_square(a - b), a * b);
            }
        }
    }

    #[test]
    fn round_shift_rounds_half_up() {
        assert_eq!(round_shift(7, 2), 2);
        assert_eq!(round_shift(6, 2), 2);
        assert_eq!(round_shift(5, 2), 1);
        assert_eq!(round_shift(-6, 2), -1);
        assert_eq!(round_shift(-7, 2), -2);
    }

    #[test]
    fn widths_leave_headroom() {
        assert_eq!(read_width(-8, 7, 4), 4);
        assert_eq!(read_width(-8, 8, 4), 5);
        assert_eq!(hold_width(-8, 7), 4);
        assert_eq!(hold_width(0, 8), 5);
    }
}
