//! The first stage (router, W1, W3): rows read by PBS from the packed input with one shared
//! shift `s`. Each group's scale is the finest at which its worst-case row (or, calibrated,
//! its calibration range times a headroom) still fits the read box, and the router rows are
//! centred first to shrink their L1 norms.

use super::context::Context;
use crate::quantized::affine_range;

/// One first-stage group, quantized.
pub(super) struct Rows {
    pub(super) w: Vec<i64>,
    pub(super) b: Vec<i64>,
    /// real value of one accumulator unit, per row
    pub(super) sigma: Vec<f64>,
    pub(super) zeroed: usize,
}

/// Factor by which a scale is coarsened per refit: small, so that the scale finally used is
/// only a little coarser than the finest one that fits after rounding.
const REFIT_FACTOR: f64 = 1.002;
/// Refits tried before the last scales are kept as they are.
const MAX_REFITS: usize = 200;

impl Context<'_> {
    /// Quantizes the rows of `w` (`[rows, d]` real weights, optional real biases) so that every
    /// row's worst-case accumulator fits the read box of shift `s`: with one scale for all
    /// rows (`shared`) or one per row. `read_box` is the box in read steps: the whole signed
    /// m-bit range, or a gated FFN's factor range for a linear factor read inside the product.
    pub(super) fn first_stage(
        &self,
        w: &ndarray::Array2<f32>,
        b: Option<&ndarray::Array1<f32>>,
        prune: f64,
        shared: bool,
        read_box: (i64, i64),
    ) -> Rows {
        let (rows, cols) = w.dim();
        let (real, zeroed) = self.pruned_reals(w, prune);
        let bias = |r: usize| b.map_or(0.0, |b| b[r] as f64);
        let need = self.needed_scales(&real, rows, cols, &bias, read_box);
        let shared_sigma = need.iter().copied().fold(1e-30, f64::max);
        let sigma: Vec<f64> = if shared {
            vec![shared_sigma; rows]
        } else {
            need
        };
        let (w, b, sigma) = self.fit_integers(&real, cols, &bias, sigma, shared, read_box);
        Rows {
            w,
            b,
            sigma,
            zeroed,
        }
    }

    /// Real weights per input step (`w * input_step`, row-major), with the weights below
    /// `prune` times their row's largest magnitude (and exact zeros) set to zero: a smaller L1
    /// norm means a finer read. Returns them and how many were zeroed.
    fn pruned_reals(&self, w: &ndarray::Array2<f32>, prune: f64) -> (Vec<f64>, usize) {
        let (rows, cols) = w.dim();
        let mut real: Vec<f64> = Vec::with_capacity(rows * cols);
        let mut zeroed = 0;
        for r in 0..rows {
            let row = w.row(r);
            let m = row.iter().fold(0f64, |a, &v| a.max((v as f64).abs()));
            for &v in row.iter() {
                let v = v as f64;
                if v == 0.0 || v.abs() < prune * m {
                    zeroed += 1;
                    real.push(0.0);
                } else {
                    real.push(v * self.input_step);
                }
            }
        }
        (real, zeroed)
    }

    /// Per row, the smallest scale (real value of one accumulator unit) at which the row's
    /// range, bias included, fits the read box of shift `s`: its worst case over every input
    /// of the box, or, with a calibrated headroom, its range over the calibration records
    /// times the headroom (never more than the worst case). The inputs are taken relative to
    /// the zero point (it is folded into the biases later).
    fn needed_scales(
        &self,
        real: &[f64],
        rows: usize,
        cols: usize,
        bias: &dyn Fn(usize) -> f64,
        (box_min, box_max): (i64, i64),
    ) -> Vec<f64> {
        let q = &self.quant;
        let s = self.first_stage_shift();
        let zp = self.input.input_zero_point;
        let (tlo, thi) = ((q.input_min() - zp) as f64, (q.input_max() - zp) as f64);
        let top = (box_max as f64) * 2f64.powi(s as i32);
        let bottom = (-box_min as f64) * 2f64.powi(s as i32);
        (0..rows)
            .map(|r| {
                let row = &real[r * cols..(r + 1) * cols];
                let hi: f64 = bias(r) + row.iter().map(|&v| (v * tlo).max(v * thi)).sum::<f64>();
                let lo: f64 = bias(r) + row.iter().map(|&v| (v * tlo).min(v * thi)).sum::<f64>();
                let (lo, hi) = match self.opts.calibrated_headroom {
                    None => (lo, hi),
                    Some(headroom) => {
                        let (clo, chi) = self.calibrated_range(|x| {
                            bias(r) + row.iter().zip(x).map(|(w, x)| w * x).sum::<f64>()
                        });
                        ((clo * headroom).max(lo), (chi * headroom).min(hi))
                    }
                };
                (hi / top).max(-lo / bottom).max(1e-30)
            })
            .collect()
    }

    /// `[min, max]` of `acc` over the calibration records (centred inputs), widened to hold 0.
    fn calibrated_range(&self, acc: impl Fn(&[f64]) -> f64) -> (f64, f64) {
        self.centred_inputs
            .iter()
            .map(|x| acc(x))
            .fold((0f64, 0f64), |(lo, hi), a| (lo.min(a), hi.max(a)))
    }

    /// Rounds the real rows at scales `sigma` (biases with the input zero point folded in:
    /// `b / sigma - zp * sum(w)`), and coarsens the scale of every row whose exact integer
    /// worst case still leaves the box after rounding (all rows together when `shared`), until
    /// all fit. Returns the integer weights, the integer biases and the final scales.
    fn fit_integers(
        &self,
        real: &[f64],
        cols: usize,
        bias: &dyn Fn(usize) -> f64,
        mut sigma: Vec<f64>,
        shared: bool,
        (box_min, box_max): (i64, i64),
    ) -> (Vec<i64>, Vec<i64>, Vec<f64>) {
        let q = &self.quant;
        let s = self.first_stage_shift();
        let (qmin, qmax) = (q.input_min(), q.input_max());
        let zp = self.input.input_zero_point;
        let rows = sigma.len();
        let mut wi = vec![0i64; rows * cols];
        let mut bi = vec![0i64; rows];
        let box_hi = box_max as i128 * (1i128 << s);
        let box_lo = box_min as i128 * (1i128 << s);
        for _ in 0..MAX_REFITS {
            let mut refit = vec![false; rows];
            for r in 0..rows {
                let row = &real[r * cols..(r + 1) * cols];
                let mut sum = 0i64;
                for (c, &v) in row.iter().enumerate() {
                    let x = (v / sigma[r]).round() as i64;
                    wi[r * cols + c] = x;
                    sum += x;
                }
                bi[r] = (bias(r) / sigma[r]).round() as i64 - zp * sum;
                // (The range includes 0, which the box always does: the refit decision is the
                // row's own worst case.)
                let (lo, hi) = affine_range(
                    &wi[r * cols..(r + 1) * cols],
                    Some(&bi[r..r + 1]),
                    cols,
                    qmin,
                    qmax,
                );
                let worst_fits = hi <= box_hi && lo >= box_lo;
                // A calibrated row fits when its calibration range, times the headroom, does.
                let calibrated_fits = self.opts.calibrated_headroom.is_some_and(|headroom| {
                    let w = &wi[r * cols..(r + 1) * cols];
                    let b = bi[r] + zp * sum;
                    let (clo, chi) = self.calibrated_range(|x| {
                        b as f64 + w.iter().zip(x).map(|(&w, x)| w as f64 * x).sum::<f64>()
                    });
                    chi * headroom <= box_hi as f64 && clo * headroom >= box_lo as f64
                });
                refit[r] = !(worst_fits || calibrated_fits);
            }
            if !refit.iter().any(|&f| f) {
                break;
            }
            if shared {
                sigma.iter_mut().for_each(|s| *s *= REFIT_FACTOR);
            } else {
                for r in 0..rows {
                    if refit[r] {
                        sigma[r] *= REFIT_FACTOR;
                    }
                }
            }
        }
        (wi, bi, sigma)
    }
}

/// Subtracts from every router row the per-input median over experts (and from the biases
/// their median): every logit moves by the same amount for any input, so the top-k and the
/// gates (softmax over selected or over all logits) do not change, while the rows' L1 norms,
/// which set the router's read step, shrink and the logits are centred for their clip.
pub(crate) fn center_router(
    w: &ndarray::Array2<f32>,
    b: Option<&ndarray::Array1<f32>>,
) -> (ndarray::Array2<f32>, Option<ndarray::Array1<f32>>) {
    // In f32, as the weights are (not `crate::math::median`, which works in f64).
    let median = |mut v: Vec<f32>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        }
    };
    let mut out = w.clone();
    for mut col in out.columns_mut() {
        let c = median(col.to_vec());
        col.mapv_inplace(|v| v - c);
    }
    let bias = b.map(|b| {
        let c = median(b.to_vec());
        b.mapv(|v| v - c)
    });
    (out, bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::top_k;

    #[test]
    fn centring_the_router_keeps_every_routing() {
        let w =
            ndarray::Array2::from_shape_fn((5, 6), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = ndarray::Array1::from(vec![0.5f32, -1.0, 2.0, 0.0, 1.5]);
        let (c, cb) = center_router(&w, Some(&b));
        let cb = cb.unwrap();
        for t in 0..50 {
            let x =
                ndarray::Array1::from_shape_fn(6, |j| ((t * 13 + j * 5) % 9) as f32 / 4.0 - 1.0);
            let r0 = (w.dot(&x) + &b).to_vec();
            let r1 = (c.dot(&x) + &cb).to_vec();
            // the same shift for every logit: same top-k, same softmax
            let shift = r0[0] - r1[0];
            assert!(r0
                .iter()
                .zip(&r1)
                .all(|(a, b)| (a - b - shift).abs() < 1e-4));
            assert_eq!(top_k(&r0, 2), top_k(&r1, 2));
        }
        let l1 = |a: &ndarray::Array2<f32>| a.iter().map(|v| v.abs()).sum::<f32>();
        assert!(l1(&c) <= l1(&w));
    }
}
