//! A small pool of random models and the check of one input through the encrypted pool
//! against the plaintext reference (shared by the `test` and `default` preset tests).

use super::wide::{hidden_read_slack, noise_steps};
use veilmoe::engine::{ClientKey, Evaluator, OpEvent, OpKind, ServerKey};
use veilmoe::model::capacity::Capacities;
use veilmoe::model::pool::{place, Placement, PoolCapacities};
use veilmoe::model::pool::{Pool, PoolRouter};
use veilmoe::model::pool_router::chain_winner;
use veilmoe::model::{
    Activation, ExpertCount, FfnKind, Gating, HiddenDim, InputQuantizer, ModelDim, MoeConfig,
    QuantParams, QuantizedClassifier, QuantizedMoe, Rounding, TopK,
};
use veilmoe::protocols::layer::decrypt_terms;
use veilmoe::protocols::pool::PoolLayer;
use veilmoe::protocols::Select;

pub const D: usize = 4;

pub fn classifier(h: usize, e: usize, ffn: FfnKind, seed: u64) -> QuantizedClassifier {
    let cfg = MoeConfig {
        d: ModelDim(D),
        h: HiddenDim(h),
        experts: ExpertCount(e),
        top_k: TopK(1),
        ffn,
        gating: Gating::SoftmaxSelected,
    };
    let mut moe = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), seed, true);
    super::exact_first_stage(&mut moe, seed);
    QuantizedClassifier {
        moe,
        input: InputQuantizer {
            input_scale: 0.5,
            input_zero_point: 0,
        },
        x_scale: 0.0,
        y_scale: 1.0,
        head: None,
    }
}

/// Three models of increasing size; the router scores model m by feature m.
pub fn pool() -> Pool {
    Pool {
        models: vec![
            classifier(3, 1, FfnKind::Plain(Activation::Relu), 4),
            classifier(4, 2, FfnKind::Plain(Activation::Silu), 2),
            classifier(4, 4, FfnKind::GatedSilu, 3),
        ],
        // One feature per model, no bias: model m scores feature m. The chain's sign reads
        // take differences in [-15, 15] at width 6 (a step of 4): an input whose compared
        // features differ by 0, 1 or 2 sits within a step of an edge, and tests avoid them.
        router: PoolRouter {
            weights: vec![1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
            bias: None,
            quant: QuantParams::for_message_bits(4),
        },
    }
}

/// A random input whose router chain reads are all clear of their edges, so that the
/// encrypted choice must equal the reference's.
pub fn clear_input(pool: &Pool, rng: &mut super::Rng) -> Vec<i64> {
    loop {
        let x = rng.vec(D, -8, 7);
        if pool.choose(&x, &mut Rounding::Exact).clear_of_edges {
            return x;
        }
    }
}

/// Runs `x` (an input clear of the chain's edges) through the encrypted pool and checks it: the
/// router chain's bits and choice equal the reference's, the chosen model's output equals its
/// reference up to noise and off-by-one hidden reads, every other model's terms are zero.
/// Returns the chosen model.
pub fn check_pool_input(client: &ClientKey, ev: &Evaluator, layer: &PoolLayer, x: &[i64]) -> usize {
    let pool = layer.pool();
    let x = x.to_vec();
    let want = pool.choose(&x, &mut Rounding::Exact);
    assert!(
        want.clear_of_edges,
        "test input {x:?} has a chain read within a read step of its edge: {want:?}"
    );
    let out = layer
        .forward(ev, &layer.encrypt(client, &x).unwrap(), &Select)
        .unwrap();
    let decisions = client.decrypt_lwe(&out.decisions).unwrap();
    assert_eq!(decisions, want.decisions, "router chain on {x:?}");
    let (m, y) = out.decrypt(client, pool).unwrap();
    assert_eq!(m, want.model, "choice on {x:?}");
    // the chosen model's output: its reference, up to noise and off-by-one hidden reads
    check_model_output(pool, m, &x, &y, &out.terms[m]);
    // every other model's terms: encryptions of zero
    for (k, terms) in out.terms.iter().enumerate().filter(|(k, _)| *k != m) {
        for (_, t) in terms {
            let v = client.decrypt_lwe(t).unwrap();
            assert!(
                v.iter().all(|&z| z.abs() <= noise_steps(t)),
                "model {k} (not chosen) decrypts to {v:?}"
            );
        }
    }
    m
}

/// Per output value of pool model `m` on `x`: its integer reference and how far a correct
/// decryption may be from it (the terms' noise plus one off-by-one hidden read per unit, through
/// W2).
pub fn reference_with_tolerance(
    pool: &Pool,
    m: usize,
    x: &[i64],
    terms: &[(i64, veilmoe::engine::LweVector)],
) -> Vec<(i64, i64)> {
    let model = &pool.models[m].moe;
    let want = model.reference(x, &mut Rounding::Exact);
    let (e, h) = (want.selected[0], model.config.h.0);
    let slack = hidden_read_slack(model);
    let noise: i64 = terms.iter().map(|(c, t)| c * noise_steps(t)).sum();
    want.y
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let l1: i64 = model.experts[e].w2[i * h..(i + 1) * h]
                .iter()
                .map(|w| w.abs())
                .sum();
            (b, l1 * slack + noise)
        })
        .collect()
}

/// The decrypted output `y` of pool model `m` on `x` (from `terms`) equals the model's integer
/// reference within [`reference_with_tolerance`].
pub fn check_model_output(
    pool: &Pool,
    m: usize,
    x: &[i64],
    y: &[i64],
    terms: &[(i64, veilmoe::engine::LweVector)],
) {
    for (i, (a, (b, tol))) in y
        .iter()
        .zip(reference_with_tolerance(pool, m, x, terms))
        .enumerate()
    {
        assert!(
            (a - b).abs() <= tol,
            "model {m} output {i}: {a} vs reference {b} (allowed {tol})"
        );
    }
}

pub fn capacities() -> PoolCapacities {
    PoolCapacities {
        per_model: Capacities::new(vec![2, 1, 1]).unwrap(),
        fallback_model: 0,
        fallback_slots: 2,
    }
}

/// Runs one batch and checks it: the routing decrypted from the chain bits equals the
/// reference's (inputs clear of the chain's edges), placements equal the rule on it; every slot (empty ones hold input 0) equals its model's reference on its input; each
/// input's answer is its slot's. Returns the placements and the operation trace.
pub fn check_batch(
    client: &ClientKey,
    server: &ServerKey,
    layer: &PoolLayer,
    xs: &[Vec<i64>],
) -> (Vec<Placement>, Vec<OpEvent>, usize, usize) {
    check_batch_with(client, server, layer, xs, &capacities())
}

/// [`check_batch`] under other capacities.
pub fn check_batch_with(
    client: &ClientKey,
    server: &ServerKey,
    layer: &PoolLayer,
    xs: &[Vec<i64>],
    caps: &PoolCapacities,
) -> (Vec<Placement>, Vec<OpEvent>, usize, usize) {
    let ev = Evaluator::new(server);
    let pool = layer.pool();
    let caps = caps.clone();
    let inputs: Vec<_> = xs
        .iter()
        .map(|x| layer.encrypt(client, x).unwrap())
        .collect();
    let out = layer.forward_batch(&ev, &inputs, &caps).unwrap();
    // the documented overflow cost: one AND per input and model that can overflow, none when
    // the fallback covers the batch (no second round reads the flags)
    let ands: usize = if caps.covers(xs.len()) {
        0
    } else {
        caps.per_model
            .per_destination()
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| xs.len().saturating_sub(c))
            .sum()
    };
    assert_eq!(out.covered, caps.covers(xs.len()));
    let counts = ev.ops().counts();
    let got = counts
        .get("dispatch-overflow")
        .and_then(|c| c.get(&OpKind::Pbs))
        .copied()
        .unwrap_or(0);
    assert_eq!(got, ands as u64, "overflow ANDs");
    let choices: Vec<usize> = out
        .decisions
        .iter()
        .map(|l| chain_winner(&client.decrypt_lwe(l).unwrap()).unwrap())
        .collect();
    for (x, &c) in xs.iter().zip(&choices) {
        let want = pool.choose(x, &mut Rounding::Exact);
        assert!(
            want.clear_of_edges,
            "test input {x:?} is not clear: {want:?}"
        );
        assert_eq!(c, want.model, "choice on {x:?}");
    }
    let want = place(&choices, &caps).unwrap();
    let got = out.decrypt_placements(client).unwrap();
    assert_eq!(got, want, "placements for choices {choices:?}");
    // which input each slot holds: its placed input, input 0 when empty (all-zero source
    // bits); a covering fallback's slots hold every input in order
    let mut holder = vec![0usize; out.slots.len()];
    if out.covered {
        let first = out.slots.len() - xs.len();
        for (i, h) in holder[first..].iter_mut().enumerate() {
            *h = i;
        }
    }
    for (i, p) in want.iter().enumerate() {
        if let Some(slot) = out.answer_slot(i, *p).unwrap() {
            holder[slot] = i;
        }
    }
    let (mut held, mut distinguished) = (0, 0);
    for (slot, terms) in out.slots.iter().enumerate() {
        let m = out.slot_model(slot).unwrap();
        let y = decrypt_terms(client, terms).unwrap();
        check_model_output(pool, m, &xs[holder[slot]], &y, terms);
        // power: a slot holding input i != 0 whose reference is beyond both tolerances from
        // input 0's (what a slot with all-zero source bits computes) proves its wiring
        if holder[slot] != 0 {
            held += 1;
            let own = reference_with_tolerance(pool, m, &xs[holder[slot]], terms);
            let zero = reference_with_tolerance(pool, m, &xs[0], terms);
            if own
                .iter()
                .zip(&zero)
                .any(|((a, ta), (b, tb))| (a - b).abs() > ta + tb)
            {
                distinguished += 1;
            }
        }
    }
    for (i, answer) in out.decrypt(client, pool).unwrap().iter().enumerate() {
        match (want[i], answer) {
            (Placement::Dropped, None) => {}
            (Placement::Chosen(g), Some(a)) => assert_eq!(Some(a.model), caps.model_of(g)),
            (Placement::Fallback(_), Some(a)) => assert_eq!(a.model, caps.fallback_model),
            (p, a) => panic!("input {i}: placement {p:?}, answer {a:?}"),
        }
    }
    eprintln!("placements {got:?}: {distinguished} of {held} slots holding inputs other than 0 distinguished from input 0");
    (got, ev.ops().trace(), held, distinguished)
}
