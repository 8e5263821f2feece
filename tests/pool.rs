//! Encrypted routing over a pool of models, per input, on the `test` preset: the router's
//! logits within one read step of the reference and its choice exact from them, the chosen
//! model's output equal to its reference, every other model's terms zero, and operation traces
//! that do not depend on which model was chosen.

mod common;

use common::pool::{check_pool_input, pool, D};
use common::{test_keys, Rng};
use veilmoe::engine::Evaluator;
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
        let x = rng.vec(D, -8, 7);
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
