//! Choosing a pool router's accuracy-cost trade-off (`lambda`) from its own records, so that a
//! user states the accuracy they accept to lose rather than a raw `lambda`, and no test record
//! is looked at to pick it.
//!
//! K-fold cross-validation on the router's (held-out) records: for each `lambda` of a grid, the
//! router is fitted on K - 1 folds and routes the remaining fold; its accuracy there (the routed
//! model right or not) and its mean cost are averaged over the folds. The choice is the largest
//! `lambda` (the cheapest routing) whose cross-validated accuracy stays within `max_loss`
//! points of always-largest's on the same records.

use crate::classifier::QuantizedClassifier;
use crate::data::Dataset;
use crate::error::{pool_error, Result};
use crate::reference::Rounding;
use crate::train::pool_router::{
    fit_pool_router, router_inputs, utility_targets, UtilityTarget, RIDGE_PER_RECORD,
};

/// The grid `--lambda auto` searches (per unit of cost; the digits pool's costs are 9-132).
pub const LAMBDA_GRID: [f64; 9] = [
    0.0, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004,
];

/// One grid point's cross-validated figures.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaPoint {
    pub lambda: f64,
    /// Per-input routing accuracy on the held-out folds, in percent.
    pub accuracy: f64,
    /// Mean cost of the routed models per input.
    pub cost: f64,
}

/// The cross-validation's result.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaChoice {
    /// The chosen point.
    pub chosen: LambdaPoint,
    /// Whether it is within the loss (otherwise no grid point was, and it is the most
    /// accurate one).
    pub within: bool,
    /// Always-largest's accuracy on the same records, in percent.
    pub largest: f64,
    /// Every grid point, in the grid's order.
    pub grid: Vec<LambdaPoint>,
}

/// Cross-validates `grid` on `data` (the router's records) with `folds` folds and picks the
/// largest `lambda` within `max_loss` points of always-largest.
pub fn choose_lambda(
    models: &[QuantizedClassifier],
    costs: &[f64],
    data: &Dataset,
    target: UtilityTarget,
    grid: &[f64],
    max_loss: f64,
    folds: usize,
) -> Result<LambdaChoice> {
    if grid.is_empty() || !(2..=data.len()).contains(&folds) || max_loss.is_nan() || max_loss < 0.0
    {
        return Err(pool_error(format!(
            "choosing lambda needs a grid, 2 to {} folds and a loss of at least 0 points",
            data.len()
        )));
    }
    if costs.len() != models.len() || models.is_empty() {
        return Err(pool_error("choosing lambda needs one cost per pool model"));
    }
    let xs = router_inputs(models, data)?;
    let targets = utility_targets(models, data, target)?;
    let right = utility_targets(models, data, UtilityTarget::Correct)?;
    let n = xs.len();
    let last = models.len() - 1;
    let largest = 100.0 * right.iter().map(|r| r[last]).sum::<f64>() / n as f64;
    let mut points = Vec::with_capacity(grid.len());
    for &lambda in grid {
        let (mut hits, mut cost) = (0.0, 0.0);
        for f in 0..folds {
            let fit: Vec<usize> = (0..n).filter(|i| i % folds != f).collect();
            let fx: Vec<Vec<i64>> = fit.iter().map(|&i| xs[i].clone()).collect();
            let fy: Vec<Vec<f64>> = fit.iter().map(|&i| targets[i].clone()).collect();
            let router = fit_pool_router(&fx, &fy, costs, lambda, RIDGE_PER_RECORD)
                .quantize(models[0].moe.quant.message_bits)?;
            for i in (0..n).filter(|i| i % folds == f) {
                let m = router.choose(&xs[i], &mut Rounding::Exact).model;
                hits += right[i][m];
                cost += costs[m];
            }
        }
        points.push(LambdaPoint {
            lambda,
            accuracy: 100.0 * hits / n as f64,
            cost: cost / n as f64,
        });
    }
    let chosen = points
        .iter()
        .filter(|p| p.accuracy >= largest - max_loss)
        .max_by(|a, b| a.lambda.total_cmp(&b.lambda))
        .or_else(|| {
            points
                .iter()
                .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
        })
        .cloned()
        .ok_or_else(|| pool_error("no lambda to choose"))?;
    Ok(LambdaChoice {
        within: chosen.accuracy >= largest - max_loss,
        chosen,
        largest,
        grid: points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::tests::pool;
    use crate::pool_accuracy::tests::data;

    #[test]
    fn the_cheapest_lambda_within_the_loss_is_chosen() {
        // model 0 (the cheap one) labels the records, so it is always right
        let p = pool();
        let d = data(&p, 120, 5);
        let costs = [1.0, 400.0];
        let grid = [0.0, 0.001, 0.01];
        let c = choose_lambda(&p.models, &costs, &d, UtilityTarget::Margin, &grid, 0.0, 4).unwrap();
        assert_eq!(c.grid.len(), 3);
        assert!(c.within, "{c:?}");
        assert!(c.chosen.accuracy >= c.largest, "{c:?}");
        // no larger lambda of the grid is also within the loss, and the chosen point is one of
        // the grid's
        let best = c
            .grid
            .iter()
            .filter(|g| g.accuracy >= c.largest)
            .map(|g| g.lambda)
            .fold(f64::MIN, f64::max);
        assert_eq!(c.chosen.lambda, best);
        assert!(c.grid.contains(&c.chosen));
        // a steep lambda sends everything to the cheap model, which is always right here
        assert_eq!(c.grid[2].accuracy, 100.0, "{c:?}");
        assert_eq!(c.grid[2].cost, 1.0, "{c:?}");
        assert!(
            choose_lambda(&p.models, &costs, &d, UtilityTarget::Margin, &grid, 0.0, 1).is_err()
        );
        assert!(choose_lambda(&p.models, &costs, &d, UtilityTarget::Margin, &[], 0.0, 4).is_err());
        assert!(
            choose_lambda(&p.models, &costs, &d, UtilityTarget::Margin, &grid, -1.0, 4).is_err()
        );
    }
}
