//! Where a gated FFN's linear factor `W3 x + b3` is read: by a PBS of its own (clipped to the
//! factor range), or inside the two quarter-square reads of the product `silu * linear`
//! ([`QuantizedMoe::linear_in_product`]).
//!
//! The product is `qsq(s + l) - qsq(s - l)` with `s` the silu factor and `l` the linear one;
//! both sums must stay in the signed m-bit read box, which is why both factors live in the
//! signed (m-1)-bit factor range. Read inside the product, `l` is the W3 accumulator itself,
//! rescaled by the first-stage shift: each quarter-square read rounds `s +- W3x / 2^s` and so
//! rounds W3x as a separate read would (floor or ceil near a box edge, independently in the
//! two reads). Nothing clips it there, so its rows must keep the accumulator within the factor
//! range times `2^s`: the quantizer scales them for that box (half the read box), which costs
//! the factor one bit of resolution against a separate read of the whole box, clipped.

use crate::arch::FfnKind;
use crate::error::{ModelError, Result};
use crate::quantized::{affine_range, exceeded_box, QuantizedMoe};

impl QuantizedMoe {
    /// The W3 accumulators a linear factor read inside the product takes without wrapping or
    /// clipping: the factor range in boxes of `2^s`.
    pub fn linear_factor_box(&self) -> (i64, i64) {
        let s = self.input_shift();
        let (lo, hi) = self.quant.factor_range();
        (lo << s, hi << s)
    }

    /// The box a W3 accumulator must stay in: [`QuantizedMoe::linear_factor_box`] when the
    /// factor is read inside the product, the first-stage read box otherwise.
    pub fn w3_box(&self) -> (i64, i64) {
        if self.linear_in_product {
            self.linear_factor_box()
        } else {
            self.first_stage_box()
        }
    }

    /// Worst-case range of every W3 accumulator (routed and shared experts) over the input box;
    /// `(0, 0)` for a plain FFN.
    pub fn w3_range(&self) -> (i128, i128) {
        let d = self.config.d.0;
        let (lo, hi) = (self.quant.input_min(), self.quant.input_max());
        let mut r = (0i128, 0i128);
        for (x, _) in self.ffns() {
            if let Some(w3) = &x.w3 {
                let (a, z) = affine_range(w3, x.b3.as_deref(), d, lo, hi);
                r = (r.0.min(a), r.1.max(z));
            }
        }
        r
    }

    /// The range the encrypted W3 products are declared to take: the linear factor's box when it
    /// is read inside the product and its worst case exceeds it (calibrated), otherwise the
    /// first stage's declaration ([`QuantizedMoe::first_stage_declared`]).
    pub fn w3_declared(&self) -> Option<(i64, i64)> {
        if self.linear_in_product {
            exceeded_box(self.linear_factor_box(), self.w3_range())
        } else {
            self.first_stage_declared()
        }
    }

    /// How many of the token's W3 accumulators fall outside [`QuantizedMoe::w3_box`] (they wrap
    /// under encryption).
    pub fn linear_factor_overflows(&self, x: &[i64]) -> usize {
        let (lo, hi) = self.w3_box();
        self.ffns()
            .filter_map(|(w, rows)| {
                w.w3.as_ref().map(|w3| {
                    crate::reference::matvec(w3, w.b3.as_deref(), rows, x)
                        .into_iter()
                        .filter(|&a| a < lo || a > hi)
                        .count()
                })
            })
            .sum()
    }

    /// The same layer with its linear factor read inside the product, for random layers of
    /// tests and benchmarks ([`QuantizedMoe::random`]): W3 and b3 are halved until their worst
    /// case fits the factor's box, magnitudes rounded up while any exceeds 1 (so that sparse
    /// small weights stay non-zero), toward zero after. A gated layer only; others are
    /// returned unchanged.
    pub fn with_linear_in_product(mut self) -> QuantizedMoe {
        if self.config.ffn != FfnKind::GatedSilu {
            return self;
        }
        self.linear_in_product = true;
        while self.validate_linear_in_product().is_err() {
            let shared = self.shared.as_mut().map(|s| &mut s.weights);
            let mut ffns: Vec<_> = self.experts.iter_mut().chain(shared).collect();
            let above_one = ffns
                .iter()
                .flat_map(|x| x.w3.iter().chain(x.b3.iter()).flatten())
                .any(|v| v.abs() > 1);
            for x in ffns.iter_mut() {
                for v in x.w3.iter_mut().chain(x.b3.iter_mut()).flatten() {
                    *v = if above_one {
                        v.signum() * ((v.abs() + 1) / 2)
                    } else {
                        *v / 2
                    };
                }
            }
        }
        self
    }

    /// A linear factor read inside the product needs a gated FFN and, under worst-case ranges
    /// (no calibrated shift declares the box), W3 rows whose worst case fits the factor's box.
    pub(crate) fn validate_linear_in_product(&self) -> Result<()> {
        if !self.linear_in_product {
            return Ok(());
        }
        if self.config.ffn != FfnKind::GatedSilu {
            return Err(ModelError::Config(
                "the linear factor is read inside the product only in a gated FFN".into(),
            ));
        }
        let (lo, hi) = self.linear_factor_box();
        let (a, z) = self.w3_range();
        if self.calibrated_shift.is_none() && (a < lo as i128 || z > hi as i128) {
            return Err(ModelError::Config(format!(
                "W3 accumulators reach [{a}, {z}], beyond the linear factor's box [{lo}, {hi}]: \
                 read inside the product they would wrap (quantize the model for it, or read \
                 the factor on its own)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::arch::{ExpertCount, FfnKind, HiddenDim, ModelDim, MoeConfig, TopK};
    use crate::quant::QuantParams;
    use crate::quantized::QuantizedMoe;
    use crate::reference::Rounding;
    use crate::Gating;

    /// A small random gated layer (d = 6, h = 4, 2 experts, 4-bit reads), shared by the
    /// model's unit tests.
    pub(crate) fn gated() -> QuantizedMoe {
        let config = MoeConfig {
            d: ModelDim(6),
            h: HiddenDim(4),
            experts: ExpertCount(2),
            top_k: TopK(1),
            ffn: FfnKind::GatedSilu,
            gating: Gating::SoftmaxSelected,
        };
        QuantizedMoe::random(config, QuantParams::for_message_bits(4), 5, true)
    }

    #[test]
    fn a_model_whose_w3_exceeds_the_factor_box_is_refused() {
        let mut m = gated();
        m.linear_in_product = true;
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("beyond the linear factor's box"), "{err}");
        let fitted = gated().with_linear_in_product();
        fitted.validate().unwrap();
        let (lo, hi) = fitted.linear_factor_box();
        let (a, z) = fitted.w3_range();
        assert!(a >= lo as i128 && z <= hi as i128);
        // the weights shrank without vanishing
        let nonzero = fitted.experts.iter().flat_map(|x| x.w3.iter().flatten());
        assert!(nonzero.filter(|&&w| w != 0).count() >= fitted.experts.len() * 4);
    }

    #[test]
    fn reading_inside_the_product_never_needs_the_clip() {
        // Every exact W3 read of a fitted model is within the factor range, so the clip of a
        // separate read changes nothing: the reference is the same with or without it.
        let m = gated().with_linear_in_product();
        let (flo, fhi) = m.quant.factor_range();
        let s = m.input_shift();
        let (lo, hi) = (m.quant.input_min(), m.quant.input_max());
        let mut rng = crate::SplitMix(9);
        for _ in 0..200 {
            let x: Vec<i64> = (0..6).map(|_| rng.range(lo, hi)).collect();
            for w in &m.experts {
                let v = crate::reference::matvec(w.w3.as_ref().unwrap(), w.b3.as_deref(), 4, &x);
                for a in v {
                    let r = Rounding::Exact.read(a, s);
                    assert!((flo..=fhi).contains(&r), "{r}");
                }
            }
            assert_eq!(m.linear_factor_overflows(&x), 0);
        }
    }

    #[test]
    fn split_roundings_stay_within_the_hidden_range() {
        // The two quarter-square reads may round W3x / 2^s to neighbouring values: the product
        // then lies between those of the two roundings, inside the hidden range the encrypted
        // path declares for it.
        use crate::quant::quarter_square as qsq;
        for bits in 3..=6 {
            let q = QuantParams::for_message_bits(bits);
            let (lo, hi) = q.factor_range();
            let (hlo, hhi) = q.hidden_range(FfnKind::GatedSilu);
            for s in lo..=hi {
                for a in lo..=hi {
                    for b in (a - 1).max(lo)..=(a + 1).min(hi) {
                        let v = qsq(s + a) - qsq(s - b);
                        assert!((hlo..=hhi).contains(&v), "{bits} bits: {s}, {a}, {b}: {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn plain_ffns_cannot_read_a_linear_factor_in_the_product() {
        let mut m = gated();
        m.config.ffn = FfnKind::Plain(crate::Activation::Relu);
        for x in &mut m.experts {
            x.w3 = None;
            x.b3 = None;
        }
        m.validate().unwrap();
        m.linear_in_product = true;
        assert!(m.validate().is_err());
    }
}
