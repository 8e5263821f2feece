//! The check of one MoE batch under expert capacities against the plaintext rule of
//! `veilmoe_model::capacity` and the integer reference (shared by the `test` and `default`
//! preset tests).

use super::wide::{check_shared, check_slot_outputs, hidden_read_slack, noise_steps};
use super::Rng;
use veilmoe::engine::{ClientKey, Evaluator, PackedGlwe, ServerKey};
use veilmoe::model::capacity::{assign, entry, Capacities};
use veilmoe::model::{Gating, MoeConfig, QuantParams, QuantizedMoe, Rounding};
use veilmoe::protocols::MoeLayer;

/// Runs one batch of `tokens` random tokens through a random model of `cfg` and checks it:
/// - every entry's slot (or overflow) equals the rule applied to the decrypted routing;
/// - every slot's output is its expert's reference output on the token the rule put there (an
///   empty slot computes on entry 0), up to noise and off-by-one hidden reads;
/// - each token's output is the gated sum of its entries' reference outputs.
///
/// Returns (entries, dropped entries).
pub fn check_capacity_batch(
    client: &ClientKey,
    server: &ServerKey,
    cfg: MoeConfig,
    tokens: usize,
    caps: Vec<usize>,
    seed: u64,
) -> (usize, usize) {
    let quant = QuantParams::for_message_bits(client.preset().message_bits);
    let model = QuantizedMoe::random(cfg, quant, seed, true);
    check_capacity_model(client, server, model, tokens, caps, seed)
}

/// [`check_capacity_batch`] on a given model; a shared expert's gated output (checked against
/// the reference by [`check_shared`]) adds to each token's expected output.
pub fn check_capacity_model(
    client: &ClientKey,
    server: &ServerKey,
    model: QuantizedMoe,
    tokens: usize,
    caps: Vec<usize>,
    seed: u64,
) -> (usize, usize) {
    let ev = Evaluator::new(server);
    let cfg = model.config;
    let layer = MoeLayer::new(&ev, model.clone()).expect("layer");
    let caps = Capacities::new(caps).unwrap();
    let mut rng = Rng::new(seed);
    let (lo, hi) = (model.quant.input_min(), model.quant.input_max());
    // Tokens within the model's boxes (every token, unless its ranges are calibrated: a value
    // past a calibrated box wraps and the token's output is meaningless by design).
    let xs: Vec<Vec<i64>> = std::iter::repeat_with(|| rng.vec(cfg.d.0, lo, hi))
        .filter(|x| model.overflows(x) == 0)
        .take(tokens)
        .collect();
    let cts: Vec<PackedGlwe> = xs
        .iter()
        .map(|x| layer.encrypt(client, x).unwrap())
        .collect();
    let out = layer.forward_capacity(&ev, &cts, &caps).expect("forward");
    let c = client;
    let k = cfg.top_k.0;

    // routing from the decrypted logits, exact; the rule on it, exact
    let mut choices = vec![0; tokens * k];
    let mut gates = Vec::new();
    for (t, r) in out.routings.iter().enumerate() {
        let logits = c.decrypt_lwe(r.logits.as_ref().unwrap()).unwrap();
        let (selected, slot_logits, sums) = model.route(&logits);
        for (j, &e) in selected.iter().enumerate() {
            choices[entry(tokens, t, j)] = e;
        }
        let g = r.decrypt_gates(c, model.quant.gate_max()).unwrap();
        if cfg.gating == Gating::SoftmaxSelected {
            assert_eq!(g, model.gates(&slot_logits, &sums, &mut Rounding::Exact));
        }
        gates.push(g);
    }
    let want = assign(&choices, &caps).unwrap();
    let got = out.decrypt_slots(c).unwrap();
    assert_eq!(got, want, "slots of the entries, choices {choices:?}");

    // every slot: its expert on the token the rule put there (empty: entry 0)
    let mut holder = vec![0usize; caps.total()];
    for (i, g) in want.iter().enumerate() {
        if let Some(g) = g {
            holder[*g] = i;
        }
    }
    let mut expected_out = vec![Vec::new(); caps.total()];
    for (g, ct) in out.slot_outputs.iter().enumerate() {
        let (e, _) = caps.locate(g).unwrap();
        let x = &xs[holder[g] % tokens];
        check_slot_outputs(c, &model, x, &[e], std::slice::from_ref(ct));
        expected_out[g] = model.expert_output(e, &model.hidden(e, x, &mut Rounding::Exact));
    }

    // each token: the gated sum of its entries' outputs (zero when dropped)
    let ys = out.decrypt_y(c, &model).unwrap();
    let slack = hidden_read_slack(&model);
    // the client adds W2's digits' parts, each with the output's noise
    let parts: i64 = model.output_digit_coefficients().iter().sum();
    let h = cfg.h.0;
    for (t, y) in ys.iter().enumerate() {
        let outs: Vec<Vec<i64>> = (0..k)
            .map(|j| match want[entry(tokens, t, j)] {
                Some(g) => expected_out[g].clone(),
                None => vec![0; cfg.d.0],
            })
            .collect();
        let mut expected = model.combine(&gates[t], &outs);
        // the shared expert: its decrypted gate times its reference output
        let mut shared_allowed = vec![0i64; cfg.d.0];
        if let Some(sh) = &model.shared {
            let s = check_shared(c, &model, &xs[t], &out.shared[t]);
            let (_, o) = model
                .shared_reference(&xs[t], &mut Rounding::Exact)
                .unwrap();
            for (i, (e, v)) in expected.iter_mut().zip(o).enumerate() {
                *e += s.gate * v;
                let l1: i64 = sh.weights.w2[i * sh.h..(i + 1) * sh.h]
                    .iter()
                    .map(|w| w.abs())
                    .sum();
                shared_allowed[i] =
                    s.gate * (l1 * slack + parts * noise_steps(&out.shared[t].output));
            }
        }
        for (i, (a, b)) in y.iter().zip(&expected).enumerate() {
            // per entry: its noise and one off-by-one hidden read per unit through W2
            let allowed: i64 = (0..k)
                .filter_map(|j| want[entry(tokens, t, j)].map(|g| (j, g)))
                .map(|(j, g)| {
                    let (e, _) = caps.locate(g).unwrap();
                    let l1: i64 = model.experts[e].w2[i * h..(i + 1) * h]
                        .iter()
                        .map(|w| w.abs())
                        .sum();
                    let gate = if model.output_is_slot() {
                        1
                    } else {
                        gates[t][j]
                    };
                    gate * (l1 * slack + parts * noise_steps(&out.slot_outputs[g]))
                })
                .sum::<i64>()
                + shared_allowed[i];
            assert!(
                (a - b).abs() <= allowed,
                "token {t} output {i}: {a} vs {b} (allowed {allowed})"
            );
        }
    }
    (want.len(), want.iter().filter(|g| g.is_none()).count())
}
