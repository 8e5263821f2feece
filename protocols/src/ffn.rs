//! Encrypted expert FFNs: first-stage packed products, activation (or gated product) by PBS,
//! second-stage LWE products (packed products over packed activations when Select-Then-Compute
//! chooses among several experts).
//!
//! PBS per evaluated expert: h (plain) or 4h (gated: silu read, linear read, two quarter
//! squares), 3h for a gated model whose linear factor is read inside the quarter squares
//! ([`QuantizedMoe::linear_in_product`]: the W3 accumulator, rescaled to the factors'
//! encoding, is added to the silu factor and each quarter-square read rounds it). With `K`
//! activation reads ([`veilmoe_model::quant::QuantParams::activation_reads`]) the activation
//! (silu factor) is read `K` times at offsets, one keyswitch for all, and the reads summed:
//! `K h` PBS (plain) or `(3K + 1) h` (gated: each silu read's own pair of quarter squares). The output
//! accumulators `W2 a + b2` are not read back to m bits: they leave the server wide (the
//! client decrypts them at full width), which saves d PBS per slot and the read's rounding. Their encoding is the hidden activations' encoding, set wide enough by
//! [`QuantizedMoe::slot_output_width`].

use crate::error::Result;
use veilmoe_engine::{
    Cols, Encoding, Evaluator, Lut, LweVector, PackedGlwe, PackedRows, PackedWeights, Rows,
    ValueRange, WeightMatrix,
};
use veilmoe_model::quant;
use veilmoe_model::{ExpertWeights, FfnKind, QuantizedMoe};

/// A packing keyswitch in CMUXes (`veilmoe bench primitives` on `default`, Intel Xeon, 2 cores:
/// 15.1-16.7 ms against a CMUX's 0.036-0.039 ms).
const PACK_COST_IN_CMUX: usize = 450;
/// LWE multiply-adds per CMUX (a 64-term LWE row took 0.014-0.021 ms in the same runs).
const MUL_ADDS_PER_CMUX: usize = 150;

/// Whether Select-Then-Compute packs the selected activations and runs the second stages as
/// packed products ([`FfnTables::selected_second_stage`]) for a layer of `experts` experts,
/// `d` outputs and `h` hidden units on `preset`: when the LWE route's `(E - 1) d` CMUXes and
/// `E d h` multiply-adds cost more than one packing keyswitch and `(E - 1)` CMUXes per GLWE of
/// rows, and the packing keyswitch's noise stays a small share of the PBS outputs' it carries
/// ([`PACKING_NOISE_SHARE`]). A public function of the shapes and the preset, so the trace
/// stays independent of the data. On `default` (N = 2048): packed from E = 8 at d = h = 64,
/// from E = 32 at d = h = 16. Never on `fine` or `precise`: their packing keys (one level of
/// base 2^31, two of 2^22) suit tfhe's scalar packing, and the FFT packing's rounding grows
/// with the digits' square (0.3 of the torus per input on `fine`).
pub fn packs_second_stage(
    preset: &veilmoe_engine::Preset,
    experts: usize,
    d: usize,
    h: usize,
) -> bool {
    let n = preset.glwe.polynomial_size;
    if experts < 2 || h == 0 || h > n {
        return false;
    }
    let quiet = veilmoe_engine::noise::packing_keyswitch_variance(preset, h)
        <= PACKING_NOISE_SHARE * veilmoe_engine::noise::pbs_output_variance(preset);
    let groups = d.div_ceil(n / h);
    let lwe_route = (experts - 1) * d + experts * d * h / MUL_ADDS_PER_CMUX;
    let packed_route = PACK_COST_IN_CMUX + (experts - 1) * groups;
    quiet && packed_route < lwe_route
}

/// Largest share of a PBS output's noise variance that the packing keyswitch may add to the
/// activations it packs (on `default` it adds 2 %); beyond it the LWE route, whose outputs
/// carry only the PBS outputs' noise, is kept.
pub const PACKING_NOISE_SHARE: f64 = 0.125;

/// One expert's weights, laid out for the engine.
pub struct ExpertTables {
    pub(crate) w1: PackedWeights,
    pub(crate) b1: Option<Vec<i64>>,
    pub(crate) w3: Option<PackedWeights>,
    pub(crate) b3: Option<Vec<i64>>,
    /// W2, laid out for packed products over packed activations as well
    /// ([`FfnTables::selected_second_stage`]); its matrix serves the LWE products.
    pub(crate) w2: PackedWeights,
    pub(crate) b2: Option<Vec<i64>>,
}

/// First-stage weights (`rows x d`) laid out for packed products, with the model's declared
/// accumulator range when its first-stage shift was calibrated
/// ([`QuantizedMoe::first_stage_declared`]).
pub(crate) fn first_stage_weights(
    p: &veilmoe_engine::Preset,
    w: &[i64],
    rows: usize,
    d: usize,
    declared: Option<(i64, i64)>,
) -> Result<PackedWeights> {
    let matrix = WeightMatrix::new(Rows(rows), Cols(d), w.to_vec())?;
    let matrix = match declared {
        Some((min, max)) => matrix.with_declared_range(ValueRange { min, max })?,
        None => matrix,
    };
    Ok(PackedWeights::new(p, matrix))
}

/// The ranges a model declares for its encrypted products where the worst case would exceed
/// their boxes (calibrated ranges), computed once per model: each is a scan over every expert's
/// weights, which must not run again for each expert.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeclaredRanges {
    /// Router, W1 and shared-gate products ([`QuantizedMoe::first_stage_declared`]).
    pub(crate) first_stage: Option<(i64, i64)>,
    /// W3 products ([`QuantizedMoe::w3_declared`]).
    pub(crate) w3: Option<(i64, i64)>,
    /// Expert outputs ([`QuantizedMoe::expert_output_declared`]).
    pub(crate) output: Option<(i64, i64)>,
}

impl DeclaredRanges {
    pub(crate) fn of(model: &QuantizedMoe) -> DeclaredRanges {
        DeclaredRanges {
            first_stage: model.first_stage_declared(),
            w3: model.w3_declared(),
            output: model.expert_output_declared(),
        }
    }
}

impl ExpertTables {
    /// Lays out one FFN's weights (`d` inputs, `h` hidden units; shapes validated with the
    /// model) with the model's declared ranges. Its second stage has the model's encrypted
    /// output rows: W2, or W2's two digits stacked ([`QuantizedMoe::output_digits`]).
    pub(crate) fn new(
        p: &veilmoe_engine::Preset,
        model: &QuantizedMoe,
        x: &ExpertWeights,
        h: usize,
        declared: &DeclaredRanges,
    ) -> Result<ExpertTables> {
        let d = model.config.d.0;
        let (w2, b2) = model.encrypted_w2(x);
        let w2 = WeightMatrix::new(Rows(model.encrypted_output_rows()), Cols(h), w2)?;
        let w2 = match declared.output {
            Some((min, max)) => w2.with_declared_range(ValueRange { min, max })?,
            None => w2,
        };
        let packed = |w: &[i64], range| first_stage_weights(p, w, h, d, range);
        Ok(ExpertTables {
            w1: packed(&x.w1, declared.first_stage)?,
            b1: x.b1.clone(),
            w3: x
                .w3
                .as_deref()
                .map(|w| packed(w, declared.w3))
                .transpose()?,
            b3: x.b3.clone(),
            w2: PackedWeights::new(p, w2),
            b2,
        })
    }

    /// First-stage products, still packed: (W1 x + b1, W3 x + b3).
    pub(crate) fn first_stage(
        &self,
        ev: &Evaluator,
        x: &PackedGlwe,
    ) -> Result<(PackedRows, Option<PackedRows>)> {
        let u = ev.packed_products(&self.w1, self.b1.as_deref(), x)?;
        let v = match &self.w3 {
            Some(w3) => Some(ev.packed_products(w3, self.b3.as_deref(), x)?),
            None => None,
        };
        Ok((u, v))
    }

    /// Second-stage accumulators `W2 a + b2` (leveled): the FFN's output, wide.
    pub(crate) fn second_stage(&self, ev: &Evaluator, a: &LweVector) -> Result<LweVector> {
        Ok(ev.lwe_matvec(self.w2.matrix(), self.b2.as_deref(), a)?)
    }
}

/// All experts plus the FFN's lookup tables.
pub struct FfnTables {
    pub(crate) experts: Vec<ExpertTables>,
    kind: FfnKind,
    /// plain: the activation; gated: the silu factor; one table per read offset
    /// ([`veilmoe_model::quant::QuantParams::activation_reads`])
    act: Vec<Lut>,
    /// gated: the linear factor's own read (`None` when it is read inside the quarter squares)
    linear: Option<Lut>,
    /// gated: quarter squares
    qsq: Option<Lut>,
    small: Encoding,
    hidden: Encoding,
    /// Range of the hidden activations (the reads summed).
    hidden_range: (i64, i64),
}

impl FfnTables {
    pub fn new(ev: &Evaluator, model: &QuantizedMoe) -> Result<FfnTables> {
        let p = ev.preset();
        let q = &model.quant;
        let h = model.config.h.0;
        let small = Encoding::signed(q.message_bits);
        let input = Encoding::signed(model.input_width());
        let shift = model.input_shift();
        // W2 a keeps the activations' encoding: the slot outputs' public encoding
        let hidden = crate::layer::output_encoding(model);
        let offsets = model.activation_offsets();
        let reads = |out: Encoding, f: &dyn Fn(i64) -> i64| -> Result<Vec<Lut>> {
            offsets
                .iter()
                .map(|&o| Ok(Lut::requantize_offset(p, input, shift, o, out, f)?))
                .collect()
        };
        let (act, linear, qsq) = match model.config.ffn {
            FfnKind::Plain(a) => (reads(hidden, &|v| q.activation(a, v))?, None, None),
            FfnKind::GatedSilu => (
                reads(small, &|v| q.gated_silu(v))?,
                (!model.linear_in_product)
                    .then(|| Lut::requantize(p, input, shift, small, |v| q.gated_linear(v)))
                    .transpose()?,
                Some(Lut::univariate(p, small, hidden, quant::quarter_square)?),
            ),
        };
        let declared = DeclaredRanges::of(model);
        let experts = model
            .experts
            .iter()
            .map(|x| ExpertTables::new(p, model, x, h, &declared))
            .collect::<Result<Vec<_>>>()?;
        Ok(FfnTables {
            experts,
            kind: model.config.ffn,
            act,
            linear,
            qsq,
            small,
            hidden,
            hidden_range: q.hidden_range(model.config.ffn),
        })
    }

    /// First-stage products of expert `e`, still packed: (W1 x + b1, W3 x + b3).
    pub fn first_stage(
        &self,
        ev: &Evaluator,
        e: usize,
        x: &PackedGlwe,
    ) -> Result<(PackedRows, Option<PackedRows>)> {
        self.experts[e].first_stage(ev, x)
    }

    /// Hidden activations from first-stage accumulators (any number of units, one batch).
    pub fn hidden(
        &self,
        ev: &Evaluator,
        u: &LweVector,
        v: Option<&LweVector>,
    ) -> Result<LweVector> {
        let acts: Vec<&Lut> = self.act.iter().collect();
        // each read of the pre-activations at its offset, one keyswitch for all
        let reads = ev.pbs_each(u, &acts)?;
        let (lo, hi) = self.hidden_range;
        let hidden_range = ValueRange { min: lo, max: hi };
        match (self.kind, v, &self.qsq) {
            (FfnKind::GatedSilu, Some(v), Some(qsq)) => {
                let l = match &self.linear {
                    Some(linear) => ev.pbs(v, linear)?,
                    // W3x / 2^shift: each quarter-square read below rounds it, as its own read
                    // would; the model keeps W3x within the factor range, so nothing clips it
                    None => v.clone().rescaled_down(self.small)?,
                };
                // per silu read: s + l and s - l, all quarter squares in one batch
                let mut halves = Vec::with_capacity(2 * reads.len());
                for s in &reads {
                    halves.push(ev.linear_combination(&[s, &l], &[1, 1], self.small)?);
                    halves.push(ev.linear_combination(&[s, &l], &[1, -1], self.small)?);
                }
                let refs: Vec<&LweVector> = halves.iter().collect();
                let squares = ev.pbs(&LweVector::concat(&refs)?, qsq)?;
                let n = u.len();
                let parts = (0..2 * reads.len())
                    .map(|i| squares.slice(i * n..(i + 1) * n))
                    .collect::<veilmoe_engine::Result<Vec<_>>>()?;
                // qsq(s + l) - qsq(s - l) = s * l per read, summed: the reads' products'
                // range, tighter than the interval bound of the table outputs.
                let refs: Vec<&LweVector> = parts.iter().collect();
                let signs: Vec<i64> = (0..parts.len())
                    .map(|i| if i % 2 == 0 { 1 } else { -1 })
                    .collect();
                Ok(ev.linear_combination_within(&refs, &signs, self.hidden, hidden_range)?)
            }
            _ if reads.len() == 1 => Ok(reads.into_iter().next().expect("one read")),
            _ => {
                let refs: Vec<&LweVector> = reads.iter().collect();
                let ones = vec![1; refs.len()];
                Ok(ev.linear_combination_within(&refs, &ones, self.hidden, hidden_range)?)
            }
        }
    }

    /// Second-stage accumulators `W2 a + b2` of expert `e` (leveled): the expert's output, wide.
    pub fn second_stage(&self, ev: &Evaluator, e: usize, a: &LweVector) -> Result<LweVector> {
        self.experts[e].second_stage(ev, a)
    }

    /// The second stage of the expert `index` names (GGSW bits, least significant first), over
    /// the selected expert's activations `a`: every expert's `W2 a + b2`, the chosen one
    /// selected obliviously.
    ///
    /// Where [`packs_second_stage`] says so, `a` is packed into one GLWE (one packing
    /// keyswitch, about a PBS) and each expert's second stage is a packed product, so the CMUX
    /// tree selects whole GLWEs of rows: per slot `(E - 1) * ceil(d / (N / h))` external
    /// products and E packed products, where the LWE route takes `(E - 1) * d` external
    /// products and `E * d * h` LWE multiply-adds (E = 64, d = h = 64 on `default`: 126
    /// against 4,032 external products).
    pub fn selected_second_stage(
        &self,
        ev: &Evaluator,
        index: &[veilmoe_engine::GgswBit],
        a: &LweVector,
    ) -> Result<LweVector> {
        let e = self.experts.len();
        let (d, h) = (self.experts[0].w2.rows().0, self.experts[0].w2.cols().0);
        if !packs_second_stage(ev.preset(), e, d, h) {
            let ys = (0..e)
                .map(|i| self.second_stage(ev, i, a))
                .collect::<Result<Vec<_>>>()?;
            return Ok(ev.cmux_tree_lwe(index, &ys)?);
        }
        let packed = ev.pack(a)?;
        let rows = self
            .experts
            .iter()
            .map(|x| ev.packed_products(&x.w2, x.b2.as_deref(), &packed))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(ev.extract_rows(&ev.cmux_tree_rows(index, &rows)?)?)
    }

    /// Whole FFN of expert `e` (used by public routing): first stage, hidden, second stage.
    pub fn evaluate(&self, ev: &Evaluator, e: usize, x: &PackedGlwe) -> Result<LweVector> {
        let (u, v) = self.first_stage(ev, e, x)?;
        let u = ev.extract_rows(&u)?;
        let v = v.map(|v| ev.extract_rows(&v)).transpose()?;
        let a = self.hidden(ev, &u, v.as_ref())?;
        self.second_stage(ev, e, &a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veilmoe_engine::Preset;

    /// The shape issue 15 packs on `default` (E = 64, d = h = 64) is packed there and not on
    /// `fine` or `precise`, whose packing keys would bury the activations in FFT rounding; a
    /// shape too small to pay for the packing is never packed.
    #[test]
    fn packing_follows_cost_and_noise() {
        let load = |name| Preset::load(name, false).unwrap();
        let (default, fine, precise) = (load("default"), load("fine"), load("precise"));
        assert!(packs_second_stage(&default, 64, 64, 64));
        assert!(packs_second_stage(&default, 8, 64, 32));
        assert!(!packs_second_stage(&default, 4, 16, 16));
        for p in [&fine, &precise] {
            assert!(!packs_second_stage(p, 64, 64, 64), "{}", p.name);
            assert!(!packs_second_stage(p, 8, 64, 32), "{}", p.name);
        }
    }
}
