//! Plaintext-reference accuracy of a pool of classifiers on labelled records: each model alone,
//! per-input routing, and batches under public capacities (the batch rule of
//! [`crate::pool::place`]; an input answered by no model counts as wrong). The encrypted pool
//! equals this reference (tests on `test` and `default`), so this is its accuracy too.

use crate::data::Dataset;
use crate::error::Result;
use crate::math::argmax;
use crate::pool::{place, Placement, Pool, PoolCapacities};
use crate::reference::Rounding;
use serde::Serialize;

/// Accuracies in percent on `records` labelled records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolAccuracy {
    pub records: usize,
    /// Each model alone.
    pub alone: Vec<f64>,
    /// Every input answered by its chosen model.
    pub per_input: f64,
    /// How many inputs chose each model.
    pub choices: Vec<usize>,
    /// Consecutive batches of the records under the capacities.
    pub batch: Option<BatchAccuracy>,
}

/// Accuracy of the batch mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchAccuracy {
    pub batch: usize,
    pub accuracy: f64,
    /// Inputs answered by the fallback model.
    pub fallback: usize,
    /// Inputs answered by no model.
    pub dropped: usize,
}

/// Each model's prediction on every record: `[model][record]`.
fn predictions(pool: &Pool, data: &Dataset) -> Result<Vec<Vec<usize>>> {
    pool.models
        .iter()
        .map(|m| {
            data.features
                .iter()
                .map(|r| Ok(argmax(&m.reference_outputs(r, &mut Rounding::Exact)?)))
                .collect()
        })
        .collect()
}

/// The router's choice on every record.
pub fn pool_choices(pool: &Pool, data: &Dataset) -> Result<Vec<usize>> {
    data.features
        .iter()
        .map(|r| {
            let x = pool.models[0].quantize_input(r)?;
            Ok(pool.choose(&x, &mut Rounding::Exact).model)
        })
        .collect()
}

/// The pool's accuracy on `data`; with `caps`, also of consecutive batches of `batch` records.
pub fn pool_accuracy(
    pool: &Pool,
    data: &Dataset,
    caps: Option<(&PoolCapacities, usize)>,
) -> Result<PoolAccuracy> {
    let n = data.len();
    let preds = predictions(pool, data)?;
    let choices = pool_choices(pool, data)?;
    let pct = |right: usize| 100.0 * right as f64 / n.max(1) as f64;
    let right_by = |m: usize, i: usize| preds[m][i] == data.labels[i];
    let alone = (0..pool.models.len())
        .map(|m| pct((0..n).filter(|&i| right_by(m, i)).count()))
        .collect();
    let mut chosen = vec![0; pool.models.len()];
    choices.iter().for_each(|&c| chosen[c] += 1);
    let per_input = pct((0..n).filter(|&i| right_by(choices[i], i)).count());
    let batch = match caps {
        None => None,
        Some((caps, batch)) => {
            let (mut right, mut fallback, mut dropped) = (0, 0, 0);
            for start in (0..n).step_by(batch.max(1)) {
                let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
                let c: Vec<usize> = idx.iter().map(|&i| choices[i]).collect();
                for (&i, p) in idx.iter().zip(place(&c, caps)?) {
                    let model = match p {
                        Placement::Chosen(s) => caps.per_model.locate(s).map(|(m, _)| m),
                        Placement::Fallback(_) => {
                            fallback += 1;
                            Some(caps.fallback_model)
                        }
                        Placement::Dropped => {
                            dropped += 1;
                            None
                        }
                    };
                    right += model.is_some_and(|m| right_by(m, i)) as usize;
                }
            }
            Some(BatchAccuracy {
                batch,
                accuracy: pct(right),
                fallback,
                dropped,
            })
        }
    };
    Ok(PoolAccuracy {
        records: n,
        alone,
        per_input,
        choices: chosen,
        batch,
    })
}
