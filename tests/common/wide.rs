//! Checks of the wide (unread) expert outputs and the layer output against the plaintext
//! reference. The encrypted path returns `W2 a + b2` without a requantizing read, so a decrypted
//! slot output differs from the exact reference only by its ciphertext noise, plus the effect
//! of a hidden read that came out one step off near a box edge.

use rayon::prelude::*;
use veilmoe::engine::accounting::OpEvent;
use veilmoe::engine::{ClientKey, Evaluator, LweVector, OpKind, ServerKey};
use veilmoe::model::quant::{quarter_square, round_shift};
use veilmoe::model::{ExpertWeights, FfnKind, QuantizedMoe, Rounding};
use veilmoe::protocols::shared::SharedOutput;
use veilmoe::protocols::{MoeLayer, MoeOutput, Select};

/// Largest change of one hidden activation when each requantizing read that feeds it comes out
/// one step off (the approximate step of the encrypted path), over all its offset reads; 0 when
/// the first stage is read whole (no requantization, so no approximate step).
pub fn hidden_read_slack(model: &QuantizedMoe) -> i64 {
    if model.input_shift() == 0 {
        // every first-stage accumulator is read whole: the reads are exact
        return 0;
    }
    let q = &model.quant;
    let (lo, hi) = (q.read_min(), q.read_max());
    let near = |v: i64| {
        [v - 1, v, v + 1]
            .into_iter()
            .filter(move |w| (lo..=hi).contains(w))
    };
    let mut slack = 0;
    for a in lo..=hi {
        match model.config.ffn {
            FfnKind::Plain(act) => {
                for a2 in near(a) {
                    slack = slack.max((q.activation(act, a2) - q.activation(act, a)).abs());
                }
            }
            FfnKind::GatedSilu if model.linear_in_product => {
                // the linear factor is rounded inside each quarter-square read on its own: the
                // two reads may take different neighbours of W3x / 2^s
                let (flo, fhi) = q.factor_range();
                for b in flo..=fhi {
                    let exact = q.gated_silu(a) * b;
                    for a2 in near(a) {
                        let s = q.gated_silu(a2);
                        for b1 in near(b) {
                            for b2 in near(b) {
                                let v = quarter_square(s + b1) - quarter_square(s - b2);
                                slack = slack.max((v - exact).abs());
                            }
                        }
                    }
                }
            }
            FfnKind::GatedSilu => {
                for b in lo..=hi {
                    let exact = q.gated_silu(a) * q.gated_linear(b);
                    for a2 in near(a) {
                        for b2 in near(b) {
                            let v = q.gated_silu(a2) * q.gated_linear(b2);
                            slack = slack.max((v - exact).abs());
                        }
                    }
                }
            }
        }
    }
    // each of a unit's offset reads (and its product) may be one step off
    slack * model.quant.activation_reads as i64
}

/// Noise allowance of a decrypted wide value, in steps of its encoding: six standard deviations
/// of the variance the engine tracked for it, plus the rounding of the decryption.
pub fn noise_steps(ct: &LweVector) -> i64 {
    let step = 2f64.powi(-(ct.encoding().width as i32 + 1));
    (6.0 * ct.variance().sqrt() / step).ceil() as i64 + 1
}

/// How a token's wide slot outputs compared with the exact reference.
#[derive(Debug, Default, Clone, Copy)]
pub struct WideTally {
    pub values: usize,
    /// Values further from the exact reference than their noise allows (a hidden read was off).
    pub beyond_noise: usize,
}

/// Decrypts each slot's wide output and compares it with the exact reference of the slot's
/// selected expert: never further than one off-by-one hidden read per unit (times the W2
/// weights) plus the noise. Returns the decrypted outputs.
pub fn check_slot_outputs(
    client: &ClientKey,
    model: &QuantizedMoe,
    x: &[i64],
    selected: &[usize],
    slot_outputs: &[LweVector],
) -> (Vec<Vec<i64>>, WideTally) {
    let mut t = WideTally::default();
    let mut outs = Vec::new();
    for (s, ct) in slot_outputs.iter().enumerate() {
        let e = selected[s];
        let hidden = model.hidden(e, x, &mut Rounding::Exact);
        let w = &model.experts[e];
        let (o, beyond) = check_wide(client, model, (w, model.config.h.0), &hidden, ct, "expert");
        t.beyond_noise += beyond;
        t.values += ct.len();
        outs.push(o);
    }
    (outs, t)
}

/// Decrypts an encrypted FFN output (`W2 a + b2`, or W2's two digits stacked) and checks every
/// value against the exact reference from the FFN's exact hidden activations: never further
/// than one off-by-one hidden read per unit (times the row's weights) plus the noise. Returns
/// the output as the client adds it up (`W2 a + b2`, d values) and how many values were
/// beyond the noise alone.
fn check_wide(
    client: &ClientKey,
    model: &QuantizedMoe,
    (w, h): (&ExpertWeights, usize),
    hidden: &[i64],
    ct: &LweVector,
    what: &str,
) -> (Vec<i64>, usize) {
    let slack = hidden_read_slack(model);
    let o = client.decrypt_lwe(ct).expect("decrypt");
    let want = model.encrypted_output(w, hidden);
    assert_eq!(o.len(), want.len(), "{what} output values");
    let rows = model.encrypted_w2(w).0;
    let noise = noise_steps(ct);
    let mut beyond = 0;
    for (i, (a, b)) in o.iter().zip(&want).enumerate() {
        let row_l1: i64 = rows[i * h..(i + 1) * h].iter().map(|w| w.abs()).sum();
        let bound = row_l1 * slack + noise;
        assert!(
            (a - b).abs() <= bound,
            "{what} output {i}: {a} vs reference {b} (allowed {bound}: noise {noise}, \
             hidden slack {slack} x |W2 row| {row_l1})"
        );
        beyond += ((a - b).abs() > noise) as usize;
    }
    (model.fold_output_digits(&o), beyond)
}

/// The shared expert's decrypted gate and output, checked against the reference.
pub struct SharedCheck {
    pub gate: i64,
    pub output: Vec<i64>,
}

/// Decrypts a token's shared-expert result and checks it against the exact reference: the gate
/// is one that a read of its accumulator one step either way gives (the read is the
/// approximate step), the output is the reference's up to noise and one off-by-one hidden read
/// per unit through W2.
pub fn check_shared(
    client: &ClientKey,
    model: &QuantizedMoe,
    x: &[i64],
    s: &SharedOutput,
) -> SharedCheck {
    let sh = model.shared.as_ref().expect("a model with a shared expert");
    let bits = client.decrypt_lwe(&s.gate_bits).expect("decrypt");
    assert!(
        bits.iter().all(|b| (0..=1).contains(b)),
        "gate bits {bits:?}"
    );
    let gate = super::from_bits(&bits);
    let acc: i64 = sh.gate.iter().zip(x).map(|(w, v)| w * v).sum::<i64>() + sh.gate_bias;
    let read = round_shift(acc, model.input_shift());
    let g_max = model.quant.gate_max();
    let ok: Vec<i64> = (read - 1..=read + 1)
        .map(|r| sh.gate_value(r, g_max))
        .collect();
    assert!(
        ok.contains(&gate),
        "shared gate {gate} (bits {bits:?}): expected one of {ok:?} (accumulator {acc})"
    );
    let hidden = model.ffn_hidden(&sh.weights, sh.h, x, &mut Rounding::Exact);
    let (output, _) = check_wide(
        client,
        model,
        (&sh.weights, sh.h),
        &hidden,
        &s.output,
        "shared expert",
    );
    SharedCheck { gate, output }
}

/// The decrypted layer output equals the gate combination of the decrypted slot outputs (plus
/// the decrypted shared expert's gated output), up to the noise of each weighted term.
pub fn check_combination(
    client: &ClientKey,
    model: &QuantizedMoe,
    gates: &[i64],
    outs: &[Vec<i64>],
    out: &MoeOutput,
) {
    let y = out.decrypt_y(client).expect("decrypt y");
    let mut want = model.combine(gates, outs);
    if let Some(s) = &out.shared {
        let g = s.decrypt_gate(client).expect("decrypt");
        let o = model.fold_output_digits(&client.decrypt_lwe(&s.output).expect("decrypt"));
        for (w, v) in want.iter_mut().zip(o) {
            *w += g * v;
        }
    }
    // each term's own noise, plus the rounding of the slot outputs it combines
    let allowed: i64 = out
        .y_terms
        .iter()
        .map(|(c, t)| c.abs() * (noise_steps(t) + 2))
        .sum();
    for (i, (a, b)) in y.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= allowed,
            "output {i}: {a} vs the combination of the slot outputs {b} (allowed {allowed})"
        );
    }
}

/// Pairwise routing's decrypted comparison bits against the exact router accumulators: every
/// pair further from the threshold than the refined comparison's noise margin is decided as
/// `acc_j > acc_i`. The accumulators are linear in fresh encryptions: their variance is bounded
/// by the largest router row's squared 2-norm times a fresh encryption's, plus the packed
/// product's FFT rounding. Returns how many pairs were near ties.
pub fn check_comparisons(
    client: &ClientKey,
    model: &QuantizedMoe,
    x: &[i64],
    bits: &[i64],
) -> usize {
    let p = client.preset();
    let acc = model.router_accumulators(x);
    let pairs = veilmoe::model::pairwise::pairs(acc.len());
    assert_eq!(bits.len(), pairs.len());
    let d = model.config.d.0;
    let norm2_sq = model
        .router
        .chunks_exact(d)
        .map(|row| row.iter().map(|&w| (w * w) as f64).sum::<f64>())
        .fold(0.0, f64::max);
    let fresh = client
        .encrypt_lwe(&[0], veilmoe::engine::Encoding::signed(model.input_width()))
        .unwrap()
        .variance();
    let acc_var =
        norm2_sq * fresh + veilmoe::engine::noise::packed_product_fft_variance(p, norm2_sq);
    let margin = veilmoe::engine::compare::decision_margin(p, 2.0 * acc_var);
    let step = 2f64.powi(-(model.input_width() as i32) - 1);
    let mut near = 0;
    for (&(i, j), &b) in pairs.iter().zip(bits) {
        let d = acc[j] - acc[i];
        assert!(b == 0 || b == 1, "comparison bit {b}");
        if (d as f64 - 0.5).abs() * step < margin {
            near += 1;
        } else {
            assert_eq!(
                b,
                (d > 0) as i64,
                "[acc {j} > acc {i}]: {} vs {}",
                acc[j],
                acc[i]
            );
        }
    }
    near
}

/// What [`check_token`] decrypted of a token's routing.
pub struct TokenCheck {
    /// Experts selected from the decrypted logits (the reference's routing rule).
    pub selected: Vec<usize>,
    pub gates: Vec<i64>,
    pub wide: WideTally,
}

/// Every check of one token's encrypted layer output: routing from its decrypted logits, the
/// slot outputs ([`check_slot_outputs`]), the shared expert when the model has one
/// ([`check_shared`]) and the layer output as their gated sum ([`check_combination`]).
pub fn check_token(
    client: &ClientKey,
    model: &QuantizedMoe,
    x: &[i64],
    out: &MoeOutput,
) -> TokenCheck {
    // pairwise routing with a constant gate reads no logits (the rule then uses none)
    let logits = match &out.routing.logits {
        Some(l) => client.decrypt_lwe(l).expect("decrypt"),
        None => vec![0; model.config.experts.0],
    };
    let (selected, _, _) = match &out.routing.comparisons {
        Some(c) => {
            let bits = client.decrypt_lwe(c).expect("decrypt");
            check_comparisons(client, model, x, &bits);
            model.route_pairwise(&bits, &logits)
        }
        None => model.route(&logits),
    };
    let gates = out
        .routing
        .decrypt_gates(client, model.quant.gate_max())
        .expect("decrypt gates");
    let (outs, wide) = check_slot_outputs(client, model, x, &selected, &out.slot_outputs);
    assert_eq!(out.shared.is_some(), model.shared.is_some());
    if let Some(s) = &out.shared {
        check_shared(client, model, x, s);
    }
    check_combination(client, model, &gates, &outs, out);
    TokenCheck {
        selected,
        gates,
        wide,
    }
}

/// One token of [`run_select_tokens`]: its checks, operation trace, PBS count and whatever the
/// caller's own checks returned.
pub struct TokenRun<T> {
    pub check: TokenCheck,
    pub trace: Vec<OpEvent>,
    pub pbs: u64,
    pub extra: T,
}

/// Runs each input through Select-Then-Compute (in parallel, a fresh evaluator per token) and
/// checks it with [`check_token`]; `extra` adds the caller's checks of a token and returns what
/// to keep of it.
pub fn run_select_tokens<T: Send>(
    (client, server): (&ClientKey, &ServerKey),
    model: &QuantizedMoe,
    inputs: &[Vec<i64>],
    extra: impl Fn(&[i64], &MoeOutput, &TokenCheck) -> T + Sync,
) -> Vec<TokenRun<T>> {
    let layer = MoeLayer::new(&Evaluator::new(server), model.clone()).expect("layer");
    inputs
        .par_iter()
        .map(|x| {
            let ev = Evaluator::new(server);
            let out = layer
                .forward(&ev, &layer.encrypt(client, x).unwrap(), &Select)
                .expect("forward");
            let check = check_token(client, model, x, &out);
            let extra = extra(x, &out, &check);
            TokenRun {
                check,
                trace: ev.ops().trace(),
                pbs: ev.ops().total(OpKind::Pbs),
                extra,
            }
        })
        .collect()
}
