//! Pairwise routing (`QuantizedMoe::pairwise_routing`) on the insecure `test` preset: the
//! experts chosen by comparing the router accumulators pairwise at the blind rotation's
//! resolution. Every comparison bit equals the exact comparison of the accumulators beyond the
//! noise margin of its threshold; the selection, gates and slot outputs follow from the
//! decrypted bits as the reference's rule says; the operation trace does not depend on the
//! data; the cost is the module's count; the flag survives the model file and unsupported
//! shapes are refused. The secure end-to-end check is
//! `default_preset::pairwise_routing_on_default`.

mod common;

use common::wide::{check_token, run_select_tokens};
use common::{test_keys, Rng};
use std::collections::BTreeSet;
use veilmoe::engine::Evaluator;
use veilmoe::model::model_file::{decode_model_file, encode_model_file};
use veilmoe::model::{
    quantize_with, Activation, ExpertCount, FfnKind, FloatMoeModel, Gating, HiddenDim, ModelDim,
    MoeConfig, QuantParams, QuantizeOptions, QuantizedMoe, Rounding, TopK,
};
use veilmoe::protocols::{MoeLayer, Select};

fn config(e: usize, k: usize, ffn: FfnKind, gating: Gating) -> MoeConfig {
    MoeConfig {
        d: ModelDim(8),
        h: HiddenDim(4),
        experts: ExpertCount(e),
        top_k: TopK(k),
        ffn,
        gating,
    }
}

/// Runs `tokens` random tokens (inputs in a narrow band for one token in three, so that some
/// accumulators nearly tie) and checks each ([`check_token`] checks the comparisons, then the
/// slot outputs and their combination from the decrypted routing); also checks the gates
/// against the reference's for the decrypted routing. Returns the PBS of one token, whether all
/// traces were equal, and the near ties seen.
fn run_checked(model: &QuantizedMoe, tokens: usize, seed: u64) -> (u64, bool, usize) {
    let k = test_keys();
    let mut rng = Rng::new(seed);
    let inputs: Vec<Vec<i64>> = (0..tokens)
        .map(|t| {
            let (lo, hi) = if t % 3 == 0 { (-1, 1) } else { (-8, 7) };
            rng.vec(model.config.d.0, lo, hi)
        })
        .collect();
    let runs = run_select_tokens((&k.client, &k.server), model, &inputs, |x, out, check| {
        let reads_logits =
            model.config.top_k.0 > 1 || model.config.gating == Gating::SoftmaxThenTopK;
        assert_eq!(out.routing.logits.is_some(), reads_logits);
        let logits = match &out.routing.logits {
            Some(l) => k.client.decrypt_lwe(l).unwrap(),
            None => vec![0; model.config.experts.0],
        };
        let bits = k
            .client
            .decrypt_lwe(out.routing.comparisons.as_ref().expect("pairwise"))
            .unwrap();
        let near = common::wide::check_comparisons(&k.client, model, x, &bits);
        let (selected, slot_logits, sums) = model.route_pairwise(&bits, &logits);
        let mut cycles = 0;
        assert_eq!(selected, check.selected);
        // where read, the logits are read exactly as for the tournament
        let exact = model.logits(&model.router_accumulators(x), &mut Rounding::Exact);
        for (a, b) in logits.iter().zip(&exact).filter(|_| reads_logits) {
            assert!((a - b).abs() <= 1, "logit {a} vs {b}");
        }
        let wins = veilmoe::model::pairwise::wins(model.config.experts.0, &bits);
        let sets = veilmoe::model::pairwise::rank_sets(&wins, model.config.top_k.0);
        for (s, slot) in out.routing.slots.iter().enumerate() {
            let onehot = k.client.decrypt_lwe(slot.onehot.as_ref().unwrap()).unwrap();
            // one expert, or none or several after a near-tie cycle
            let mut want = vec![0; model.config.experts.0];
            for &i in &sets[s] {
                want[i] = 1;
            }
            cycles += (sets[s].len() != 1) as usize;
            assert_eq!(onehot, want, "slot {s} one-hot");
            let bits = k.client.decrypt_lwe(&slot.index_bits).unwrap();
            assert!(
                bits.iter().all(|&b| b == 0 || b == 1),
                "index bits {bits:?}"
            );
            let index = common::from_bits(&bits);
            assert_eq!(index, selected[s] as i64, "index bits {bits:?}");
            if model.config.top_k.0 > 1 || model.config.gating == Gating::SoftmaxThenTopK {
                let logit = k.client.decrypt_lwe(&slot.logit).unwrap()[0];
                assert_eq!(logit, slot_logits[s], "slot logit");
            }
            if let Some(z) = &slot.partition_sum {
                // a wide leveled sum of PBS outputs: exact up to its noise, well inside
                // half a box of its read
                let dz = (k.client.decrypt_lwe(z).unwrap()[0] - sums[s]).abs();
                assert!(
                    dz < (1i64 << model.partition_shift()) / 2,
                    "partition sum off by {dz}"
                );
            }
        }
        if model.config.gating == Gating::SoftmaxSelected {
            let gates = model.gates(&slot_logits, &sums, &mut Rounding::Exact);
            assert_eq!(check.gates, gates, "gates of {slot_logits:?}");
        }
        (near, cycles)
    });
    let routes: BTreeSet<_> = runs.iter().map(|r| r.check.selected.clone()).collect();
    assert!(
        routes.len() >= 2,
        "the tokens should reach several routings"
    );
    let same = runs.iter().all(|r| r.trace == runs[0].trace);
    let cycles: usize = runs.iter().map(|r| r.extra.1).sum();
    if cycles > 0 {
        println!("{cycles} slots after a near-tie cycle");
    }
    (runs[0].pbs, same, runs.iter().map(|r| r.extra.0).sum())
}

fn pairwise(cfg: MoeConfig, seed: u64) -> QuantizedMoe {
    let mut m = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), seed, true);
    m.pairwise_routing = true;
    m.validate().expect("a pairwise model");
    m
}

/// Mixtral top-2 (gated, complementary gates), top-1 with a constant gate, and Switch top-1
/// (its gate from the partition sum over the logits), at E = 8, 4 and 2. PBS per token: the
/// tournament's logit reads, the comparisons and rank reads, the slot-logit masks and products
/// where the gates need them, the gates' reads and the expert's.
#[test]
fn pairwise_routing_matches_the_exact_comparisons() {
    let gated = FfnKind::GatedSilu;
    let relu = FfnKind::Plain(Activation::Relu);
    let cases = [
        (8, 2, gated, Gating::SoftmaxSelected),
        (4, 1, relu, Gating::SoftmaxSelected),
        (8, 1, relu, Gating::SoftmaxThenTopK),
        (2, 1, gated, Gating::SoftmaxSelected),
    ];
    let mut near = 0;
    for (n, &(e, top, ffn, gating)) in cases.iter().enumerate() {
        let model = pairwise(config(e, top, ffn, gating), 40 + n as u64);
        let (pbs, same, ties) = run_checked(&model, 18, 50 + n as u64);
        near += ties;
        assert!(same, "E = {e}, top-{top}: the trace depends on the token");
        let h = model.config.h.0 as u64;
        let expert = match ffn {
            FfnKind::GatedSilu => 4 * h,
            FfnKind::Plain(_) => h,
        } * top as u64;
        let bits = model.config.experts.0.next_power_of_two().trailing_zeros() as u64;
        let (e, top) = (e as u64, top as u64);
        // comparisons (three PBS each, refined), ranks, index bits clamped
        let routing = 3 * e * (e - 1) / 2 + e + top * bits;
        // where the gates read them: logits, masks, masked logits, their maximum
        let slot_logits = if top > 1 || gating == Gating::SoftmaxThenTopK {
            e + e + top * e + top * (e - 1)
        } else {
            0
        };
        let gates = match (gating, top) {
            (Gating::SoftmaxSelected, 1) => 0,
            (Gating::SoftmaxSelected, _) => model.quant.gate_bits as u64,
            (Gating::SoftmaxThenTopK, _) => e + model.quant.gate_bits as u64,
        };
        assert_eq!(
            pbs,
            routing + slot_logits + gates + expert,
            "E = {e}, top-{top}"
        );
    }
    println!("near ties (decided either way): {near}");
}

/// The same weights routed by the tournament and pairwise choose the same experts wherever
/// the logits' reads do not tie the leaders (the tournament's ties go to the lower index; the
/// accumulators break them), and the model file keeps the flag.
#[test]
fn pairwise_agrees_with_the_tournament_away_from_ties_and_is_kept_in_the_model_file() {
    let model = pairwise(config(8, 2, FfnKind::GatedSilu, Gating::SoftmaxSelected), 7);
    let tournament = QuantizedMoe {
        pairwise_routing: false,
        ..model.clone()
    };
    let mut rng = Rng::new(8);
    let (mut agree, mut untied) = (0, 0);
    for _ in 0..400 {
        let x = rng.vec(8, -8, 7);
        let a = model.reference(&x, &mut Rounding::Exact);
        let b = tournament.reference(&x, &mut Rounding::Exact);
        let mut sorted = a.logits.clone();
        sorted.sort_unstable_by(|p, q| q.cmp(p));
        if sorted[1] > sorted[2] && sorted[0] > sorted[1] {
            untied += 1;
            agree += (a.selected == b.selected) as usize;
        }
    }
    assert!(untied >= 20, "{untied} untied of 400");
    assert_eq!(agree, untied);
    let bytes = bincode::serialize(&model).unwrap();
    let back: QuantizedMoe = bincode::deserialize(&bytes).unwrap();
    assert!(back.pairwise_routing);
    assert_ne!(model, tournament);
}

#[test]
fn unsupported_pairwise_shapes_are_refused() {
    let mut nine = QuantizedMoe::random(
        config(
            9,
            1,
            FfnKind::Plain(Activation::Relu),
            Gating::SoftmaxSelected,
        ),
        QuantParams::for_message_bits(4),
        3,
        true,
    );
    nine.pairwise_routing = true;
    let err = nine.validate().unwrap_err().to_string();
    assert!(
        err.contains("pairwise routing serves 2, 4 or 8 experts"),
        "{err}"
    );
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    assert!(MoeLayer::new(&ev, nine).is_err());
}

/// A float Mixtral-style block quantized for pairwise routing with calibrated ranges: the
/// router accumulators' declared range leaves their differences within the torus, the tokens
/// decrypt as the reference's rule says, and the model file and id carry the flag.
#[test]
fn a_checkpoint_quantized_for_it_runs_with_calibrated_ranges() {
    let (d, e) = (8, 8);
    let mut cfg = config(e, 2, FfnKind::GatedSilu, Gating::SoftmaxSelected);
    cfg.d = ModelDim(d);
    let float = FloatMoeModel::random(cfg, 2.0, 61);
    let records = Rng::new(61).unit_records(128, d);
    let opts = QuantizeOptions {
        search: false,
        pairwise_routing: true,
        ..QuantizeOptions::for_message_bits(4)
    };
    let (q, _) = quantize_with(&float, &opts, &records).unwrap();
    assert!(q.moe.pairwise_routing && q.moe.calibrated_shift.is_some());
    let k = test_keys();
    let layer = MoeLayer::new(&Evaluator::new(&k.server), q.moe.clone()).unwrap();
    for r in records.iter().take(4) {
        let x = q.quantize_input(r).unwrap();
        let ev = Evaluator::new(&k.server);
        let out = layer
            .forward(&ev, &layer.encrypt(&k.client, &x).unwrap(), &Select)
            .unwrap();
        assert!(out.routing.comparisons.is_some());
        check_token(&k.client, &q.moe, &x, &out);
    }
    let bytes = encode_model_file(&q, "test").unwrap();
    let back = decode_model_file(&bytes, "memory").unwrap();
    assert!(back.model.moe.pairwise_routing);
    let mut other = q.clone();
    other.moe.pairwise_routing = false;
    assert_ne!(other.id(), q.id());
}
