//! The cost-aware router of a model pool (SecureRouter's router, linear so that it runs as one
//! leveled product and one PBS read per model under encryption).
//!
//! Utility targets: on each record of the router's own records (held out from the pool models'
//! training, so that "model `m` is right here" is what it will be on new inputs), `y_m = 1`
//! when pool model `m`'s exact quantized reference predicts the label. One ridge regression per
//! model on the quantized input gives `u_m(x) = w_m . x_q + b_m`, an estimate of `P(m right)`;
//! the router picks `argmax_m u_m(x) - lambda * cost_m`, so the cost is folded into the bias.
//! Models are ordered cheapest first: ties (the integer logits are coarse) go to the cheaper.
//!
//! Quantization: rows centred over the models (the argmax does not change, the L1 norms that
//! set the encoding width shrink) and integer weights with the largest at
//! [`ROUTER_WEIGHT_TOP`]; the chain of sign reads ([`crate::pool_router`]) needs nothing more.

use crate::classifier::QuantizedClassifier;
use crate::data::Dataset;
use crate::error::{pool_error, Result};
use crate::pool::PoolRouter;
use crate::quant::QuantParams;
use crate::quantize::center_router;
use crate::reference::Rounding;
use ndarray::{Array1, Array2};

/// Integer value of the router's largest weight (the bias is on the same scale): fine enough
/// that rounding the weights moves a score by far less than the sign reads' noise.
pub const ROUTER_WEIGHT_TOP: f64 = 64.0;
/// Ridge penalty per record of the utility regressions (on inputs of magnitude up to 8).
const RIDGE_PER_RECORD: f64 = 1e-2;

/// The float router over a pool: one row per model on the quantized input `x_q`, and a bias
/// that already holds `-lambda * cost`.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatPoolRouter {
    /// `[models, d]`.
    pub weights: Array2<f32>,
    /// `[models]`.
    pub bias: Array1<f32>,
}

/// Whether each pool model's exact reference is right on each record: `[record][model]`.
pub fn utility_targets(models: &[QuantizedClassifier], data: &Dataset) -> Result<Vec<Vec<f64>>> {
    data.features
        .iter()
        .zip(&data.labels)
        .map(|(raw, &label)| {
            models
                .iter()
                .map(|m| {
                    let out = m.reference_outputs(raw, &mut Rounding::Exact)?;
                    Ok((crate::math::argmax(&out) == label) as u8 as f64)
                })
                .collect()
        })
        .collect()
}

/// Fits the router on `data` (quantized by the pool's shared input quantizer, `models[0]`'s):
/// a ridge regression of each model's utility target, then `-lambda * cost_m` on its bias.
pub fn train_pool_router(
    models: &[QuantizedClassifier],
    costs: &[f64],
    lambda: f64,
    data: &Dataset,
) -> Result<FloatPoolRouter> {
    if models.is_empty() || costs.len() != models.len() {
        return Err(pool_error(format!(
            "a pool router needs one cost per model: {} models, {} costs",
            models.len(),
            costs.len()
        )));
    }
    if data.is_empty() || !lambda.is_finite() || costs.iter().any(|c| !c.is_finite()) {
        return Err(pool_error(
            "a pool router needs records, a finite lambda and finite costs",
        ));
    }
    let xs: Vec<Vec<i64>> = data
        .features
        .iter()
        .map(|r| models[0].quantize_input(r))
        .collect::<Result<_>>()?;
    let targets = utility_targets(models, data)?;
    let d = models[0].features();
    let mut weights = Array2::<f32>::zeros((models.len(), d));
    let mut bias = Array1::<f32>::zeros(models.len());
    for m in 0..models.len() {
        let y: Vec<f64> = targets.iter().map(|t| t[m]).collect();
        let beta = ridge(&xs, &y, RIDGE_PER_RECORD * xs.len() as f64);
        for k in 0..d {
            weights[[m, k]] = beta[k] as f32;
        }
        bias[m] = (beta[d] - lambda * costs[m]) as f32;
    }
    Ok(FloatPoolRouter { weights, bias })
}

/// Ridge regression of `y` on `[x, 1]` (the intercept unpenalized): the normal equations,
/// solved by Cholesky (they are positive definite for `alpha > 0`).
fn ridge(xs: &[Vec<i64>], y: &[f64], alpha: f64) -> Vec<f64> {
    let n = xs[0].len() + 1;
    let mut a = vec![0.0; n * n];
    let mut rhs = vec![0.0; n];
    for (x, &t) in xs.iter().zip(y) {
        let row: Vec<f64> = x.iter().map(|&v| v as f64).chain([1.0]).collect();
        for i in 0..n {
            rhs[i] += row[i] * t;
            for j in 0..=i {
                a[i * n + j] += row[i] * row[j];
            }
        }
    }
    for i in 0..n - 1 {
        a[i * n + i] += alpha;
    }
    // the intercept's own tiny penalty keeps a constant input from making the system singular
    a[n * n - 1] += 1e-9;
    for i in 0..n {
        for j in 0..i {
            a[j * n + i] = a[i * n + j];
        }
    }
    cholesky_solve(&mut a, &mut rhs, n);
    rhs
}

/// Solves `A z = b` in place (`A` symmetric positive definite, `n x n`, row-major).
fn cholesky_solve(a: &mut [f64], b: &mut [f64], n: usize) {
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        let l = s.max(1e-300).sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut t = a[i * n + j];
            for k in 0..j {
                t -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = t / l;
        }
    }
    for i in 0..n {
        let mut t = b[i];
        for k in 0..i {
            t -= a[i * n + k] * b[k];
        }
        b[i] = t / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut t = b[i];
        for k in i + 1..n {
            t -= a[k * n + i] * b[k];
        }
        b[i] = t / a[i * n + i];
    }
}

impl FloatPoolRouter {
    /// Models routed over.
    pub fn models(&self) -> usize {
        self.weights.nrows()
    }

    /// The float choice on a quantized input (top score, ties to the lowest index).
    pub fn choose(&self, x_q: &[i64]) -> usize {
        let x = Array1::from_iter(x_q.iter().map(|&v| v as f32));
        crate::math::argmax(&(self.weights.dot(&x) + &self.bias).to_vec())
    }

    /// The integer router for `message_bits`-bit reads. Only the order of the scores matters
    /// to the chain's sign reads, whose resolution is the read's noise, not its step: the
    /// weights are rounded finely ([`ROUTER_WEIGHT_TOP`]) and nothing is calibrated.
    pub fn quantize(&self, message_bits: u32) -> Result<PoolRouter> {
        let (w, b) = center_router(&self.weights, Some(&self.bias));
        let b = b.unwrap_or_else(|| Array1::zeros(self.models()));
        // the weights set the scale; the bias (which holds `-lambda * cost` and can be far
        // larger than any weight) takes the same scale in as many integer steps as it needs
        let top = w.iter().fold(0f64, |a, &v| a.max((v as f64).abs()));
        if top == 0.0 || !top.is_finite() {
            return Err(pool_error(
                "the pool router's weights are all zero or not finite: it cannot choose",
            ));
        }
        let sigma = top / ROUTER_WEIGHT_TOP;
        let round = |v: &f32| (*v as f64 / sigma).round() as i64;
        let weights: Vec<i64> = w.iter().map(round).collect();
        let bias: Vec<i64> = b.iter().map(round).collect();
        let router = PoolRouter {
            weights,
            bias: bias.iter().any(|&v| v != 0).then_some(bias),
            quant: QuantParams::for_message_bits(message_bits),
        };
        router.validate(self.models(), self.weights.ncols())?;
        Ok(router)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_a_linear_target() {
        // y = 0.5 x0 - 0.25 x1 + 2, exactly: a small penalty barely moves it
        let xs: Vec<Vec<i64>> = (0..200)
            .map(|i| vec![(i % 16) - 8, ((i * 7) % 16) - 8])
            .collect();
        let y: Vec<f64> = xs
            .iter()
            .map(|x| 0.5 * x[0] as f64 - 0.25 * x[1] as f64 + 2.0)
            .collect();
        let beta = ridge(&xs, &y, 1e-6);
        for (got, want) in beta.iter().zip([0.5, -0.25, 2.0]) {
            assert!((got - want).abs() < 1e-6, "{beta:?}");
        }
    }

    #[test]
    fn the_integer_router_keeps_the_float_choice() {
        let router = FloatPoolRouter {
            weights: Array2::from_shape_vec((3, 2), vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0]).unwrap(),
            bias: Array1::from(vec![0.0, 0.5, -0.5]),
        };
        let calib: Vec<Vec<i64>> = (-8..8)
            .flat_map(|a| (-8..8).map(move |b| vec![a, b]))
            .collect();
        let q = router.quantize(4).unwrap();
        for x in calib.iter().filter(|x| x[0] % 2 == 0 && x[1] % 2 == 0) {
            let c = q.choose(x, &mut Rounding::Exact);
            assert_eq!(c.model, router.choose(x), "{x:?}: {c:?}");
        }
        assert!(FloatPoolRouter {
            weights: Array2::zeros((2, 2)),
            bias: Array1::zeros(2),
        }
        .quantize(4)
        .is_err());
    }
}
