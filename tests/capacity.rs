//! The MoE layer over a batch with expert capacities on the `test` preset: against the
//! plaintext rule of `veilmoe_model::capacity` and the integer reference
//! (`common::capacity::check_capacity_batch`), and obliviousness (the operation trace does not
//! depend on the routing, including a batch where every token picks the same expert and
//! overflows).

mod common;

use common::capacity::{check_capacity_batch, check_capacity_model};
use common::{test_keys, Rng};
use veilmoe::engine::{Evaluator, OpKind, PackedGlwe};
use veilmoe::model::capacity::Capacities;
use veilmoe::model::{index_bits, Activation, FfnKind, Gating, QuantParams, QuantizedMoe};
use veilmoe::protocols::MoeLayer;

use common::small_config as config;

#[test]
fn capacity_batches_match_the_rule_and_the_reference() {
    let relu = FfnKind::Plain(Activation::Relu);
    let silu = FfnKind::Plain(Activation::Silu);
    let mixtral = Gating::SoftmaxSelected;
    let cases = [
        // (config, tokens, capacities, seed)
        (config(4, 1, relu, mixtral), 8, vec![2, 2, 2, 2], 1),
        (config(4, 1, relu, mixtral), 8, vec![3, 1, 2, 0], 2),
        (
            config(4, 2, FfnKind::GatedSilu, mixtral),
            6,
            vec![3, 3, 3, 3],
            3,
        ),
        (
            config(4, 1, silu, Gating::SoftmaxThenTopK),
            8,
            vec![3, 3, 3, 3],
            4,
        ),
        (config(1, 1, relu, mixtral), 3, vec![2], 5),
        // 18 entries: the running counts are read back (clamped) before they outgrow 4 bits
        (config(2, 1, silu, mixtral), 18, vec![9, 4], 6),
    ];
    let mut dropped = 0;
    for (cfg, tokens, caps, seed) in cases {
        let keys = test_keys();
        let (n, d) =
            check_capacity_batch(&keys.client, &keys.server, cfg, tokens, caps.clone(), seed);
        eprintln!(
            "E={} k={} T={tokens} capacities {caps:?}: {d} of {n} entries dropped",
            cfg.experts.0, cfg.top_k.0
        );
        dropped += d;
    }
    // E = 1 with 2 slots for 3 tokens drops one entry: the overflow path is exercised
    assert!(dropped >= 1);
}

/// A Qwen2-MoE-like layer (softmax then top-k, gated SiLU, a shared expert of another width):
/// every token's output also holds its shared expert's gated output, which the client adds.
#[test]
fn capacity_batch_with_a_shared_expert() {
    let keys = test_keys();
    for (k, seed) in [(1, 21), (2, 22)] {
        let cfg = config(4, k, FfnKind::GatedSilu, Gating::SoftmaxThenTopK);
        let model = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), seed, true)
            .with_random_shared(6, seed);
        let (n, d) = check_capacity_model(&keys.client, &keys.server, model, 5, vec![2; 4], seed);
        eprintln!("shared expert, k={k}: {d} of {n} entries dropped");
    }
}

/// A capacity batch of a model with calibrated ranges (reads one bit finer, outputs one bit
/// narrower than the worst case): the declared boxes hold through the dispatch and the
/// client-side combination.
#[test]
fn capacity_batch_with_calibrated_ranges() {
    let keys = test_keys();
    let cfg = config(4, 2, FfnKind::GatedSilu, Gating::SoftmaxSelected);
    let model = common::calibrated::calibrated(
        QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), 23, true),
        1,
        1,
    );
    let (n, d) = check_capacity_model(&keys.client, &keys.server, model, 6, vec![3; 4], 23);
    eprintln!("calibrated ranges: {d} of {n} entries dropped");
}

/// Obliviousness: batches routed differently, including one where every token picks the same
/// expert (most entries overflow), issue identical operation traces.
#[test]
fn capacity_traces_do_not_depend_on_the_routing() {
    let keys = test_keys();
    for k in [1, 2] {
        let cfg = config(4, k, FfnKind::GatedSilu, Gating::SoftmaxSelected);
        // Exact reads: identical tokens route identically (with requantizing router reads, a
        // token near a tie could route its copies differently: the cause of a failure of the
        // repeated-token batch in 1 of 20 runs).
        let mut model = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), 9, true);
        common::exact_first_stage(&mut model, 9);
        let ev0 = Evaluator::new(&keys.server);
        let layer = MoeLayer::new(&ev0, model.clone()).unwrap();
        let caps = Capacities::from_factor(4, 5 * k, 1.0).unwrap();
        let mut rng = Rng::new(17);
        let mut batches: Vec<Vec<Vec<i64>>> = (0..3)
            .map(|_| (0..5).map(|_| rng.vec(4, -8, 7)).collect())
            .collect();
        batches.push(vec![batches[0][0].clone(); 5]);
        let mut traces = Vec::new();
        let mut dropped = Vec::new();
        for xs in &batches {
            let ev = Evaluator::new(&keys.server);
            let cts: Vec<PackedGlwe> = xs
                .iter()
                .map(|x| layer.encrypt(&keys.client, x).unwrap())
                .collect();
            let out = layer.forward_capacity(&ev, &cts, &caps).unwrap();
            let slots = out.decrypt_slots(&keys.client).unwrap();
            dropped.push(slots.iter().filter(|s| s.is_none()).count());
            // the dispatch's documented op counts: one PBS per threshold that can be non-zero,
            // one circuit bootstrap per source bit of each slot (no clamp below 15 entries)
            let n = 5 * k;
            let counts = ev.ops().counts();
            let thresholds: usize = caps
                .per_destination()
                .iter()
                .map(|&c| (1..=c).map(|j| (n + 1).saturating_sub(j)).sum::<usize>())
                .sum();
            assert_eq!(counts["dispatch-count"][&OpKind::Pbs], thresholds as u64);
            assert_eq!(
                counts["dispatch-ggsw"][&OpKind::CircuitBootstrap],
                (caps.total() * index_bits(n)) as u64
            );
            // no overflow flags: nothing here reads them
            assert!(!counts.contains_key("dispatch-overflow"));
            traces.push(ev.ops().trace());
        }
        // the repeated token fills its experts' slots and overflows the rest of its choices
        assert_eq!(
            dropped[3],
            k * (5 - caps.per_destination()[0]),
            "k={k}: dropped per batch {dropped:?}"
        );
        for t in &traces[1..] {
            assert_eq!(t, &traces[0], "k={k}: the trace differs between batches");
        }
    }
}
