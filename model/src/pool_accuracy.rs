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
fn predictions(pool: &Pool, data: &Dataset, rounding: &mut Rounding) -> Result<Vec<Vec<usize>>> {
    pool.models
        .iter()
        .map(|m| {
            data.features
                .iter()
                .map(|r| Ok(argmax(&m.reference_outputs(r, rounding)?)))
                .collect()
        })
        .collect()
}

/// The router's choice on every record.
pub fn pool_choices(pool: &Pool, data: &Dataset, rounding: &mut Rounding) -> Result<Vec<usize>> {
    data.features
        .iter()
        .map(|r| {
            let x = pool.models[0].quantize_input(r)?;
            Ok(pool.choose(&x, rounding).model)
        })
        .collect()
}

/// The pool's accuracy on `data` with exact reads; with `caps`, also of consecutive batches of
/// `batch` records.
pub fn pool_accuracy(
    pool: &Pool,
    data: &Dataset,
    caps: Option<(&PoolCapacities, usize)>,
) -> Result<PoolAccuracy> {
    pool_accuracy_with(pool, data, caps, &mut Rounding::Exact)
}

/// [`pool_accuracy`] with `rounding` for every read (the router's sign reads and the models'):
/// with a preset's simulated noise, what the encrypted pool is expected to reach, since near an
/// edge the encrypted read may fall either way.
pub fn pool_accuracy_with(
    pool: &Pool,
    data: &Dataset,
    caps: Option<(&PoolCapacities, usize)>,
    rounding: &mut Rounding,
) -> Result<PoolAccuracy> {
    let n = data.len();
    let choices = pool_choices(pool, data, rounding)?;
    let preds = predictions(pool, data, rounding)?;
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
                    fallback += matches!(p, Placement::Fallback(_)) as usize;
                    dropped += matches!(p, Placement::Dropped) as usize;
                    let model = caps.answering_model(p);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capacity::Capacities;
    use crate::pool::tests::pool;
    use crate::random::SplitMix;

    /// Records labelled by model 0's prediction, so model 0 is always right.
    pub(crate) fn data(pool: &Pool, n: usize, seed: u64) -> Dataset {
        let mut rng = SplitMix(seed);
        let features: Vec<Vec<f32>> = (0..n)
            .map(|_| (0..4).map(|_| rng.range(-8, 7) as f32 * 0.5).collect())
            .collect();
        let labels = features
            .iter()
            .map(|r| {
                argmax(
                    &pool.models[0]
                        .reference_outputs(r, &mut Rounding::Exact)
                        .unwrap(),
                )
            })
            .collect();
        Dataset {
            origin: "test records".into(),
            features,
            labels,
            classes: 4,
        }
    }

    #[test]
    fn accuracies_follow_the_choices_and_the_placements() {
        let p = pool();
        let d = data(&p, 64, 3);
        let covering = PoolCapacities {
            per_model: Capacities::new(vec![8, 8]).unwrap(),
            fallback_model: 0,
            fallback_slots: 0,
        };
        let a = pool_accuracy(&p, &d, Some((&covering, 8))).unwrap();
        assert_eq!(a.records, 64);
        assert_eq!(a.alone[0], 100.0);
        // per input: right wherever model 0 answers, or model 1 agrees with it
        let choices = pool_choices(&p, &d, &mut Rounding::Exact).unwrap();
        let right = (0..64)
            .filter(|&i| {
                let out = p.models[choices[i]]
                    .reference_outputs(&d.features[i], &mut Rounding::Exact)
                    .unwrap();
                argmax(&out) == d.labels[i]
            })
            .count();
        assert_eq!(a.per_input, 100.0 * right as f64 / 64.0);
        assert_eq!(a.choices.iter().sum::<usize>(), 64);
        assert!(a.choices.iter().all(|&c| c > 0), "{a:?}");
        // capacities that hold every batch: the batch mode is the per-input routing
        let b = a.batch.unwrap();
        assert_eq!((b.accuracy, b.fallback, b.dropped), (a.per_input, 0, 0));
        // one slot per model for batches of 2: an input whose model's slot is taken is dropped
        let tight = PoolCapacities {
            per_model: Capacities::new(vec![1, 1]).unwrap(),
            fallback_model: 0,
            fallback_slots: 0,
        };
        let b = pool_accuracy(&p, &d, Some((&tight, 2)))
            .unwrap()
            .batch
            .unwrap();
        let clashes = choices.chunks(2).filter(|c| c[0] == c[1]).count();
        assert_eq!((b.dropped, b.fallback), (clashes, 0));
        assert!(clashes > 0 && b.accuracy <= a.per_input);
    }
}
