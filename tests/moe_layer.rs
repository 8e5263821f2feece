//! Encrypted MoE layer on the `test` preset against the plaintext reference, stage by stage.
//!
//! Every exact stage is compared exactly (routing from the decrypted logits, one-hot, index
//! bits, gates). The approximate stages (requantizing reads of wide accumulators: logits,
//! activations) may come out one step off near a box edge; the test bounds the rate of that and
//! that it is never more than one step. The expert outputs leave the server wide (no read): they
//! must equal the reference up to their noise, or, where a hidden read was off, up to that
//! read's effect through W2; the gate combination must hold up to each term's noise.

mod common;

use common::wide::{check_combination, check_slot_outputs};
use common::{test_keys, Rng};
use rayon::prelude::*;
use veilmoe::engine::{ClientKey, Evaluator, LweVector, OpKind};
use veilmoe::model::{
    Activation, ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, QuantParams,
    QuantizedMoe, Rounding, TopK,
};
use veilmoe::protocols::ffn::packs_second_stage;
use veilmoe::protocols::{ComputeAll, ExpertStrategy, Gates, MoeLayer, Select};

#[derive(Default, Debug)]
struct Tally {
    tokens: usize,
    logits: usize,
    logit_off: usize,
    outputs: usize,
    output_off: usize,
    route_agree_with_exact_reference: usize,
}

fn decrypt(c: &ClientKey, v: &LweVector) -> Vec<i64> {
    c.decrypt_lwe(v).expect("decrypt")
}

fn run_config(config: MoeConfig, tokens: usize, seed: u64, strategy: &dyn ExpertStrategy) -> Tally {
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let model = QuantizedMoe::random(config, QuantParams::for_message_bits(4), seed, true);
    let layer = MoeLayer::new(&ev, model.clone()).expect("layer");
    let mut rng = Rng::new(seed);
    let g_max = model.quant.gate_max();
    let inputs: Vec<Vec<i64>> = (0..tokens).map(|_| rng.vec(config.d.0, -8, 7)).collect();
    let tallies: Vec<Tally> = inputs
        .par_iter()
        .map(|x| {
            let mut t = Tally::default();
            let x = x.clone();
            let ct = layer.encrypt(&k.client, &x).unwrap();
            let out = layer.forward(&ev, &ct, strategy).expect("forward");
            // logits: within one step of the exact reference
            let logits = decrypt(&k.client, out.routing.logits.as_ref().unwrap());
            let exact = model.reference(&x, &mut Rounding::Exact);
            for (a, b) in logits.iter().zip(&exact.logits) {
                assert!((a - b).abs() <= 1, "logit {a} vs reference {b}");
                t.logit_off += (a != b) as usize;
            }
            t.logits += logits.len();
            // routing from the decrypted logits: exact
            let (selected, slot_logits, sums) = model.route(&logits);
            t.route_agree_with_exact_reference += (selected == exact.selected) as usize;
            for (s, slot) in out.routing.slots.iter().enumerate() {
                // a large tournament asked for GGSW index bits reads no one-hot (index_chain.rs)
                let chained = slot.onehot.is_none();
                assert_eq!(
                    chained,
                    strategy.needs_index_ggsw() && config.experts.0 >= 32,
                    "one-hot read or not"
                );
                if let Some(onehot) = &slot.onehot {
                    let onehot = decrypt(&k.client, onehot);
                    let want: Vec<i64> = (0..config.experts.0)
                        .map(|i| (i == selected[s]) as i64)
                        .collect();
                    assert_eq!(onehot, want, "one-hot of slot {s}, logits {logits:?}");
                }
                let bits = decrypt(&k.client, &slot.index_bits);
                let index = common::from_bits(&bits) as usize;
                assert_eq!(index, selected[s], "index bits {bits:?}");
                if config.top_k.0 > 1 || config.gating == Gating::SoftmaxThenTopK {
                    assert_eq!(
                        decrypt(&k.client, &slot.logit)[0],
                        slot_logits[s],
                        "slot logit"
                    );
                }
                if let Some(z) = &slot.partition_sum {
                    // a wide leveled sum of PBS outputs: exact up to its noise, read approximately
                    let dz = (decrypt(&k.client, z)[0] - sums[s]).abs();
                    // its noise (E PBS outputs) must stay well inside one box of the read
                    let half_box = (1i64 << model.partition_shift()) / 2;
                    assert!(
                        dz < half_box,
                        "partition sum off by {dz}, half a read box is {half_box}"
                    );
                }
            }
            // gates: exact from the decrypted logits (Switch: the sum is read approximately)
            let gates: Vec<i64> = out.routing.decrypt_gates(&k.client, g_max).unwrap();
            match config.gating {
                Gating::SoftmaxSelected => assert_eq!(
                    gates,
                    model.gates(&slot_logits, &sums, &mut Rounding::Exact)
                ),
                Gating::SoftmaxThenTopK => {
                    let s = model.partition_shift();
                    // What the gate was read from, for the failure message: each slot's gate
                    // bits and its encrypted partition sum, decrypted.
                    let slot_bits: Vec<Vec<i64>> = match &out.routing.gates {
                        Gates::PerSlot(bits) => {
                            bits.iter().map(|b| decrypt(&k.client, b)).collect()
                        }
                        _ => Vec::new(),
                    };
                    let enc_sums: Vec<Vec<i64>> = out
                        .routing
                        .slots
                        .iter()
                        .filter_map(|sl| sl.partition_sum.as_ref().map(|z| decrypt(&k.client, z)))
                        .collect();
                    for (g, &z) in gates.iter().zip(&sums) {
                        let ok: Vec<i64> = [-1i64, 0, 1]
                            .iter()
                            .map(|dz| {
                                model.gates(&[0], &[z + dz * (1 << s) / 2], &mut Rounding::Exact)[0]
                            })
                            .collect();
                        assert!(
                            ok.contains(g),
                            "switch gate {g} for sum {z}: expected one of {ok:?} (shift {s}; \
                             gate bits per slot {slot_bits:?}, encrypted sums {enc_sums:?}, \
                             logits {logits:?}, selected {selected:?})"
                        );
                    }
                }
            }
            // slot outputs (wide): the exact reference up to noise and off-by-one hidden reads
            let (outs, w) = check_slot_outputs(&k.client, &model, &x, &selected, &out.slot_outputs);
            t.outputs += w.values;
            t.output_off += w.beyond_noise;
            // the combination: exact up to each term's noise
            check_combination(&k.client, &model, &gates, &outs, &out);
            t.tokens += 1;
            t
        })
        .collect();
    let mut t = Tally::default();
    for x in tallies {
        t.tokens += x.tokens;
        t.logits += x.logits;
        t.logit_off += x.logit_off;
        t.outputs += x.outputs;
        t.output_off += x.output_off;
        t.route_agree_with_exact_reference += x.route_agree_with_exact_reference;
    }
    // Documented rates on `test` (its PBS noise is ~8x the default preset's): logits read one
    // wide accumulator (measured ~4 %); an output is off beyond its noise when one of its h
    // hidden reads was (the former 10 to 27 % with d = h = 4 included the output read's own
    // rounding, now gone). Never more than one step per read (asserted above). Four extra
    // misses of slack keep small samples from failing on chance alone.
    assert!(
        t.logit_off * 100 <= 8 * t.logits + 400 && t.output_off * 100 <= 35 * t.outputs + 400,
        "off-by-one rate above the documented bound: {t:?}"
    );
    t
}

fn config(d: usize, h: usize, e: usize, k: usize, ffn: FfnKind, gating: Gating) -> MoeConfig {
    MoeConfig {
        d: ModelDim(d),
        h: HiddenDim(h),
        experts: ExpertCount(e),
        top_k: TopK(k),
        ffn,
        gating,
    }
}

const FFNS: [FfnKind; 4] = [
    FfnKind::Plain(Activation::Relu),
    FfnKind::Plain(Activation::Gelu),
    FfnKind::Plain(Activation::Silu),
    FfnKind::GatedSilu,
];

/// `tokens` tokens for each (E, k, FFN) of the matrix, Mixtral gating, Select-Then-Compute.
fn matrix(experts: usize, tokens: usize) {
    for k in [1, 2].into_iter().filter(|&k| k <= experts) {
        for (i, ffn) in FFNS.into_iter().enumerate() {
            let seed = (experts * 100 + k * 10 + i) as u64;
            let t = run_config(
                config(4, 4, experts, k, ffn, Gating::SoftmaxSelected),
                tokens,
                seed,
                &Select,
            );
            eprintln!("E={experts} k={k} ffn={}: {t:?}", ffn.name());
        }
    }
}

/// Tokens per matrix cell in the default suite: every cell is checked value by value; the
/// rate bounds of `run_config` get their statistical weight from the ignored full run.
const SUITE_TOKENS: usize = 40;
/// Tokens per cell of the full statistical run (`--ignored`).
const FULL_TOKENS: usize = 200;

#[test]
fn select_matches_reference_e1() {
    matrix(1, FULL_TOKENS);
}

#[test]
fn select_matches_reference_e2() {
    matrix(2, 2 * SUITE_TOKENS);
}

#[test]
fn select_matches_reference_e8() {
    matrix(8, SUITE_TOKENS);
}

#[test]
fn select_matches_reference_e32() {
    matrix(32, SUITE_TOKENS / 2);
}

/// Select-Then-Compute's packed second stage (`ffn::packs_second_stage`: d = h = 32 over 16
/// experts on `test`): the selected activations packed into one GLWE, every expert's W2 as a
/// packed product, one CMUX per GLWE of rows; every check of `run_config` holds.
#[test]
fn select_packs_the_second_stage() {
    let p = test_keys().client.preset();
    assert!(packs_second_stage(p, 16, 32, 32) && !packs_second_stage(p, 16, 4, 4));
    for (k, ffn) in [
        (1, FfnKind::GatedSilu),
        (2, FfnKind::Plain(Activation::Relu)),
    ] {
        let cfg = config(32, 32, 16, k, ffn, Gating::SoftmaxSelected);
        let t = run_config(cfg, 12, 90 + k as u64, &Select);
        eprintln!("packed second stage, k={k} ffn={}: {t:?}", ffn.name());
    }
}

/// The E = 2, 8, 32 matrix at 200 tokens per cell (about an hour on 2 cores): the off-by-one
/// rates of `run_config` measured on enough tokens to mean something.
#[test]
#[ignore = "statistical run of the whole matrix, about an hour on 2 cores"]
fn select_matches_reference_full_matrix() {
    for e in [2, 8, 32] {
        matrix(e, FULL_TOKENS);
    }
}

#[test]
fn switch_gating_matches_reference() {
    for (e, k) in [(2, 1), (8, 1), (8, 2), (16, 2)] {
        let t = run_config(
            config(4, 4, e, k, FfnKind::GatedSilu, Gating::SoftmaxThenTopK),
            50,
            90 + e as u64,
            &Select,
        );
        eprintln!("switch E={e} k={k}: {t:?}");
    }
}

#[test]
fn compute_all_matches_reference() {
    for (e, k) in [(2, 2), (8, 1)] {
        let t = run_config(
            config(
                4,
                4,
                e,
                k,
                FfnKind::Plain(Activation::Silu),
                Gating::SoftmaxSelected,
            ),
            30,
            70 + e as u64,
            &ComputeAll,
        );
        eprintln!("compute-all E={e} k={k}: {t:?}");
    }
}

/// Obliviousness: tokens routed to different experts produce identical operation traces (kinds,
/// counts, order, sizes, stages) under every strategy except public routing.
#[test]
fn traces_do_not_depend_on_the_routing() {
    let k = test_keys();
    for (strategy, name) in [
        (&Select as &dyn ExpertStrategy, "select"),
        (&ComputeAll, "compute-all"),
    ] {
        // 32 experts: Select-Then-Compute chains the index bits' circuit bootstraps;
        // d = h = 32 over 16 experts: it packs the selected activations (ReLU experts: compute-all
        // reads every expert's h units)
        let relu = FfnKind::Plain(Activation::Relu);
        for (d, e, top, ffn) in [
            (4, 8, 1, FfnKind::GatedSilu),
            (4, 8, 2, FfnKind::GatedSilu),
            (4, 32, 2, FfnKind::GatedSilu),
            (32, 16, 1, relu),
        ] {
            let cfg = config(d, d, e, top, ffn, Gating::SoftmaxSelected);
            let model = QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), 5, true);
            let ev0 = Evaluator::new(&k.server);
            let layer = MoeLayer::new(&ev0, model.clone()).unwrap();
            let mut rng = Rng::new(11);
            let mut traces = Vec::new();
            let mut routes = std::collections::BTreeSet::new();
            for _ in 0..12 {
                let x = rng.vec(d, -8, 7);
                let ev = Evaluator::new(&k.server);
                let out = layer
                    .forward(&ev, &layer.encrypt(&k.client, &x).unwrap(), strategy)
                    .unwrap();
                let idx = decrypt(&k.client, &out.routing.slots[0].index_bits);
                routes.insert(idx);
                traces.push(ev.ops().trace());
            }
            assert!(
                routes.len() >= 2,
                "{name}: the inputs should reach different experts, got {routes:?}"
            );
            for t in &traces[1..] {
                assert_eq!(t, &traces[0], "{name}: trace differs between tokens");
            }
        }
    }
}

/// Checks the encrypted argmax over `e` values for `rounds` random vectors (with many ties):
/// one-hot and index bits exact, ties to the lowest index, index bits within the PBS noise
/// budget so that circuit bootstrapping accepts them. Returns the PBS of one argmax.
fn check_argmax(e: usize, rounds: usize) -> u64 {
    use veilmoe::engine::{Encoding, ValueRange};
    use veilmoe::protocols::router::RouterTables;
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let quant = QuantParams::for_message_bits(k.client.preset().message_bits);
    let model = QuantizedMoe::random(
        config(
            1,
            1,
            e,
            1,
            FfnKind::Plain(Activation::Relu),
            Gating::SoftmaxSelected,
        ),
        quant,
        5,
        false,
    );
    let tables = RouterTables::new(&ev, &model).unwrap();
    let mut rng = Rng::new(e as u64);
    let budget = veilmoe::engine::noise::pbs_input_budget(k.client.preset());
    let mut pbs = 0;
    for round in 0..rounds {
        // Narrow value ranges in some rounds make ties likely.
        let hi = if round % 2 == 0 { quant.logit_max() } else { 1 };
        let vals: Vec<i64> = (0..e).map(|_| rng.range(0, hi)).collect();
        let ct = k
            .client
            .encrypt_lwe(&vals, Encoding::signed(quant.message_bits))
            .unwrap()
            .with_range(ValueRange::new(0, quant.logit_max()).unwrap())
            .unwrap();
        let before = ev.ops().total(OpKind::Pbs);
        let slot = tables.argmax_logits(&ev, &ct).unwrap();
        pbs = ev.ops().total(OpKind::Pbs) - before;
        let want = veilmoe::model::argmax(&vals);
        let onehot = decrypt(&k.client, slot.onehot.as_ref().unwrap());
        let mut expect = vec![0i64; e];
        expect[want] = 1;
        assert_eq!(onehot, expect, "E = {e}, values {vals:?}");
        let bits = decrypt(&k.client, &slot.index_bits);
        let index = common::from_bits(&bits) as usize;
        assert_eq!(index, want, "E = {e}, values {vals:?}");
        assert!(slot.index_bits.variance() <= budget);
        assert_eq!(
            ev.circuit_bootstrap(&slot.index_bits).unwrap().len(),
            bits.len()
        );
    }
    pbs
}

/// Small E: the paired one-hot (one many-LUT blind rotation per first-round pair) for powers
/// of two up to 16, the per-leaf one-hot otherwise.
#[test]
fn argmax_over_few_experts_is_exact_with_ties() {
    for e in [2, 3, 4, 5, 8, 16] {
        check_argmax(e, 24);
    }
}

/// Powers of two above 16: the pairs read below a group win bit per 8 leaves, exact with ties.
/// PBS per argmax: E - 1 comparisons, E - 2 maxima, E / 2 + E / 8 one-hot reads (E before),
/// and at E = 64 one chunk refresh for each of the 3 index bits below the groups (32 one-hot
/// values each, the budget covers 25: a refreshed chunk of 25 plus 7 left); the 3 bits above
/// sum 4 group bits each. 48 is not a power of two: the per-leaf one-hot.
#[test]
fn argmax_over_grouped_pairs_is_exact_with_ties() {
    assert_eq!(check_argmax(32, 12), 31 + 30 + 16 + 4);
    assert_eq!(check_argmax(64, 6), 63 + 62 + 32 + 8 + 3);
    assert_eq!(check_argmax(48, 6), 47 + 46 + 48);
}

/// 128 experts (the largest supported E): each of the 3 index bits below the groups sums 64
/// one-hot values, more than the PBS noise budget covers (25), so two chunks of each are
/// refreshed (2 + 14 terms left) before circuit bootstrapping; the 4 bits above sum 8 of the 16
/// group bits each (3 refreshes per bit, 21 in all, when every bit summed leaves).
#[test]
fn argmax_over_128_experts_feeds_circuit_bootstrapping() {
    assert_eq!(check_argmax(128, 4), 127 + 126 + 64 + 16 + 3 * 2);
}

/// The quantizer's W2 limit and the layer's wide-output noise check agree: a gated Mixtral
/// top-2 block (whose slot outputs take one more bit) quantized from large random weights, so
/// that its W2 rows reach the limit, runs through the encrypted layer without a noise refusal.
#[test]
fn a_top2_model_at_the_w2_limit_runs() {
    use veilmoe::model::quantize::QuantChoice;
    use veilmoe::model::{quantize_with, FloatMoeModel, QuantizeOptions};
    let (d, h, e) = (8, 8, 4);
    let mut float = FloatMoeModel::random(
        config(d, h, e, 2, FfnKind::GatedSilu, Gating::SoftmaxSelected),
        2.0,
        77,
    );
    // The largest W2 weight quantized to 20: the rows then exceed the limit (200 for a gated
    // top-2 block at the default noise allowance) and are held to it.
    float.quantization = Some(QuantChoice {
        w2_top: 20.0,
        ..QuantChoice::default()
    });
    let records = Rng::new(77).unit_records(64, d);
    let opts = QuantizeOptions {
        search: false,
        ..QuantizeOptions::for_message_bits(4)
    };
    let (q, report) = quantize_with(&float, &opts, &records).unwrap();
    let limit = opts.w2_norm2_limit(true, true);
    let h = q.moe.config.h.0;
    let largest = q
        .moe
        .experts
        .iter()
        .flat_map(|x| x.w2.chunks(h).map(|r| r.iter().map(|w| w * w).sum::<i64>()))
        .max()
        .unwrap();
    assert!(
        largest * 2 > limit && largest <= limit,
        "W2 rows should reach the limit {limit}: largest {largest} ({report:?})"
    );
    let k = test_keys();
    let ev = Evaluator::new(&k.server);
    let layer = MoeLayer::new(&ev, q.moe.clone()).unwrap();
    let x = vec![3i64; d];
    let out = layer
        .forward(&ev, &layer.encrypt(&k.client, &x).unwrap(), &Select)
        .expect("a model within the quantizer's W2 limit passes the wide-output noise check");
    assert_eq!(out.slot_outputs.len(), 2);
}
