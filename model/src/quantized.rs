//! A quantized MoE layer: integer weights under the public architecture and quantization
//! parameters that both the encrypted path and the plaintext reference follow.

use crate::arch::{FfnKind, Gating, MoeConfig};
use crate::error::{config, ModelError, Result};
use crate::quant::{self, QuantParams};
use crate::random::SplitMix;
use serde::{Deserialize, Serialize};

/// Integer weights of one expert (row-major `rows x cols`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertWeights {
    /// h x d
    pub w1: Vec<i64>,
    pub b1: Option<Vec<i64>>,
    /// h x d, gated FFNs only
    pub w3: Option<Vec<i64>>,
    pub b3: Option<Vec<i64>>,
    /// d x h
    pub w2: Vec<i64>,
    pub b2: Option<Vec<i64>>,
}

/// Qwen2-MoE's shared expert, quantized: an FFN of the layer's kind that every token uses, its
/// output multiplied by its gate `g = round(G * sigmoid(read(gate . x + gate_bias) *
/// gate_scale))` in [0, G] (G = [`QuantParams::gate_max`]). Its first-stage rows (W1, W3 and the
/// gate row) share the layer's input width; its W2 shares the routed experts' scale, so its
/// gated output adds to theirs in the same units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedExpert {
    /// Hidden units (Qwen's `shared_expert_intermediate_size`).
    pub h: usize,
    /// `w1`, `w3` are `h x d`, `w2` is `d x h`.
    pub weights: ExpertWeights,
    /// The gate row (d values) and its bias (the input zero point folded in).
    pub gate: Vec<i64>,
    pub gate_bias: i64,
    /// Real value of one step of the gate row's first-stage read.
    pub gate_scale: f64,
}

impl SharedExpert {
    /// The gate from the gate row's requantized read `q`.
    pub fn gate_value(&self, q: i64, g_max: i64) -> i64 {
        quant::shared_gate(q, self.gate_scale, g_max)
    }
}

/// What an encrypted router needs, whoever owns it (an MoE layer's router over its experts, a
/// pool's router over its models): the public shape, the integer weights, the quantization and
/// the first-stage read of the accumulators `W x + b`.
#[derive(Debug, Clone, Copy)]
pub struct RouterSpec<'a> {
    pub d: usize,
    /// Destinations (experts, or pool models).
    pub experts: usize,
    pub top_k: usize,
    pub gating: Gating,
    /// experts x d
    pub weights: &'a [i64],
    pub bias: Option<&'a [i64]>,
    pub quant: &'a QuantParams,
    /// Encoding width of the encrypted input, whose top `message_bits` bits the logit read takes.
    pub input_width: u32,
    /// Switch gating's partition-sum read shift (unused by Mixtral gating).
    pub partition_shift: u32,
    /// The accumulators' declared range when the read shift was calibrated (see
    /// [`QuantizedMoe::first_stage_declared`]).
    pub declared: Option<(i64, i64)>,
    /// Choose by pairwise comparisons of the accumulators ([`QuantizedMoe::pairwise_routing`]).
    pub pairwise: bool,
}

/// A quantized MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedMoe {
    pub config: MoeConfig,
    pub quant: QuantParams,
    /// E x d
    pub router: Vec<i64>,
    pub router_bias: Option<Vec<i64>>,
    pub experts: Vec<ExpertWeights>,
    /// Qwen2-MoE's shared expert (none for other families).
    pub shared: Option<SharedExpert>,
    /// The first-stage read shift when it was set from calibrated accumulator ranges rather
    /// than from the worst case over every input of the box (`None`: the worst case). Reads
    /// are then several times finer, and an accumulator beyond the read box
    /// ([`QuantizedMoe::first_stage_box`]), which an input unlike the calibration data may
    /// produce, wraps around the torus under encryption: that token's output is garbage,
    /// though nothing fails. The quantizer measures how often it happens
    /// ([`QuantizedMoe::first_stage_overflows`]).
    pub calibrated_shift: Option<u32>,
    /// The expert outputs' encoding width (signed, before the extra bit of a top-2 difference)
    /// when it was set from calibrated output ranges rather than the worst case (`None`). The
    /// outputs leave the server wide and their noise is fixed on the torus, so every bit the
    /// width sheds divides the noise the client decrypts, in output steps, by two. An output
    /// beyond [`QuantizedMoe::encrypted_output_box`] wraps ([`QuantizedMoe::overflows`] counts
    /// it). With W2 in two digits ([`QuantizedMoe::output_digits`]) the encoding holds a digit's
    /// output and has its own width; this one then only sets the output's step
    /// ([`QuantizedMoe::expert_output_shift`]).
    pub calibrated_output_width: Option<u32>,
    /// A gated FFN's linear factor `W3 x + b3` is read inside the two quarter-square reads of
    /// its product instead of by a read of its own (h PBS fewer per expert). Its rows then keep
    /// their accumulators within the factor range ([`QuantizedMoe::linear_factor_box`]), so
    /// the factor's clip never binds and the semantics are those of a separate read.
    pub linear_in_product: bool,
    /// The experts are chosen by comparing the router accumulators pairwise at the blind
    /// rotation's resolution (see [`crate::pairwise`]) instead of by a tournament over their
    /// `message_bits`-bit reads, which ties every two accumulators that fall in the same box.
    /// The logits are still read where the gates need them (top-2, Switch gating). For 2, 4 or
    /// [`crate::pairwise::MAX_EXPERTS`] experts.
    pub pairwise_routing: bool,
    /// W2 split in two digits whose products the client adds (see [`crate::output_digits`]):
    /// a finer W2 at the relative noise of a coarser one. `None`: W2 in one piece.
    pub output_digits: Option<crate::output_digits::OutputDigits>,
}

/// Largest calibrated first-stage shift (the encrypted input stays well inside 64-bit words).
pub const MAX_CALIBRATED_SHIFT: u32 = 40;

/// Largest model or hidden dimension a quantized model may declare.
pub const MAX_DIM: usize = 1 << 16;
/// Largest magnitude of an integer weight or bias (far above what any quantization produces;
/// keeps every worst-case accumulator range far inside `i128`).
pub const MAX_WEIGHT: i64 = 1 << 24;

fn check_len(what: &str, v: &[i64], n: usize) -> Result<()> {
    if v.len() != n {
        return Err(ModelError::Weights(format!(
            "{what}: {} values, expected {n}",
            v.len()
        )));
    }
    Ok(())
}

fn check_opt(what: &str, v: &Option<Vec<i64>>, n: usize) -> Result<()> {
    match v {
        Some(v) => check_len(what, v, n),
        None => Ok(()),
    }
}

/// `bx` when the worst case `worst` leaves it (the box must then be declared to the engine).
pub(crate) fn exceeded_box(bx: (i64, i64), worst: (i128, i128)) -> Option<(i64, i64)> {
    (worst.0 < bx.0 as i128 || worst.1 > bx.1 as i128).then_some(bx)
}

/// Worst-case range of `W x + b` for x in [lo, hi] (rows of length `cols`).
pub fn affine_range(w: &[i64], b: Option<&[i64]>, cols: usize, lo: i64, hi: i64) -> (i128, i128) {
    let (mut min, mut max) = (0i128, 0i128);
    for (r, row) in w.chunks(cols).enumerate() {
        let bias = b.map_or(0, |b| b[r]) as i128;
        let (mut rl, mut rh) = (bias, bias);
        for &c in row {
            let (a, z) = (c as i128 * lo as i128, c as i128 * hi as i128);
            rl += a.min(z);
            rh += a.max(z);
        }
        min = min.min(rl);
        max = max.max(rh);
    }
    (min, max)
}

impl QuantizedMoe {
    /// Checks shapes and limits (E <= 128, 1 <= k <= min(E, 2), 1 <= d, h <= 2^16), the
    /// quantization parameters, and that every weight is at most [`MAX_WEIGHT`] in magnitude,
    /// so that no accumulator range computed from them can overflow. A model read from a file
    /// is used only after this.
    pub fn validate(&self) -> Result<()> {
        let c = &self.config;
        let (d, h, e, k) = (c.d.0, c.h.0, c.experts.0, c.top_k.0);
        if d == 0 || h == 0 || d > MAX_DIM || h > MAX_DIM {
            return Err(config(format!(
                "d and h must be between 1 and {MAX_DIM}, got d = {d}, h = {h}"
            )));
        }
        if e == 0 || e > 128 {
            return Err(config(format!("1 to 128 experts are supported, got {e}")));
        }
        if k == 0 || k > 2 || k > e {
            return Err(config(format!(
                "top-k must be 1 or 2 and at most E = {e}, got {k}"
            )));
        }
        self.quant.validate()?;
        check_len("router", &self.router, e * d)?;
        check_opt("router bias", &self.router_bias, e)?;
        if self.experts.len() != e {
            return Err(ModelError::Weights(format!(
                "{} experts, expected {e}",
                self.experts.len()
            )));
        }
        for (i, x) in self.experts.iter().enumerate() {
            check_len(&format!("expert {i} w1"), &x.w1, h * d)?;
            check_opt(&format!("expert {i} b1"), &x.b1, h)?;
            check_len(&format!("expert {i} w2"), &x.w2, d * h)?;
            check_opt(&format!("expert {i} b2"), &x.b2, d)?;
            match (c.ffn, &x.w3) {
                (FfnKind::GatedSilu, Some(w3)) => {
                    check_len(&format!("expert {i} w3"), w3, h * d)?;
                    check_opt(&format!("expert {i} b3"), &x.b3, h)?;
                }
                (FfnKind::GatedSilu, None) => {
                    return Err(ModelError::Weights(format!(
                        "expert {i}: a gated FFN needs w3"
                    )))
                }
                (FfnKind::Plain(_), Some(_)) => {
                    return Err(ModelError::Weights(format!(
                        "expert {i}: w3 given for a plain FFN"
                    )))
                }
                (FfnKind::Plain(_), None) => {}
            }
        }
        if let Some(sh) = &self.shared {
            self.validate_shared(sh)?;
        }
        if let Some(s) = self.calibrated_shift {
            if s > MAX_CALIBRATED_SHIFT {
                return Err(config(format!(
                    "calibrated first-stage shift {s} exceeds {MAX_CALIBRATED_SHIFT}"
                )));
            }
            let extra = self.quant.extra_input_bits();
            if s < extra {
                return Err(config(format!(
                    "calibrated first-stage shift {s} is below the input's {extra} bits beyond                      a read (the encrypted input would not hold its values)"
                )));
            }
        }
        self.validate_linear_in_product()?;
        self.validate_output_digits()?;
        self.validate_activation_reads()?;
        if self.pairwise_routing {
            crate::pairwise::check_supported(c.experts.0, c.top_k.0)?;
        }
        if let Some(w) = self.calibrated_output_width {
            let (lo, hi) = self.quant.hidden_range(c.ffn);
            let least = quant::hold_width(lo as i128, hi as i128).max(self.quant.message_bits);
            if w < least || w > MAX_CALIBRATED_SHIFT {
                return Err(config(format!(
                    "calibrated output width {w} is outside [{least}, {MAX_CALIBRATED_SHIFT}] \
                     (the hidden activations share the outputs' encoding)"
                )));
            }
        }
        let shared_weights = self.shared.as_ref().map(|s| &s.weights);
        let all = std::iter::once(&self.router)
            .chain(&self.router_bias)
            .chain(self.shared.as_ref().map(|s| &s.gate))
            .chain(self.experts.iter().chain(shared_weights).flat_map(|x| {
                [
                    Some(&x.w1),
                    x.b1.as_ref(),
                    x.w3.as_ref(),
                    x.b3.as_ref(),
                    Some(&x.w2),
                    x.b2.as_ref(),
                ]
                .into_iter()
                .flatten()
            }));
        for v in all {
            if let Some(w) = v.iter().find(|w| w.unsigned_abs() > MAX_WEIGHT as u64) {
                return Err(ModelError::Weights(format!(
                    "integer weight {w} exceeds the largest supported magnitude {MAX_WEIGHT}"
                )));
            }
        }
        Ok(())
    }

    /// Checks the shared expert's shapes against the layer (d, the FFN kind), its hidden size
    /// against [`MAX_DIM`], its gate scale and gate bias.
    fn validate_shared(&self, sh: &SharedExpert) -> Result<()> {
        let (d, h) = (self.config.d.0, sh.h);
        if h == 0 || h > MAX_DIM {
            return Err(config(format!(
                "the shared expert's hidden size must be between 1 and {MAX_DIM}, got {h}"
            )));
        }
        let x = &sh.weights;
        check_len("shared expert w1", &x.w1, h * d)?;
        check_opt("shared expert b1", &x.b1, h)?;
        check_len("shared expert w2", &x.w2, d * h)?;
        check_opt("shared expert b2", &x.b2, d)?;
        match (self.config.ffn, &x.w3) {
            (FfnKind::GatedSilu, Some(w3)) => {
                check_len("shared expert w3", w3, h * d)?;
                check_opt("shared expert b3", &x.b3, h)?;
            }
            (FfnKind::Plain(_), None) => {}
            _ => {
                return Err(ModelError::Weights(
                    "the shared expert's w3 does not match the layer's FFN kind".into(),
                ))
            }
        }
        check_len("shared expert gate", &sh.gate, d)?;
        if sh.gate_bias.unsigned_abs() > MAX_WEIGHT as u64 {
            return Err(ModelError::Weights(format!(
                "shared gate bias {} exceeds the largest supported magnitude {MAX_WEIGHT}",
                sh.gate_bias
            )));
        }
        if !(sh.gate_scale.is_finite() && sh.gate_scale > 0.0) {
            return Err(config(format!(
                "the shared gate scale must be positive and finite, got {}",
                sh.gate_scale
            )));
        }
        Ok(())
    }

    /// Every FFN the layer evaluates with its hidden size: the routed experts, then the shared
    /// expert.
    pub fn ffns(&self) -> impl Iterator<Item = (&ExpertWeights, usize)> {
        let h = self.config.h.0;
        self.experts
            .iter()
            .map(move |x| (x, h))
            .chain(self.shared.as_ref().map(|s| (&s.weights, s.h)))
    }

    /// Worst-case range of every first-stage accumulator (router, W1 and W3 rows with their
    /// biases, the shared gate row) over inputs in the signed m-bit range.
    pub fn first_stage_range(&self) -> (i128, i128) {
        let d = self.config.d.0;
        let (lo, hi) = (self.quant.input_min(), self.quant.input_max());
        let mut r = affine_range(&self.router, self.router_bias.as_deref(), d, lo, hi);
        let mut widen = |w: &[i64], b: Option<&[i64]>| {
            let (a, z) = affine_range(w, b, d, lo, hi);
            r = (r.0.min(a), r.1.max(z));
        };
        for (x, _) in self.ffns() {
            widen(&x.w1, x.b1.as_deref());
            if let Some(w3) = &x.w3 {
                widen(w3, x.b3.as_deref());
            }
        }
        if let Some(s) = &self.shared {
            widen(&s.gate, Some(std::slice::from_ref(&s.gate_bias)));
        }
        r
    }

    /// Encoding width of the encrypted input: every first-stage accumulator (router, W1, W3)
    /// must be readable through its top `message_bits` bits, for every input of the box (or,
    /// with a calibrated shift, for the calibration data), and the input's own values must fit.
    pub fn input_width(&self) -> u32 {
        match self.calibrated_shift {
            Some(s) => self.quant.message_bits + s,
            None => {
                let m = self.quant.message_bits;
                let (lo, hi) = self.first_stage_range();
                let (wlo, whi) = self.pre_activation_range();
                quant::read_width(lo, hi, m)
                    .max(quant::box_width(wlo, whi, m, self.quant.activation_box()))
                    .max(self.quant.input_bits)
            }
        }
    }

    /// The accumulators a first-stage read takes without wrapping: `[-2^(m-1), 2^(m-1) - 1]`
    /// boxes of `2^s` (the top box keeps half a box of headroom, as in [`quant::read_width`]).
    pub fn first_stage_box(&self) -> (i64, i64) {
        let s = self.input_shift();
        (self.quant.read_min() << s, self.quant.read_max() << s)
    }

    /// The range the encrypted first-stage products are declared to take when the worst case
    /// over the input box exceeds the read box (a calibrated shift): the read box. `None` when
    /// every input fits (the engine then checks the worst case itself).
    pub fn first_stage_declared(&self) -> Option<(i64, i64)> {
        self.calibrated_shift?;
        exceeded_box(self.first_stage_box(), self.first_stage_range())
    }

    /// How many of the token's first-stage accumulators (router, W1, W3, shared gate) fall
    /// outside [`QuantizedMoe::first_stage_box`] (W1's: outside
    /// [`QuantizedMoe::pre_activation_box`], one step narrower with offset reads; W3's: outside
    /// [`QuantizedMoe::linear_factor_box`] when read inside the product): 0 for every input
    /// under a worst-case shift.
    /// Under encryption such an accumulator wraps (see [`QuantizedMoe::calibrated_shift`]);
    /// the reference reads it unwrapped, as the float model would.
    pub fn first_stage_overflows(&self, x: &[i64]) -> usize {
        let (lo, hi) = self.first_stage_box();
        let out = |w: &[i64], b: Option<&[i64]>, rows: usize| {
            crate::reference::matvec(w, b, rows, x)
                .into_iter()
                .filter(|&a| a < lo || a > hi)
                .count()
        };
        let mut n = out(
            &self.router,
            self.router_bias.as_deref(),
            self.config.experts.0,
        );
        let (plo, phi) = self.pre_activation_box();
        for (w, rows) in self.ffns() {
            n += crate::reference::matvec(&w.w1, w.b1.as_deref(), rows, x)
                .into_iter()
                .filter(|&a| a < plo || a > phi)
                .count();
        }
        n += self.linear_factor_overflows(x);
        if let Some(sh) = &self.shared {
            n += out(&sh.gate, Some(std::slice::from_ref(&sh.gate_bias)), 1);
        }
        n
    }

    /// Shift of the first-stage requantization (`input_width - message_bits`).
    pub fn input_shift(&self) -> u32 {
        self.input_width() - self.quant.message_bits
    }

    /// The layer's router, as the encrypted router tables take it.
    pub fn router_spec(&self) -> RouterSpec<'_> {
        RouterSpec {
            d: self.config.d.0,
            experts: self.config.experts.0,
            top_k: self.config.top_k.0,
            gating: self.config.gating,
            weights: &self.router,
            bias: self.router_bias.as_deref(),
            quant: &self.quant,
            input_width: self.input_width(),
            partition_shift: self.partition_shift(),
            declared: self.first_stage_declared(),
            pairwise: self.pairwise_routing,
        }
    }

    /// Worst-case range of one expert output `W2 a + b2`.
    pub fn expert_output_range(&self) -> (i128, i128) {
        let (lo, hi) = self.quant.hidden_range(self.config.ffn);
        let mut r = (0i128, 0i128);
        for (x, h) in self.ffns() {
            let (a, b) = affine_range(&x.w2, x.b2.as_deref(), h, lo, hi);
            r = (r.0.min(a), r.1.max(b));
        }
        r
    }

    /// Bits an expert's output accumulator `W2 a + b2` needs (signed). An m-bit read of it
    /// would drop the low [`QuantizedMoe::expert_output_shift`] bits; the encrypted path
    /// returns it wide instead.
    pub fn expert_output_width(&self) -> u32 {
        match self.calibrated_output_width {
            Some(w) => w,
            None => {
                let (lo, hi) = self.expert_output_range();
                quant::read_width(lo, hi, self.quant.message_bits)
            }
        }
    }

    /// Values of the token `x` that wrap under encryption: first-stage accumulators beyond the
    /// read box and expert outputs beyond their box. Always 0 without calibrated ranges; with
    /// them, such a token's encrypted output is meaningless (nothing fails).
    pub fn overflows(&self, x: &[i64]) -> usize {
        let r = self.reference(x, &mut crate::reference::Rounding::Exact);
        self.first_stage_overflows(x) + self.output_overflows(&r)
    }

    /// The bits an m-bit read of an expert output would drop: the block output's accumulator
    /// step is `2^-shift` of the read step that `y_scale` is calibrated for.
    pub fn expert_output_shift(&self) -> u32 {
        self.expert_output_width() - self.quant.message_bits
    }

    /// Whether the routed gates are public constants (Mixtral with k = 1: the gate is 1.0).
    pub fn constant_gates(&self) -> bool {
        self.config.top_k.0 == 1 && self.config.gating == Gating::SoftmaxSelected
    }

    /// Whether the layer output is the single slot output itself (a constant gate and no
    /// shared expert); otherwise it is `sum g * o` with gates in [0, G] standing for [0, 1].
    pub fn output_is_slot(&self) -> bool {
        self.constant_gates() && self.shared.is_none()
    }

    /// Encoding width of a slot output (and of the expert's hidden activations, whose encoding
    /// the leveled `W2 a + b2` keeps): the accumulator's width, plus one bit where the layer
    /// subtracts two slot outputs (Mixtral top-2 gate combination) so that the difference stays
    /// representable.
    pub fn slot_output_width(&self) -> u32 {
        self.encrypted_output_width() + self.config.subtracts_slot_outputs() as u32
    }

    /// Random weights for tests and benchmarks: each row has a few non-zero entries so that
    /// the worst-case accumulator is close to typical ones and requantization keeps resolution.
    pub fn random(
        config: MoeConfig,
        quant: QuantParams,
        seed: u64,
        with_bias: bool,
    ) -> QuantizedMoe {
        let mut rng = SplitMix(seed);
        let (d, h, e) = (config.d.0, config.h.0, config.experts.0);
        let mut sparse = |rows: usize, cols: usize, nz: usize, mag: i64| {
            sparse_rows(&mut rng, rows, cols, nz, mag)
        };
        let router = sparse(e, d, 4, 3);
        let mut experts = Vec::with_capacity(e);
        for _ in 0..e {
            let w1 = sparse(h, d, 4, 3);
            let w3 = matches!(config.ffn, FfnKind::GatedSilu).then(|| sparse(h, d, 4, 3));
            let w2 = sparse(d, h, 6, 1);
            experts.push((w1, w3, w2));
        }
        let mut bias = |n: usize, mag: i64| -> Option<Vec<i64>> {
            with_bias.then(|| (0..n).map(|_| rng.range(-mag, mag)).collect())
        };
        let router_bias = bias(e, 4);
        let experts = experts
            .into_iter()
            .map(|(w1, w3, w2)| ExpertWeights {
                b1: bias(h, 4),
                b3: w3.as_ref().and_then(|_| bias(h, 4)),
                w1,
                w3,
                b2: bias(d, 4),
                w2,
            })
            .collect();
        QuantizedMoe {
            config,
            quant,
            router,
            router_bias,
            experts,
            shared: None,
            calibrated_shift: None,
            calibrated_output_width: None,
            linear_in_product: false,
            pairwise_routing: false,
            output_digits: None,
        }
    }

    /// The same layer with a random shared expert of `h` hidden units (for tests and
    /// benchmarks), its rows as sparse as [`QuantizedMoe::random`]'s and its gate spanning
    /// [0, G] over the gate row's read.
    pub fn with_random_shared(mut self, h: usize, seed: u64) -> QuantizedMoe {
        let mut rng = SplitMix(seed ^ 0x5ba2_ed00);
        let d = self.config.d.0;
        let gated = self.config.ffn == FfnKind::GatedSilu;
        let w1 = sparse_rows(&mut rng, h, d, 4, 3);
        let w3 = gated.then(|| sparse_rows(&mut rng, h, d, 4, 3));
        let w2 = sparse_rows(&mut rng, d, h, 6, 1);
        let gate = sparse_rows(&mut rng, 1, d, 4, 3);
        let gate_bias = rng.range(-4, 4);
        self.shared = Some(SharedExpert {
            h,
            weights: ExpertWeights {
                w1,
                b1: None,
                w3,
                b3: None,
                w2,
                b2: None,
            },
            gate,
            gate_bias,
            gate_scale: 0.5,
        });
        self
    }
}

/// `rows x cols` weights with about `nz` non-zero entries per row, each in [-mag, mag].
fn sparse_rows(rng: &mut SplitMix, rows: usize, cols: usize, nz: usize, mag: i64) -> Vec<i64> {
    let mut w = vec![0i64; rows * cols];
    for r in 0..rows {
        for _ in 0..nz.min(cols) {
            let c = rng.below(cols as u64) as usize;
            w[r * cols + c] = rng.range(-mag, mag);
        }
    }
    w
}
