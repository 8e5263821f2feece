//! Encrypted routing over a pool of models, per input, on the `test` preset: the router chain's
//! bits and choice equal to the reference's, the chosen
//! model's output equal to its reference, every other model's terms zero, and operation traces
//! that do not depend on which model was chosen; and batches with per-model capacities and a
//! fallback model, against the plaintext placement rule (`veilmoe_model::pool::place`).

mod common;

use common::pool::{check_batch, check_batch_with, check_pool_input, clear_input, pool, D};
use common::{test_keys, Rng};
use veilmoe::engine::Evaluator;
use veilmoe::model::capacity::Capacities;
use veilmoe::model::pool::Placement;
use veilmoe::model::pool::PoolCapacities;
use veilmoe::model::Rounding;
use veilmoe::protocols::pool::PoolLayer;
use veilmoe::protocols::Select;

#[test]
fn pool_per_input_matches_the_reference() {
    let keys = test_keys();
    let ev = Evaluator::new(&keys.server);
    let pool = pool();
    let layer = PoolLayer::new(&ev, pool.clone()).unwrap();
    let mut rng = Rng::new(5);
    let mut chosen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let x = clear_input(&pool, &mut rng);
        chosen.insert(check_pool_input(&keys.client, &ev, &layer, &x));
    }
    assert!(
        chosen.len() >= 2,
        "inputs should reach several models: {chosen:?}"
    );
}

/// Obliviousness: inputs answered by different pool models issue identical operation traces.
#[test]
fn pool_traces_do_not_depend_on_the_choice() {
    let keys = test_keys();
    let pool = pool();
    let layer = PoolLayer::new(&Evaluator::new(&keys.server), pool.clone()).unwrap();
    let mut rng = Rng::new(8);
    let mut traces = Vec::new();
    let mut chosen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let x = rng.vec(D, -8, 7);
        // any input: the trace must not depend on it, edges or not
        let ev = Evaluator::new(&keys.server);
        let out = layer
            .forward(&ev, &layer.encrypt(&keys.client, &x).unwrap(), &Select)
            .unwrap();
        chosen.insert(out.decrypt(&keys.client, &pool).unwrap().0);
        traces.push(ev.ops().trace());
    }
    assert!(
        chosen.len() >= 2,
        "inputs should reach several models: {chosen:?}"
    );
    for t in &traces[1..] {
        assert_eq!(t, &traces[0], "the trace differs between inputs");
    }
}

/// Batches with capacities: varied routing, and a batch of distinct inputs that all pick the
/// same model (its slot fills, the fallback fills, the rest is dropped); identical operation
/// traces.
#[test]
fn pool_batches_follow_the_placement_rule_obliviously() {
    let keys = test_keys();
    let layer = PoolLayer::new(&Evaluator::new(&keys.server), pool()).unwrap();
    let mut rng = Rng::new(21);
    let mut batches: Vec<Vec<Vec<i64>>> = (0..2)
        .map(|_| (0..6).map(|_| clear_input(&pool(), &mut rng)).collect())
        .collect();
    // every input (distinct inputs) picks model 1: one fills its slot, two the fallback's, the
    // rest is dropped
    batches.push(vec![
        vec![-7, 2, -3, -8],
        vec![-8, 1, -2, 7],
        vec![-8, 1, -8, 5],
        vec![-6, 3, 0, 2],
        vec![-8, 2, -8, -1],
        vec![-5, 1, -6, 4],
    ]);
    // each of them picks model 1 by the exact reference, clear of the chain's edges (so the
    // encrypted router must pick it too)
    let pool_ref = layer.pool();
    for x in &batches[2] {
        let c = pool_ref.choose(x, &mut Rounding::Exact);
        assert!(c.model == 1 && c.clear_of_edges, "input {x:?}: {c:?}");
    }
    let mut traces = Vec::new();
    let mut powers = Vec::new();
    let mut last = Vec::new();
    let mut kinds = std::collections::HashSet::new();
    for xs in &batches {
        let (placements, trace, held, distinguished) =
            check_batch(&keys.client, &keys.server, &layer, xs);
        powers.push((held, distinguished));
        last = placements.clone();
        for p in placements {
            kinds.insert(std::mem::discriminant(&p));
        }
        traces.push(trace);
    }
    assert_eq!(
        kinds.len(),
        3,
        "chosen, fallback and dropped should all occur"
    );
    // the last batch's inputs are chosen so that every slot holding an input other than 0
    // (its fallback slots included) is told apart from input 0
    let (held, distinguished) = powers[2];
    let chosen = last
        .iter()
        .filter(|p| matches!(p, Placement::Chosen(_)))
        .count();
    assert_eq!(
        chosen, 1,
        "every input of the last batch picks model 1: {last:?}"
    );
    assert!(held >= 2 && distinguished == held, "test power {powers:?}");
    for t in &traces[1..] {
        assert_eq!(t, &traces[0], "the trace differs between batches");
    }
}

/// Capacities far above the batch (as a plan for a low overflow rate gives): each entry's
/// overflow flag stays a sum of one AND per model, so its noise does not grow with the slots
/// (the sum of every threshold crossing it once was exceeded the PBS budget at 13 slots).
#[test]
fn generous_capacities_keep_the_overflow_flags_within_the_budget() {
    let keys = test_keys();
    let layer = PoolLayer::new(&Evaluator::new(&keys.server), pool()).unwrap();
    let mut rng = Rng::new(34);
    let xs: Vec<Vec<i64>> = (0..8).map(|_| clear_input(&pool(), &mut rng)).collect();
    let caps = PoolCapacities {
        per_model: Capacities::new(vec![4, 6, 3]).unwrap(),
        fallback_model: 1,
        fallback_slots: 2,
    };
    let (placements, ..) = check_batch_with(&keys.client, &keys.server, &layer, &xs, &caps);
    assert!(
        placements
            .iter()
            .all(|p| matches!(p, Placement::Chosen(_) | Placement::Fallback(_))),
        "{placements:?}"
    );
}

/// A covering fallback (its extra slots hold every input that can overflow): the fallback model
/// runs on every input in place and only the other models are dispatched into. The answers
/// follow the same batch rule: a random batch, and one where every input picks model 1 (one
/// takes its slot, the rest fall back to model 0); identical traces, and no overflow ANDs,
/// flag refreshes or second round.
#[test]
fn a_covering_fallback_runs_in_place_and_follows_the_rule() {
    let keys = test_keys();
    let layer = PoolLayer::new(&Evaluator::new(&keys.server), pool()).unwrap();
    let caps = PoolCapacities {
        per_model: Capacities::new(vec![0, 1, 1]).unwrap(),
        fallback_model: 0,
        fallback_slots: 6,
    };
    assert!(caps.covers(6));
    let mut rng = Rng::new(55);
    let random: Vec<Vec<i64>> = (0..6).map(|_| clear_input(&pool(), &mut rng)).collect();
    // distinct inputs that all pick model 1, clear of the chain's edges, whose fallback
    // outputs (model 0's) are far from the first's: a fallback slot computed from the wrong
    // input would show
    let reference = pool();
    let y0 = |x: &[i64]| reference.models[0].moe.reference(x, &mut Rounding::Exact).y;
    let mut same: Vec<Vec<i64>> = Vec::new();
    for _ in 0..100_000 {
        let x = clear_input(&reference, &mut rng);
        let far = |f: &Vec<i64>| y0(f).iter().zip(y0(&x)).any(|(a, b)| (a - b).abs() > 4);
        if reference.choose(&x, &mut Rounding::Exact).model == 1 && same.first().is_none_or(far) {
            same.push(x);
        }
        if same.len() == 6 {
            break;
        }
    }
    assert_eq!(same.len(), 6, "no six inputs for the overflowing batch");
    let mut traces = Vec::new();
    for xs in [&random, &same] {
        let (placements, trace, held, distinguished) =
            check_batch_with(&keys.client, &keys.server, &layer, xs, &caps);
        assert!(!placements.contains(&Placement::Dropped), "{placements:?}");
        traces.push((placements, trace, held, distinguished));
    }
    let fallen = traces[1]
        .0
        .iter()
        .filter(|p| matches!(p, Placement::Fallback(_)))
        .count();
    assert_eq!(fallen, 5, "{:?}", traces[1].0);
    // every fallback slot holds its own input: those of the distinct inputs 1.. must be told
    // apart from input 0's
    let (held, distinguished) = (traces[1].2, traces[1].3);
    assert!(
        held >= 5 && distinguished == held,
        "test power: {distinguished} of {held}"
    );
    assert_eq!(
        traces[0].1, traces[1].1,
        "the trace differs between batches"
    );
    assert!(
        !traces[0]
            .1
            .iter()
            .any(|e| e.stage.starts_with("dispatch-fallback") || e.stage == "dispatch-overflow"),
        "a covering fallback needs no second round"
    );
}
