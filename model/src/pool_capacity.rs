//! Public capacities of a pool batch chosen from the router's statistics (issue 14 item 5).
//!
//! Capacities are public and fixed before any input is seen, so they come from calibration: the
//! router's choices on calibration records. Batches of `T` are drawn from those choices (with
//! replacement, seeded) and placed by the batch rule ([`crate::pool::place`]); the plan is the
//! cheapest found greedily whose measured rates stay within the targets:
//! - **overflow**: inputs not answered by their chosen model (answered by the fallback, or
//!   dropped). Slots go, one at a time, to the model where one more slot removes the most
//!   overflow per unit of its cost;
//! - **drop**: inputs answered by no model. Fallback slots are added until it holds (and until
//!   the slots cover the batch, which a batch must).
//!
//! A **covering** plan ([`Coverage::Fallback`]) gives the fallback model no slots of its own and
//! `T` extra slots: it answers every input not placed in another model, nothing is dropped,
//! and the encrypted batch runs it on every input in place with no dispatch into it
//! ([`PoolCapacities::covers`]). Slots then go only to the other models, for the overflow
//! target. Cheaper when most inputs choose the fallback model anyway.

use crate::capacity::{Capacities, MAX_CAPACITY};
use crate::error::{pool_error, Result};
use crate::pool::{place, Placement, PoolCapacities};
use crate::random::SplitMix;

/// Batches drawn to measure a plan's rates.
pub const PLAN_BATCHES: usize = 4000;

/// What a plan was asked for and what it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityPlan {
    pub capacities: PoolCapacities,
    /// Measured fraction of inputs not answered by their chosen model.
    pub overflow: f64,
    /// Measured fraction of inputs answered by no model.
    pub dropped: f64,
    /// `sum_m cost_m * (slots of m) / T`: the models' cost per input under the plan.
    pub cost_per_input: f64,
}

/// Whether a plan gives the fallback model the whole batch (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Slots for every model; the fallback's extra slots only for the drop target.
    Slots,
    /// The fallback model answers every input not placed in another model.
    Fallback,
}

/// Overflow and drop rates of `caps` over `batches` (each a list of chosen models): an input
/// overflows when a model other than its chosen one answers it, or none.
fn rates(batches: &[Vec<usize>], caps: &PoolCapacities) -> Result<(f64, f64)> {
    let (mut over, mut dropped, mut n) = (0usize, 0usize, 0usize);
    for b in batches {
        for (p, &chosen) in place(b, caps)?.iter().zip(b) {
            n += 1;
            match p {
                Placement::Chosen(_) => {}
                Placement::Fallback(_) => over += (chosen != caps.fallback_model) as usize,
                Placement::Dropped => {
                    over += 1;
                    dropped += 1;
                }
            }
        }
    }
    Ok((over as f64 / n as f64, dropped as f64 / n as f64))
}

fn cost(caps: &PoolCapacities, costs: &[f64], batch: usize) -> f64 {
    let slots: f64 = caps
        .per_model
        .per_destination()
        .iter()
        .zip(costs)
        .map(|(&c, &k)| c as f64 * k)
        .sum();
    (slots + caps.fallback_slots as f64 * costs[caps.fallback_model]) / batch as f64
}

/// What a plan aims at: overflow and drop rates, and whether the fallback covers the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanTargets {
    pub max_overflow: f64,
    pub max_drop: f64,
    pub coverage: Coverage,
}

/// The cheapest capacities found for batches of `batch` inputs whose measured overflow and drop
/// rates stay within the targets, from the router's `choices` on calibration records and each
/// model's `costs`.
pub fn plan_capacities(
    choices: &[usize],
    costs: &[f64],
    batch: usize,
    fallback_model: usize,
    targets: PlanTargets,
    seed: u64,
) -> Result<CapacityPlan> {
    let PlanTargets {
        max_overflow,
        max_drop,
        coverage,
    } = targets;
    let models = costs.len();
    if choices.is_empty() || batch == 0 || models == 0 {
        return Err(pool_error(
            "a capacity plan needs calibration choices, a batch and the models' costs",
        ));
    }
    if choices.iter().any(|&c| c >= models) || fallback_model >= models {
        return Err(pool_error(format!(
            "a capacity plan for {models} models got a choice or fallback outside them"
        )));
    }
    if !(0.0..1.0).contains(&max_overflow)
        || !(0.0..1.0).contains(&max_drop)
        || costs.iter().any(|c| !(c.is_finite() && *c > 0.0))
    {
        return Err(pool_error(
            "overflow and drop targets must be in [0, 1) and costs positive",
        ));
    }
    let mut rng = SplitMix(seed);
    let batches: Vec<Vec<usize>> = (0..PLAN_BATCHES)
        .map(|_| {
            (0..batch)
                .map(|_| choices[rng.below(choices.len() as u64) as usize])
                .collect()
        })
        .collect();
    let covering = coverage == Coverage::Fallback;
    let mut caps = PoolCapacities {
        per_model: Capacities::new(vec![0; models])?,
        fallback_model,
        fallback_slots: if covering { batch } else { 0 },
    };
    let with_slot = |caps: &PoolCapacities, m: usize| -> Result<PoolCapacities> {
        let mut slots = caps.per_model.per_destination().to_vec();
        slots[m] += 1;
        Ok(PoolCapacities {
            per_model: Capacities::new(slots)?,
            ..caps.clone()
        })
    };
    let (mut over, _) = rates(&batches, &caps)?;
    while over > max_overflow {
        let mut best: Option<(f64, PoolCapacities, f64)> = None;
        for (m, &cost_m) in costs.iter().enumerate() {
            if caps.per_model.per_destination()[m] >= batch.min(MAX_CAPACITY)
                || (covering && m == fallback_model)
            {
                continue;
            }
            let next = with_slot(&caps, m)?;
            let (o, _) = rates(&batches, &next)?;
            let gain = (over - o) / cost_m;
            if best.as_ref().is_none_or(|(g, _, _)| gain > *g) {
                best = Some((gain, next, o));
            }
        }
        match best {
            // a slot that removes no overflow (every model that could take one is at its limit
            // or never chosen) buys nothing: the fallback slots take the rest
            Some((gain, next, o)) if gain > 0.0 => (caps, over) = (next, o),
            _ => break,
        }
    }
    loop {
        let (o, d) = rates(&batches, &caps)?;
        if d <= max_drop && caps.total() >= batch {
            return Ok(CapacityPlan {
                cost_per_input: cost(&caps, costs, batch),
                capacities: caps,
                overflow: o,
                dropped: d,
            });
        }
        if caps.fallback_slots >= MAX_CAPACITY {
            return Err(pool_error(format!(
                "no capacities of at most {MAX_CAPACITY} slots per model and fallback meet a \
                 drop rate of {max_drop} for batches of {batch} (measured {d:.4}): use smaller \
                 batches or a looser target"
            )));
        }
        caps.fallback_slots += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(max_overflow: f64, max_drop: f64) -> PlanTargets {
        PlanTargets {
            max_overflow,
            max_drop,
            coverage: Coverage::Slots,
        }
    }

    #[test]
    fn plans_follow_the_choices_and_meet_their_targets() {
        // 3 of 4 inputs pick model 0
        let choices: Vec<usize> = (0..400).map(|i| (i % 4 == 3) as usize).collect();
        let plan = plan_capacities(&choices, &[1.0, 4.0], 8, 0, targets(0.05, 0.005), 1).unwrap();
        let slots = plan.capacities.per_model.per_destination().to_vec();
        assert!(slots[0] > slots[1], "{plan:?}");
        assert!(plan.overflow <= 0.05 && plan.dropped <= 0.005, "{plan:?}");
        assert!(plan.capacities.total() >= 8);
        // a looser target never costs more
        let loose = plan_capacities(&choices, &[1.0, 4.0], 8, 0, targets(0.2, 0.005), 1).unwrap();
        assert!(
            loose.cost_per_input <= plan.cost_per_input,
            "{loose:?} {plan:?}"
        );
        // everything on one model: it gets the whole batch
        let plan = plan_capacities(&[1; 50], &[1.0, 4.0], 8, 0, targets(0.0, 0.0), 1).unwrap();
        assert_eq!(plan.capacities.per_model.per_destination(), &[0, 8]);
        assert_eq!(plan.overflow, 0.0);
        // a model never gets more slots than the dispatch can count: the rest falls back
        let plan = plan_capacities(&[1; 50], &[1.0, 4.0], 20, 0, targets(0.0, 0.0), 1).unwrap();
        assert_eq!(
            plan.capacities.per_model.per_destination(),
            &[0, MAX_CAPACITY]
        );
        assert_eq!(plan.capacities.fallback_slots, 20 - MAX_CAPACITY);
        // and a batch that neither can hold is refused, not planned
        assert!(plan_capacities(
            &[1; 50],
            &[1.0, 4.0],
            2 * MAX_CAPACITY + 1,
            0,
            targets(0.5, 0.0),
            1
        )
        .is_err());
    }

    #[test]
    fn a_covering_plan_gives_the_fallback_the_batch() {
        // 3 of 4 inputs pick model 1, the fallback: it gets no slots of its own and the whole
        // batch as extra slots; model 0 gets slots for its share
        let choices: Vec<usize> = (0..400).map(|i| (i % 4 != 3) as usize).collect();
        let targets = PlanTargets {
            max_overflow: 0.05,
            max_drop: 0.0,
            coverage: Coverage::Fallback,
        };
        let plan = plan_capacities(&choices, &[4.0, 1.0], 16, 1, targets, 1).unwrap();
        let caps = &plan.capacities;
        assert_eq!(caps.per_model.per_destination()[1], 0, "{plan:?}");
        assert_eq!(caps.fallback_slots, 16);
        assert!(caps.covers(16) && caps.validate(2, 16).is_ok());
        assert!(caps.per_model.per_destination()[0] >= 4, "{plan:?}");
        // inputs that chose the fallback model are answered by it: not overflow
        assert!(plan.overflow <= 0.05 && plan.dropped == 0.0, "{plan:?}");
    }

    #[test]
    fn bad_plans_are_refused() {
        assert!(plan_capacities(&[], &[1.0], 8, 0, targets(0.1, 0.0), 1).is_err());
        assert!(plan_capacities(&[2], &[1.0, 2.0], 8, 0, targets(0.1, 0.0), 1).is_err());
        assert!(plan_capacities(&[0], &[1.0, 2.0], 8, 2, targets(0.1, 0.0), 1).is_err());
        assert!(plan_capacities(&[0], &[1.0, 0.0], 8, 0, targets(0.1, 0.0), 1).is_err());
        assert!(plan_capacities(&[0], &[1.0, 2.0], 8, 0, targets(1.0, 0.0), 1).is_err());
    }
}
