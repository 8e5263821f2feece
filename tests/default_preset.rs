//! One end-to-end pass of every engine primitive on the secure `default` preset (128-bit,
//! tfhe's 2M128 set): packed matvec -> requantizing PBS -> LWE matvec -> PBS, many-LUT, circuit
//! bootstrap + CMUX tree, packing keyswitch, and the key files.

mod common;

use common::wide::{check_combination, check_slot_outputs};
use veilmoe::engine::{
    ClientKey, Cols, Encoding, Evaluator, Lut, OpKind, PackedWeights, Preset, Rows, ServerKey,
    ValueRange, WeightMatrix,
};

/// One `default` key set per test binary (key generation is the expensive part).
fn default_keys() -> &'static (Preset, ClientKey, ServerKey) {
    static KEYS: std::sync::OnceLock<(Preset, ClientKey, ServerKey)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let preset = Preset::load("default", false).unwrap();
        let client = ClientKey::generate(&preset);
        let server = client.server_key();
        (preset, client, server)
    })
}

#[test]
fn default_preset_end_to_end() {
    let (preset, client, server) = default_keys();
    let ev = Evaluator::new(server);
    let mut seed = 0x1234_5678u64;
    let mut next = |lo: i64, hi: i64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + (seed % ((hi - lo + 1) as u64)) as i64
    };

    // Layer 1: packed 32 -> 16, 4-bit weights, 4-bit unsigned inputs, 16-bit accumulator.
    let (d, h) = (32usize, 16usize);
    let w1 =
        WeightMatrix::new(Rows(h), Cols(d), (0..h * d).map(|_| next(-8, 7)).collect()).unwrap();
    let pw1 = PackedWeights::new(preset, w1.clone());
    let x: Vec<i64> = (0..d).map(|_| next(0, 15)).collect();
    let ct = client
        .encrypt_packed_seeded(&x, Encoding::unsigned(16))
        .unwrap()
        .decompress()
        .with_range(ValueRange::new(0, 15).unwrap())
        .unwrap();
    let acc = ev.packed_matvec(&pw1, None, &ct).unwrap();
    let exact = w1.apply_plain(&x, None);
    assert_eq!(client.decrypt_lwe(&acc).unwrap(), exact);

    // Requantize + ReLU + clip in one PBS: read the top 5 bits (4 + sign) of the accumulator.
    let relu = |q: i64| q.clamp(0, 15);
    let lut = Lut::requantize(
        preset,
        Encoding::signed(16),
        11,
        Encoding::unsigned(4),
        relu,
    )
    .unwrap();
    let hidden = ev.pbs(&acc, &lut).unwrap();
    let got = client.decrypt_lwe(&hidden).unwrap();
    for (&a, &g) in exact.iter().zip(&got) {
        let q = a as f64 / 2048.0;
        assert!(
            g == relu(q.floor() as i64) || g == relu(q.ceil() as i64),
            "acc {a}: got {g}"
        );
    }

    // Layer 2 on LWE outputs (2-norm 4, within the budget of 5). A PBS output carries about
    // 2^-15 of noise on `default`, so its encoding is kept to 9 bits (a 240-wide range).
    let w2 =
        WeightMatrix::new(Rows(4), Cols(h), (0..4 * h).map(|_| next(-1, 1)).collect()).unwrap();
    let lut_id =
        Lut::univariate(preset, Encoding::unsigned(4), Encoding::signed(9), |v| v).unwrap();
    let wide = ev.pbs(&hidden, &lut_id).unwrap();
    let y = ev.lwe_matvec(&w2, None, &wide).unwrap();
    assert_eq!(client.decrypt_lwe(&y).unwrap(), w2.apply_plain(&got, None));

    // Many-LUT: two functions from one blind rotation.
    let f0 = |v: i64| v * v;
    let f1 = |v: i64| 7 - v;
    let many = Lut::many(
        preset,
        Encoding::unsigned(4),
        Encoding::unsigned(6),
        &[&f0, &f1],
    )
    .unwrap();
    let small: Vec<i64> = (0..8).collect();
    let outs = ev
        .pbs_many(
            &client.encrypt_lwe(&small, Encoding::unsigned(4)).unwrap(),
            &many,
        )
        .unwrap();
    assert_eq!(
        client.decrypt_lwe(&outs[0]).unwrap(),
        small.iter().map(|v| v * v).collect::<Vec<_>>()
    );
    assert_eq!(
        client.decrypt_lwe(&outs[1]).unwrap(),
        small.iter().map(|v| 7 - v).collect::<Vec<_>>()
    );

    // Circuit bootstrap of index bits, CMUX tree over 4 packed candidates.
    let cands: Vec<Vec<i64>> = (0..4)
        .map(|_| (0..8).map(|_| next(0, 15)).collect())
        .collect();
    let cts: Vec<_> = cands
        .iter()
        .map(|c| client.encrypt_packed(c, Encoding::unsigned(4)).unwrap())
        .collect();
    let bits = client.encrypt_bits(&[0, 1], Encoding::unsigned(4)).unwrap(); // index 2
    let ggsw = ev.circuit_bootstrap(&bits).unwrap();
    assert_eq!(
        client
            .decrypt_packed(&ev.cmux_tree(&ggsw, &cts).unwrap())
            .unwrap(),
        cands[2]
    );

    // Packing keyswitch of PBS outputs.
    let packed = ev.pack(&hidden).unwrap();
    assert_eq!(client.decrypt_packed(&packed).unwrap(), got);

    // Key files round-trip on the secure preset.
    let sk2 =
        ServerKey::from_bytes(&client.server_key_file().unwrap(), Some(preset), false).unwrap();
    assert_eq!(sk2.key_set(), client.key_set());
    let ops = ev.ops().totals();
    assert_eq!(ops[&OpKind::Pbs], (h + h + 8) as u64);
    assert_eq!(ops[&OpKind::CircuitBootstrap], 2);
}

/// The MoE layer on the secure `default` preset: 20 tokens, top-2 Mixtral gating, gated FFN,
/// Select-Then-Compute; routing exact from the decrypted logits, the wide outputs equal to the
/// reference up to their noise (or one off-by-one hidden read's effect).
#[test]
fn moe_layer_on_default() {
    use veilmoe::model::{Gating, Rounding};
    use veilmoe::protocols::{MoeLayer, Select};
    let (_, client, server) = default_keys();
    let ev = Evaluator::new(server);
    let model = gated_model(16, 8, Gating::SoftmaxSelected, 3);
    let layer = MoeLayer::new(&ev, model.clone()).unwrap();
    let mut off = 0;
    for t in 0..20u64 {
        let x: Vec<i64> = (0..16)
            .map(|i| ((i as u64 * 7 + t * 13) % 16) as i64 - 8)
            .collect();
        let out = layer
            .forward(&ev, &layer.encrypt(client, &x).unwrap(), &Select)
            .unwrap();
        let logits = client
            .decrypt_lwe(out.routing.logits.as_ref().unwrap())
            .unwrap();
        let (selected, slot_logits, sums) = model.route(&logits);
        for (s, slot) in out.routing.slots.iter().enumerate() {
            assert_eq!(decrypted_index(client, slot), selected[s]);
        }
        let gates: Vec<i64> = out
            .routing
            .decrypt_gates(client, model.quant.gate_max())
            .unwrap();
        assert_eq!(
            gates,
            model.gates(&slot_logits, &sums, &mut Rounding::Exact)
        );
        let (outs, w) = check_slot_outputs(client, &model, &x, &selected, &out.slot_outputs);
        off += w.beyond_noise;
        check_combination(client, &model, &gates, &outs, &out);
    }
    assert!(
        off * 100 <= 20 * 20 * 2 * 16,
        "outputs beyond their noise: {off} / 640"
    );
}

/// A random d = h = 8, E = 4, top-2 gated SiLU model for `default`'s reads.
fn small_gated_model(gating: veilmoe::model::Gating, seed: u64) -> veilmoe::model::QuantizedMoe {
    gated_model(8, 4, gating, seed)
}

/// A random d = h = `dim`, top-2 gated SiLU model over `experts` experts for `default`'s reads.
fn gated_model(
    dim: usize,
    experts: usize,
    gating: veilmoe::model::Gating,
    seed: u64,
) -> veilmoe::model::QuantizedMoe {
    use veilmoe::model::{
        ExpertCount, FfnKind, HiddenDim, ModelDim, MoeConfig, QuantParams, QuantizedMoe, TopK,
    };
    let cfg = MoeConfig {
        d: ModelDim(dim),
        h: HiddenDim(dim),
        experts: ExpertCount(experts),
        top_k: TopK(2),
        ffn: FfnKind::GatedSilu,
        gating,
    };
    QuantizedMoe::random(
        cfg,
        QuantParams::for_message_bits(default_keys().0.message_bits),
        seed,
        true,
    )
}

/// The expert index a slot's decrypted index bits (least significant first) name.
fn decrypted_index(client: &ClientKey, slot: &veilmoe::protocols::SlotRouting) -> usize {
    common::from_bits(&client.decrypt_lwe(&slot.index_bits).unwrap()) as usize
}

/// Runs token `x` through `layer` with Select-Then-Compute on `default`.
fn forward_on_default(
    layer: &veilmoe::protocols::MoeLayer,
    x: &[i64],
) -> veilmoe::protocols::MoeOutput {
    let (_, client, server) = default_keys();
    let ev = Evaluator::new(server);
    layer
        .forward(
            &ev,
            &layer.encrypt(client, x).unwrap(),
            &veilmoe::protocols::Select,
        )
        .unwrap()
}

/// Qwen2-MoE's shared expert on `default`: softmax-then-top-2 routing, gated SiLU experts and a
/// shared expert of another width; the shared gate bits, its wide output and the layer output
/// checked against the reference for 6 tokens.
#[test]
fn shared_expert_on_default() {
    let (_, client, server) = default_keys();
    let ev = Evaluator::new(server);
    let model =
        small_gated_model(veilmoe::model::Gating::SoftmaxThenTopK, 31).with_random_shared(12, 31);
    let layer = veilmoe::protocols::MoeLayer::new(&ev, model.clone()).unwrap();
    for t in 0..6u64 {
        let x: Vec<i64> = (0..8)
            .map(|i| ((i as u64 * 5 + t * 11) % 16) as i64 - 8)
            .collect();
        let out = forward_on_default(&layer, &x);
        common::wide::check_token(client, &model, &x, &out);
    }
}

/// A gated FFN's linear factor read inside its product's quarter squares on `default`:
/// Mixtral top-2 with a shared expert; every check of `check_token` for 4 tokens, and the
/// h PBS saved per evaluated FFN against the same weights reading the factor on their own.
#[test]
fn linear_factor_in_the_product_on_default() {
    use veilmoe::engine::OpKind;
    let (_, client, server) = default_keys();
    let fused = small_gated_model(veilmoe::model::Gating::SoftmaxSelected, 41)
        .with_random_shared(12, 41)
        .with_linear_in_product();
    let separate = veilmoe::model::QuantizedMoe {
        linear_in_product: false,
        ..fused.clone()
    };
    let pbs_of = |model: &veilmoe::model::QuantizedMoe, x: &[i64]| {
        let ev = Evaluator::new(server);
        let layer = veilmoe::protocols::MoeLayer::new(&ev, model.clone()).unwrap();
        let out = layer
            .forward(
                &ev,
                &layer.encrypt(client, x).unwrap(),
                &veilmoe::protocols::Select,
            )
            .unwrap();
        common::wide::check_token(client, model, x, &out);
        ev.ops().total(OpKind::Pbs)
    };
    let mut pbs = Vec::new();
    for t in 0..4u64 {
        let x: Vec<i64> = (0..8)
            .map(|i| ((i as u64 * 3 + t * 7) % 16) as i64 - 8)
            .collect();
        pbs.push(pbs_of(&fused, &x));
    }
    assert!(pbs.iter().all(|&p| p == pbs[0]));
    let x = vec![2i64; 8];
    // two slots of h = 8 and the shared expert's 12 units
    assert_eq!(pbs_of(&separate, &x) - pbs[0], 2 * 8 + 12);
}

/// Pairwise routing on `default`: Mixtral top-2 gating (slot logits from masked reads) and
/// Switch top-1 gating (partition sums over the logits), 3 tokens each; every comparison bit
/// beyond the noise margin equals the exact comparison of the accumulators, and the tokens pass
/// every check of `check_token` from the decrypted routing.
#[test]
fn pairwise_routing_on_default() {
    use veilmoe::model::Gating;
    for (gating, seed) in [(Gating::SoftmaxSelected, 51), (Gating::SoftmaxThenTopK, 52)] {
        let mut model = small_gated_model(gating, seed);
        model.pairwise_routing = true;
        let layer =
            veilmoe::protocols::MoeLayer::new(&Evaluator::new(&default_keys().2), model.clone())
                .unwrap();
        for t in 0..3u64 {
            let x: Vec<i64> = (0..8)
                .map(|i| ((i as u64 * 5 + t * 3) % 16) as i64 - 8)
                .collect();
            let out = forward_on_default(&layer, &x);
            assert!(out.routing.comparisons.is_some());
            common::wide::check_token(&default_keys().1, &model, &x, &out);
        }
    }
}

/// The chained index bits (protocols/src/index_chain.rs) on `default`: 32 experts, top-2, so
/// Runs 3 tokens of the d = h = `dim` gated model over `experts` experts through
/// Select-Then-Compute on `default`: every check of `check_token` holds and each slot's
/// decrypted index bits name the reference's expert. Returns the outputs for further checks.
fn three_tokens_match_the_reference(
    dim: usize,
    experts: usize,
    seed: u64,
) -> Vec<veilmoe::protocols::MoeOutput> {
    let (_, client, server) = default_keys();
    let model = gated_model(dim, experts, veilmoe::model::Gating::SoftmaxSelected, seed);
    let layer = veilmoe::protocols::MoeLayer::new(&Evaluator::new(server), model.clone()).unwrap();
    (0..3u64)
        .map(|t| {
            let x: Vec<i64> = (0..dim)
                .map(|i| ((i as u64 * 3 + t * 7) % 16) as i64 - 8)
                .collect();
            let out = forward_on_default(&layer, &x);
            let check = common::wide::check_token(client, &model, &x, &out);
            for (s, slot) in out.routing.slots.iter().enumerate() {
                assert_eq!(
                    decrypted_index(client, slot),
                    check.selected[s],
                    "token {t}, slot {s}"
                );
            }
            out
        })
        .collect()
}

/// Select-Then-Compute takes each slot's index GGSWs from the tournament's rounds and reads no
/// one-hot (E = 32, d = h = 8, top-2); the decrypted index bits name the reference's experts
/// and every check of `check_token` holds, 3 tokens.
#[test]
fn chained_index_bits_on_default() {
    for out in three_tokens_match_the_reference(8, 32, 61) {
        for slot in &out.routing.slots {
            assert!(slot.onehot.is_none(), "a chained slot reads no one-hot");
        }
    }
}

/// The packed second stage on `default` (d = h = 32 over 16 experts, top-2): the selected
/// activations packed by the FFT packing keyswitch, every check of `check_token`, 3 tokens.
#[test]
fn packed_second_stage_on_default() {
    assert!(veilmoe::protocols::ffn::packs_second_stage(
        &default_keys().0,
        16,
        32,
        32
    ));
    three_tokens_match_the_reference(32, 16, 67);
}

/// Calibrated ranges (issue 13 item 3) on `default`: a first-stage shift one bit finer and an
/// output encoding one bit narrower than the worst case; tokens within the boxes match the
/// reference by every check of `check_token`; a token that overflows a read runs and decrypts
/// (its output is meaningless).
#[test]
fn calibrated_ranges_on_default() {
    use common::calibrated::{calibrated, overflowing_input};
    let (_, client, server) = default_keys();
    let ev = Evaluator::new(server);
    let model = calibrated(
        small_gated_model(veilmoe::model::Gating::SoftmaxSelected, 17),
        1,
        1,
    );
    let layer = veilmoe::protocols::MoeLayer::new(&ev, model.clone()).unwrap();
    let mut within = 0;
    for t in 0..4u64 {
        let x: Vec<i64> = (0..8)
            .map(|i| ((i as u64 * 5 + t * 3) % 8) as i64 - 4)
            .collect();
        let out = forward_on_default(&layer, &x);
        if model.overflows(&x) == 0 {
            common::wide::check_token(client, &model, &x, &out);
            within += 1;
        }
    }
    assert!(within >= 3, "half-range tokens stay in their boxes");
    let x = overflowing_input(&model);
    forward_on_default(&layer, &x).decrypt_y(client).unwrap();
}

/// The `capacity` strategy on `default`: 8 tokens, top-2, 3 slots per expert (16 entries for 12
/// slots: some overflow), checked against the capacity rule and the integer reference.
#[test]
fn capacity_batch_on_default() {
    use veilmoe::model::{ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, TopK};
    let (_, client, server) = default_keys();
    let cfg = MoeConfig {
        d: ModelDim(8),
        h: HiddenDim(8),
        experts: ExpertCount(4),
        top_k: TopK(2),
        ffn: FfnKind::GatedSilu,
        gating: Gating::SoftmaxSelected,
    };
    let (entries, dropped) =
        common::capacity::check_capacity_batch(client, server, cfg, 8, vec![3, 3, 3, 3], 21);
    assert_eq!(entries, 16);
    assert!(
        dropped >= 4,
        "16 entries for 12 slots drop at least 4, got {dropped}"
    );
}

/// Encrypted routing over a pool of three models, per input, on `default`: four inputs, each
/// checked against the reference (router, chosen model's output, the others' terms zero).
#[test]
fn pool_per_input_on_default() {
    use veilmoe::protocols::pool::PoolLayer;
    let (_, client, server) = default_keys();
    let ev = Evaluator::new(server);
    let layer = PoolLayer::new(&ev, common::pool::pool()).unwrap();
    let mut chosen = std::collections::BTreeSet::new();
    for x in [[7, 4, 0, 1], [-8, 7, 2, 0], [3, -8, -1, 5], [0, -4, 5, 0]] {
        chosen.insert(common::pool::check_pool_input(client, &ev, &layer, &x));
    }
    assert!(
        chosen.len() >= 2,
        "inputs should reach several models: {chosen:?}"
    );
}

/// The pool batches' inputs on `default` (clear of the router's edges).
fn pool_batch_inputs() -> Vec<Vec<i64>> {
    vec![
        vec![-8, 7, -8, 7],
        vec![7, 3, 1, 0],
        vec![-2, 5, 0, 3],
        vec![0, -8, -5, -2],
        vec![-6, 2, 6, 6],
        vec![5, 1, -7, 1],
    ]
}

/// A pool batch on `default`: 6 inputs, 2 + 1 + 1 slots and 2 fallback slots, checked against
/// the placement rule and each model's reference (exact reads: noise-only tolerance).
#[test]
fn pool_batch_on_default() {
    use veilmoe::protocols::pool::PoolLayer;
    let (_, client, server) = default_keys();
    let layer = PoolLayer::new(&Evaluator::new(server), common::pool::pool()).unwrap();
    let xs = pool_batch_inputs();
    let (placements, ..) = common::pool::check_batch(client, server, &layer, &xs);
    assert_eq!(placements.len(), 6);
}

/// The same batch under a covering fallback on `default`: model 0 runs on every input in place,
/// one slot each for models 1 and 2.
#[test]
fn pool_batch_with_a_covering_fallback_on_default() {
    use veilmoe::model::capacity::Capacities;
    use veilmoe::model::pool::PoolCapacities;
    use veilmoe::protocols::pool::PoolLayer;
    let (_, client, server) = default_keys();
    let layer = PoolLayer::new(&Evaluator::new(server), common::pool::pool()).unwrap();
    let xs = pool_batch_inputs();
    let caps = PoolCapacities {
        per_model: Capacities::new(vec![0, 1, 1]).unwrap(),
        fallback_model: 0,
        fallback_slots: 6,
    };
    let (placements, ..) = common::pool::check_batch_with(client, server, &layer, &xs, &caps);
    assert!(!placements.contains(&veilmoe::model::pool::Placement::Dropped));
}

/// The Hugging Face-style Qwen2-MoE checkpoint quantized with the defaults on `default`: 8-bit
/// inputs (the first-stage shift 4 bits wider than 4-bit inputs give) and W2 in two digits
/// whose products the client adds; a shared expert and softmax-then-top-2 gates, so every
/// kind of output term is split. 2 tokens of the held-out records, every check of
/// `check_token` (each digit against the reference, the client's sum against the gated
/// combination).
#[test]
fn wide_inputs_and_output_digits_on_default() {
    use veilmoe::model::quantize::{quantize_with, QuantizeOptions, DEFAULT_INPUT_BITS};
    let (preset, client, server) = default_keys();
    let (calib, test) = common::hf_families::records();
    let m = veilmoe::model::FloatMoeModel::load(common::hf_families::qwen2_moe()).unwrap();
    let opts = QuantizeOptions::for_reads(preset.message_bits, preset.max_norm2);
    let q = quantize_with(&m, &opts, &calib).unwrap().0;
    assert_eq!(q.moe.quant.input_bits, DEFAULT_INPUT_BITS);
    assert!(q.moe.output_digits.is_some_and(|g| g.shift >= 1));
    let layer = veilmoe::protocols::MoeLayer::new(&Evaluator::new(server), q.moe.clone()).unwrap();
    for r in test.iter().take(2) {
        let x = q.quantize_input(r).unwrap();
        assert!(
            x.iter().any(|v| v.abs() > 8),
            "8-bit inputs use their range"
        );
        let out = forward_on_default(&layer, &x);
        common::wide::check_token(client, &q.moe, &x, &out);
    }
}

/// The Hugging Face-style Mixtral checkpoint quantized on `default` with 2 reads per
/// pre-activation (`QuantParams::activation_reads`): each silu factor is the sum of two reads
/// whose tables are rotated a quarter box either way, each read's product has its own quarter
/// squares. 2 tokens of the held-out records, every check of `check_token`.
#[test]
fn offset_reads_on_default() {
    use veilmoe::model::quantize::{quantize_with, QuantizeOptions};
    let (preset, client, server) = default_keys();
    let (calib, test) = common::hf_families::records();
    let m = veilmoe::model::FloatMoeModel::load(common::hf_families::mixtral()).unwrap();
    let opts = QuantizeOptions {
        activation_reads: 2,
        ..QuantizeOptions::for_reads(preset.message_bits, preset.max_norm2)
    };
    let q = quantize_with(&m, &opts, &calib).unwrap().0;
    assert_eq!(q.moe.activation_offsets().len(), 2);
    let layer = veilmoe::protocols::MoeLayer::new(&Evaluator::new(server), q.moe.clone()).unwrap();
    for r in test.iter().take(2) {
        let x = q.quantize_input(r).unwrap();
        let out = forward_on_default(&layer, &x);
        common::wide::check_token(client, &q.moe, &x, &out);
    }
}
