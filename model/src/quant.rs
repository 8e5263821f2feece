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

/// Mixtral top-2 gate of the first slot: `round(G * sigmoid(delta * logit_scale))` where
/// `delta = v1 - v2 >= 0`; the second slot gets `G - g1`.
pub fn mixtral_gate(delta: i64, logit_scale: f64, g_max: i64) -> i64 {
    ((g_max as f64) * crate::math::sigmoid(delta as f64 * logit_scale)).round() as i64
}

/// Qwen2-MoE shared-expert gate from the gate row's requantized read `q`:
/// `round(G * sigmoid(q * gate_scale))`.
pub fn shared_gate(q: i64, gate_scale: f64, g_max: i64) -> i64 {
    ((g_max as f64) * crate::math::sigmoid(q as f64 * gate_scale)).round() as i64
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
    box_width(lo, hi, m, (-(1i64 << (m - 1)), (1i64 << (m - 1)) - 1))
}

/// Bits of a signed encoding whose `m`-bit reads take every value of `[lo, hi]` within the
/// boxes `[box_min, box_max]` (a read box, or a narrower one).
pub fn box_width(lo: i128, hi: i128, m: u32, (box_min, box_max): (i64, i64)) -> u32 {
    let mut w = m;
    while hi > (box_max as i128) << (w - m) || lo < (box_min as i128) << (w - m) {
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

/// Largest input width a model may declare (the encrypted input's encoding adds the read
/// shift to it and must stay far inside 64-bit words).
pub const MAX_INPUT_BITS: u32 = 16;

/// Public quantization parameters (see [`crate::quant`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantParams {
    /// Bits a PBS reads exactly (at most the preset's message bits; fewer leaves wider boxes).
    pub message_bits: u32,
    /// Bits of the client's quantized input, at least `message_bits`: no PBS reads an input
    /// (the first stage is a leveled product), so a wider input costs only a wider encoding,
    /// and the first-stage weights keep their precision (the read shift grows with it).
    pub input_bits: u32,
    /// Zero point added to the requantized router output before clipping to the logit range.
    pub logit_zero_point: i64,
    /// Real value of one logit step (softmax temperature).
    pub logit_scale: f64,
    /// Real value of one step of a requantized pre-activation.
    pub act_in_scale: f64,
    /// Real value of one step of an activation output.
    pub act_out_scale: f64,
    /// Gate bits: gates are integers in [0, 2^gate_bits - 1] standing for [0, 1]. Encrypted gates
    /// multiply the slot outputs bit by bit (a circuit bootstrap and an external product per
    /// bit), and the client adds the terms `2^b * term_b`, each decrypted at its own encoding.
    pub gate_bits: u32,
    /// Switch gating: the selected expert's own softmax term (numerator).
    pub switch_numerator: i64,
    /// Reads of each pre-activation (1, 2 or 4): the activation (a gated FFN's silu factor) is
    /// the sum of the tables at `K` reads offset by fractions of a box
    /// ([`QuantParams::activation_offsets`]). By Hermite's identity `sum_k round(x + (2k + 1 -
    /// K) / 2K) = round(K x)`, so `K` reads of a linear piece resolve it `log2 K` bits finer
    /// than one, each read keeping the preset's noise margin (a single finer read would not).
    /// Costs `K - 1` more PBS per hidden unit (gated: `3 (K - 1)`, each read's product).
    pub activation_reads: u32,
}

/// Values [`QuantParams::activation_reads`] may take.
pub const ACTIVATION_READS: [u32; 3] = [1, 2, 4];

impl QuantParams {
    pub fn for_message_bits(message_bits: u32) -> QuantParams {
        QuantParams {
            message_bits,
            input_bits: message_bits,
            logit_zero_point: 3,
            logit_scale: 0.5,
            act_in_scale: 0.5,
            act_out_scale: 0.5,
            gate_bits: 3,
            switch_numerator: 4,
            activation_reads: 1,
        }
    }
    /// Checks that the parameters describe a model veilmoe can evaluate: 3 to 8 message bits,
    /// 1 to 6 gate bits, finite positive scales, a logit zero point and Switch numerator inside
    /// their ranges. Every shift below relies on these bounds.
    pub fn validate(&self) -> Result<(), crate::ModelError> {
        let bad = |m: String| Err(crate::ModelError::Config(m));
        if !(3..=8).contains(&self.message_bits) {
            return bad(format!(
                "message bits must be 3 to 8, got {}",
                self.message_bits
            ));
        }
        if !(self.message_bits..=MAX_INPUT_BITS).contains(&self.input_bits) {
            return bad(format!(
                "input bits must be {} (the message bits) to {MAX_INPUT_BITS}, got {}",
                self.message_bits, self.input_bits
            ));
        }
        if !ACTIVATION_READS.contains(&self.activation_reads) {
            return bad(format!(
                "activation reads must be one of {ACTIVATION_READS:?}, got {}",
                self.activation_reads
            ));
        }
        if !(1..=6).contains(&self.gate_bits) {
            return bad(format!("gate bits must be 1 to 6, got {}", self.gate_bits));
        }
        for (name, v) in [
            ("logit scale", self.logit_scale),
            ("activation input scale", self.act_in_scale),
            ("activation output scale", self.act_out_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} must be positive and finite, got {v}"));
            }
        }
        if self.logit_zero_point.unsigned_abs() > 1 << 16 {
            return bad(format!(
                "logit zero point {} is out of range",
                self.logit_zero_point
            ));
        }
        if !(0..=self.switch_cap()).contains(&self.switch_numerator) {
            return bad(format!(
                "Switch numerator {} is outside [0, {}]",
                self.switch_numerator,
                self.switch_cap()
            ));
        }
        Ok(())
    }

    /// Input values are signed integers of `input_bits`.
    pub fn input_min(&self) -> i64 {
        -(1i64 << (self.input_bits - 1))
    }
    pub fn input_max(&self) -> i64 {
        (1i64 << (self.input_bits - 1)) - 1
    }
    /// Bits an input has beyond a read's (the first-stage shift grows by as many).
    pub fn extra_input_bits(&self) -> u32 {
        self.input_bits - self.message_bits
    }
    /// A read's signed m-bit box in read steps, `[-2^(m-1), 2^(m-1) - 1]`.
    pub fn read_min(&self) -> i64 {
        -(1i64 << (self.message_bits - 1))
    }
    pub fn read_max(&self) -> i64 {
        (1i64 << (self.message_bits - 1)) - 1
    }
    /// Router logits live in [0, logit_max] so that differences (and the masked value -1 of a
    /// second top-k round) stay within the signed m-bit domain.
    pub fn logit_max(&self) -> i64 {
        (1i64 << (self.message_bits - 1)) - 2
    }
    /// Largest gate value G (stands for 1.0).
    pub fn gate_max(&self) -> i64 {
        (1i64 << self.gate_bits) - 1
    }
    /// Range of a gated FFN's factors (silu output and W3 branch): signed m-1 bits, so that
    /// their sum and difference stay within the signed m-bit domain.
    pub fn factor_range(&self) -> (i64, i64) {
        (
            -(1i64 << (self.message_bits - 2)),
            (1i64 << (self.message_bits - 2)) - 1,
        )
    }
    /// Switch gating caps each softmax term at this value.
    pub fn switch_cap(&self) -> i64 {
        (1i64 << self.message_bits) - 1
    }
    /// The offsets of a pre-activation's [`QuantParams::activation_reads`] reads at `shift`:
    /// `(2k + 1 - K) 2^shift / 2K` for `k < K` (one read: offset 0). The shift must be at least
    /// `log2 K + 1` (checked with the model).
    pub fn activation_offsets(&self, shift: u32) -> Vec<i64> {
        let k = self.activation_reads as i64;
        (0..k)
            .map(|i| ((2 * i + 1 - k) << shift) / (2 * k))
            .collect()
    }
    /// The box a pre-activation row must fit: the read box, one step narrower at each end when
    /// it is read at offsets, so that every offset read keeps the preset's noise margin.
    pub fn activation_box(&self) -> (i64, i64) {
        let narrow = (self.activation_reads > 1) as i64;
        (self.read_min() + narrow, self.read_max() - narrow)
    }
    /// Range of the hidden activations fed to W2: one read's (or product's) range times the
    /// reads summed.
    pub fn hidden_range(&self, ffn: crate::arch::FfnKind) -> (i64, i64) {
        let (lo, hi) = self.read_range(ffn);
        let k = self.activation_reads as i64;
        (lo * k, hi * k)
    }
    /// Range of one read's activation (gated: one product of the factors).
    pub fn read_range(&self, ffn: crate::arch::FfnKind) -> (i64, i64) {
        match ffn {
            crate::arch::FfnKind::Plain(act) => {
                let vals: Vec<i64> = (self.read_min()..=self.read_max())
                    .map(|q| self.activation(act, q))
                    .collect();
                (
                    *vals.iter().min().unwrap_or(&0),
                    *vals.iter().max().unwrap_or(&0),
                )
            }
            crate::arch::FfnKind::GatedSilu => {
                let (lo, hi) = self.factor_range();
                let c = [lo * lo, lo * hi, hi * hi];
                (*c.iter().min().unwrap_or(&0), *c.iter().max().unwrap_or(&0))
            }
        }
    }
    /// Activation table of a plain FFN (output clipped to the signed m-bit domain).
    pub fn activation(&self, act: Activation, q: i64) -> i64 {
        activation_table(
            act,
            q,
            self.act_in_scale,
            self.act_out_scale,
            self.read_min(),
            self.read_max(),
        )
    }
    /// The silu factor of a gated FFN.
    pub fn gated_silu(&self, q: i64) -> i64 {
        let (lo, hi) = self.factor_range();
        activation_table(
            Activation::Silu,
            q,
            self.act_in_scale,
            self.act_out_scale,
            lo,
            hi,
        )
    }
    /// The linear factor of a gated FFN.
    pub fn gated_linear(&self, q: i64) -> i64 {
        let (lo, hi) = self.factor_range();
        q.clamp(lo, hi)
    }
    /// Logit from a requantized router output.
    pub fn logit(&self, q: i64) -> i64 {
        (q + self.logit_zero_point).clamp(0, self.logit_max())
    }
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

    /// Hermite's identity: the `K` offset reads of a value add up to one read `log2 K` bits
    /// finer, for every value (exact rounding).
    #[test]
    fn offset_reads_add_up_to_a_finer_read() {
        for k in ACTIVATION_READS {
            let q = QuantParams {
                activation_reads: k,
                ..QuantParams::for_message_bits(5)
            };
            let shift = 6;
            let offsets = q.activation_offsets(shift);
            assert_eq!(offsets.len(), k as usize);
            assert_eq!(offsets.iter().sum::<i64>(), 0, "symmetric");
            for v in -5000..5000 {
                let reads: i64 = offsets.iter().map(|&o| round_shift(v + o, shift)).sum();
                assert_eq!(reads, round_shift(k as i64 * v, shift), "K = {k}, v = {v}");
            }
        }
    }

    #[test]
    fn widths_leave_headroom() {
        assert_eq!(read_width(-8, 7, 4), 4);
        assert_eq!(read_width(-8, 8, 4), 5);
        assert_eq!(hold_width(-8, 7), 4);
        assert_eq!(hold_width(0, 8), 5);
    }
}
