//! The client/server session API on the `test` preset: a record encrypted by the client,
//! evaluated by the server and decrypted equals the plaintext reference; and the client refuses,
//! before decrypting anything, a response that carries a ciphertext it did not make for that
//! batch position or output terms outside the model's structure.

mod common;

use common::test_keys;
use common::wide::{hidden_read_slack, noise_steps};
use veilmoe::model::{
    Activation, ExpertCount, FfnKind, Gating, HiddenDim, InputQuantizer, ModelDim, MoeConfig,
    QuantParams, QuantizedClassifier, QuantizedMoe, Rounding, TopK,
};
use veilmoe::protocols::session::{ResultRecord, ResultsMeta, Shard};
use veilmoe::protocols::{ClientSession, ServerSession, Strategy};

/// A small Mixtral-style top-2 model (public gates come back as a G term and gate-bit terms).
fn model() -> QuantizedClassifier {
    let config = MoeConfig {
        d: ModelDim(8),
        h: HiddenDim(4),
        experts: ExpertCount(4),
        top_k: TopK(2),
        ffn: FfnKind::Plain(Activation::Relu),
        gating: Gating::SoftmaxSelected,
    };
    QuantizedClassifier {
        moe: QuantizedMoe::random(config, QuantParams::for_message_bits(4), 7, true),
        input: InputQuantizer {
            input_scale: 1.0,
            input_zero_point: 0,
        },
        x_scale: 0.0,
        y_scale: 1.0,
        head: None,
    }
}

struct Exchange {
    results: ResultsMeta,
    record: ResultRecord,
    raw: Vec<f32>,
}

fn exchange(client: &ClientSession, server: &ServerSession, raw: Vec<f32>) -> Exchange {
    let batch = client.new_batch(2);
    let request = client.encrypt_record(&batch, 1, &raw).unwrap();
    server.check_batch(&batch).unwrap();
    let results = server.results_meta(&batch, Shard::WHOLE);
    let record = server.evaluate(request).unwrap();
    Exchange {
        results,
        record,
        raw,
    }
}

fn refused(client: &ClientSession, results: &ResultsMeta, rec: &ResultRecord, what: &str) {
    match client.decrypt_record(results, rec) {
        Ok(_) => panic!("{what}: a tampered response was decrypted"),
        Err(e) => assert!(!e.to_string().is_empty(), "{what}"),
    }
}

#[test]
fn session_round_trip_matches_the_reference_and_refuses_tampered_responses() {
    let k = test_keys();
    let m = model();
    let client = ClientSession::new(&k.client, &m).unwrap();
    let server = ServerSession::new(&k.server, &m, Strategy::Select).unwrap();
    let raw: Vec<f32> = vec![3.0, -2.0, 7.0, 0.0, -8.0, 1.0, 5.0, -4.0];
    let ex = exchange(&client, &server, raw);
    let p = client.decrypt_record(&ex.results, &ex.record).unwrap();
    let x = m.quantize_input(&ex.raw).unwrap();
    assert_eq!(p.input, x);
    let r = m.moe.reference(&x, &mut Rounding::Exact);
    assert_eq!(p.y.len(), 8);
    // The outputs come back wide: equal to the reference up to the terms' noise, or, where a
    // hidden read came out one step off near a box edge, that read's effect through W2 (times
    // the gates, which sum to G).
    let g = m.moe.quant.gate_max();
    let h = m.moe.config.h.0;
    let row_l1 = m
        .moe
        .experts
        .iter()
        .flat_map(|e| {
            e.w2.chunks(h)
                .map(|r| r.iter().map(|w| w.abs()).sum::<i64>())
        })
        .max()
        .unwrap();
    let noise: i64 = ex
        .record
        .terms
        .iter()
        .map(|(c, t)| c.abs() * (noise_steps(t) + 2))
        .sum();
    let allowed = 2 * g * row_l1 * hidden_read_slack(&m.moe) + noise;
    assert!(
        p.y.iter().zip(&r.y).all(|(a, b)| (a - b).abs() <= allowed),
        "{:?} vs {:?} (allowed {allowed})",
        p.y,
        r.y
    );

    // The echoed input replaced by a fresh encryption of the same values: not this batch's.
    let other = client.new_batch(2);
    let fresh = client.encrypt_record(&other, 1, &ex.raw).unwrap();
    let mut rec = ex.record.clone();
    rec.input = fresh.x.clone();
    refused(&client, &ex.results, &rec, "a fresh encryption as the echo");
    // The right ciphertext with a valid tag, but claimed for another record index.
    let mut rec = ex.record.clone();
    rec.index = 0;
    refused(&client, &ex.results, &rec, "another index");
    // Any byte of the echo changed (body coefficients, the mask's seed, metadata).
    let bytes = bincode::serialize(&ex.record.input).unwrap();
    for at in [bytes.len() - 1, bytes.len() - 40, bytes.len() / 2, 30] {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        if let Ok(x) = bincode::deserialize(&b) {
            let mut rec = ex.record.clone();
            rec.input = x;
            refused(&client, &ex.results, &rec, "a flipped byte in the echo");
        }
    }
    // Output terms: a changed coefficient, an extra term, a missing term, a term of the wrong
    // length.
    let mut rec = ex.record.clone();
    rec.terms[0].0 += 1;
    refused(&client, &ex.results, &rec, "a changed coefficient");
    let mut rec = ex.record.clone();
    rec.terms.push(rec.terms[1].clone());
    refused(&client, &ex.results, &rec, "an extra term");
    let mut rec = ex.record.clone();
    rec.terms.pop();
    refused(&client, &ex.results, &rec, "a missing term");
    let mut rec = ex.record.clone();
    rec.terms[1].1 = rec.terms[1].1.slice(0..4).unwrap();
    refused(&client, &ex.results, &rec, "a short term");
    // Results of another model.
    let mut results = ex.results.clone();
    results.model_id.0[0] ^= 1;
    assert!(client.check_results(&results).is_err());
    // A server session never evaluates with a strategy that reveals the routing.
    let public_routing = ServerSession::new(&k.server, &m, Strategy::PublicRouting);
    assert!(public_routing.is_err(), "public routing is refused");
}
