//! The cost-aware router of a model pool (SecureRouter's router, linear so that it runs as one
//! leveled product and a chain of sign reads under encryption).
//!
//! Utility targets: on each of the router's own records (held out from the pool models'
//! training, so that how model `m` does there is how it will do on new inputs), a target `y_m`
//! per model ([`UtilityTarget`]). One ridge regression per model on the quantized input gives
//! `u_m(x) = w_m . x_q + b_m`; the router picks `argmax_m u_m(x) - lambda * cost_m`, so the cost
//! is folded into the bias. Models are ordered cheapest first: ties go to the cheaper.
//!
//! The default target is the model's **margin** on the record, not only whether it is right:
//! with 0/1 targets the regressions learn little from a few hundred records (a model right by a
//! hair and one right by far look the same), and on the digits pool the router lost 2 points
//! against always-largest for a third of its cost; with margins it loses 0.3 (BENCHMARKS.md).
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
pub(crate) const RIDGE_PER_RECORD: f64 = 1e-2;

/// The float router over a pool: one row per model on the quantized input `x_q`, and a bias
/// that already holds `-lambda * cost`.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatPoolRouter {
    /// `[models, d]`.
    pub weights: Array2<f32>,
    /// `[models]`.
    pub bias: Array1<f32>,
}

/// What the router's regressions predict for each model on a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UtilityTarget {
    /// 1 when the model's exact reference predicts the label, else 0.
    Correct,
    /// The model's margin `o_label - max_(j != label) o_j` as a fraction of its output span
    /// `max o - min o`, clamped to `[-1/2, 1/2]` and shifted by 1/2: 1 when it is right by at
    /// least half its span, 1/2 at a tie, 0 when it is wrong by that much.
    #[default]
    Margin,
}

impl UtilityTarget {
    /// The target for outputs `o` of a record labelled `label`.
    pub fn of(self, o: &[f64], label: usize) -> f64 {
        match self {
            UtilityTarget::Correct => (crate::math::argmax(o) == label) as u8 as f64,
            UtilityTarget::Margin => {
                let max = o.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let min = o.iter().copied().fold(f64::INFINITY, f64::min);
                let (Some(&own), true) = (o.get(label), min.is_finite() && max.is_finite()) else {
                    return 0.0;
                };
                let other = o
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != label)
                    .map(|(_, &v)| v)
                    .fold(min, f64::max);
                let span = max - min;
                if span <= 0.0 {
                    return 0.5;
                }
                ((own - other) / span).clamp(-0.5, 0.5) + 0.5
            }
        }
    }
}

/// Each pool model's utility target on each record: `[record][model]`.
pub fn utility_targets(
    models: &[QuantizedClassifier],
    data: &Dataset,
    target: UtilityTarget,
) -> Result<Vec<Vec<f64>>> {
    data.features
        .iter()
        .zip(&data.labels)
        .map(|(raw, &label)| {
            models
                .iter()
                .map(|m| Ok(target.of(&m.reference_outputs(raw, &mut Rounding::Exact)?, label)))
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
    target: UtilityTarget,
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
    let xs = router_inputs(models, data)?;
    let targets = utility_targets(models, data, target)?;
    Ok(fit_pool_router(
        &xs,
        &targets,
        costs,
        lambda,
        RIDGE_PER_RECORD,
    ))
}

/// The router's inputs: the records quantized by the pool's shared input quantizer
/// (`models[0]`'s).
pub(crate) fn router_inputs(
    models: &[QuantizedClassifier],
    data: &Dataset,
) -> Result<Vec<Vec<i64>>> {
    data.features
        .iter()
        .map(|r| models[0].quantize_input(r))
        .collect()
}

/// The router's regressions on quantized inputs `xs` and utility targets `[record][model]`,
/// ridge penalty `alpha_per_record` per record, then `-lambda * cost_m` on each bias.
pub fn fit_pool_router(
    xs: &[Vec<i64>],
    targets: &[Vec<f64>],
    costs: &[f64],
    lambda: f64,
    alpha_per_record: f64,
) -> FloatPoolRouter {
    let d = xs[0].len();
    let models = costs.len();
    let mut weights = Array2::<f32>::zeros((models, d));
    let mut bias = Array1::<f32>::zeros(models);
    for m in 0..models {
        let y: Vec<f64> = targets.iter().map(|t| t[m]).collect();
        let beta = ridge(xs, &y, alpha_per_record * xs.len() as f64);
        for k in 0..d {
            weights[[m, k]] = beta[k] as f32;
        }
        bias[m] = (beta[d] - lambda * costs[m]) as f32;
    }
    FloatPoolRouter { weights, bias }
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
