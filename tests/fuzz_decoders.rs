//! A mutation fuzzer over every decoder of data that crosses from the other party or from a
//! user: the envelope, batch and results messages (through the session checks), client and
//! server keys, the quantized-model file, preset TOML, config.json + safetensors, `.npy` and
//! CSV. Each case starts from a valid input, mutates it (bit flips, byte overwrites with
//! boundary values, truncation, extension, 64-bit length fields rewritten), and for envelopes
//! re-wraps the mutated payload with a valid checksum so that it reaches the decoder behind the
//! checksum. A decoder passes when every case returns `Ok` or `Err`: no panic, no abort, no
//! allocation beyond what the input holds (the test process would die).
//!
//! `cargo test` runs [`QUICK_CASES`] cases per decoder and replays the regression corpus in
//! `tests/fuzz-corpus/<decoder>/` (inputs that once crashed a decoder, or that the issues named).
//! The full run (10,000 cases per decoder, 1,000 for the megabyte-sized server key) is ignored
//! by default:
//! `cargo test --release --test fuzz_decoders -- --ignored`.

mod common;

use common::{test_keys, Rng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;
use veilmoe::engine::format::{self, ObjectKind};
use veilmoe::engine::{ClientKey, CompressedServerKey, Preset};
use veilmoe::format::Binding;
use veilmoe::model::checkpoint::FloatMoeModel;
use veilmoe::model::data::{digits, npy, table};
use veilmoe::model::model_file::{decode_model_file, encode_model_file};
use veilmoe::model::{
    Activation, ExpertCount, FfnKind, Gating, HiddenDim, InputQuantizer, ModelDim, MoeConfig,
    QuantParams, QuantizedClassifier, QuantizedMoe, TopK,
};
use veilmoe::protocols::session::wire::{max_result_record_bytes, MAX_META_BYTES};
use veilmoe::protocols::session::{BatchMeta, BatchRecord, ResultRecord, ResultsMeta, Shard};
use veilmoe::protocols::{ClientSession, ServerSession, Strategy};

/// Cases per decoder in an ordinary `cargo test`.
const QUICK_CASES: usize = 1_000;
/// Cases per decoder in the full (ignored) run.
const FULL_CASES: usize = 10_000;

/// A small model with calibrated ranges: the fuzzed messages are those of this model on the
/// `test` preset.
fn model() -> &'static QuantizedClassifier {
    static M: OnceLock<QuantizedClassifier> = OnceLock::new();
    M.get_or_init(|| {
        let config = MoeConfig {
            d: ModelDim(8),
            h: HiddenDim(4),
            experts: ExpertCount(2),
            top_k: TopK(1),
            ffn: FfnKind::Plain(Activation::Relu),
            gating: Gating::SoftmaxThenTopK,
        };
        // calibrated ranges, so that mutations reach their fields' validation too
        let moe = QuantizedMoe::random(config, QuantParams::for_message_bits(4), 3, true);
        let moe = QuantizedMoe {
            calibrated_shift: Some(moe.input_shift() - 1),
            calibrated_output_width: Some(moe.expert_output_width() - 1),
            ..moe
        };
        moe.validate().unwrap();
        QuantizedClassifier {
            moe,
            input: InputQuantizer {
                input_scale: 1.0,
                input_zero_point: 0,
            },
            x_scale: 0.5,
            y_scale: 0.25,
            head: None,
        }
    })
}

/// Valid messages of one exchange: batch header and record, results header and record.
struct Messages {
    batch_meta: BatchMeta,
    batch_record: Vec<u8>,
    results_meta: ResultsMeta,
    result_record: Vec<u8>,
}

fn messages() -> &'static Messages {
    static M: OnceLock<Messages> = OnceLock::new();
    M.get_or_init(|| {
        let k = test_keys();
        let client = ClientSession::new(&k.client, model()).unwrap();
        let server = ServerSession::new(&k.server, model(), Strategy::Select).unwrap();
        let batch_meta = client.new_batch(3);
        let rec = client
            .encrypt_record(&batch_meta, 2, &[1.0, -2.0, 3.0, 0.0, 5.0, -6.0, 7.0, -8.0])
            .unwrap();
        let batch_record = bincode::serialize(&rec).unwrap();
        let results_meta = server.results_meta(&batch_meta, Shard::WHOLE);
        let result = server.evaluate(rec).unwrap();
        Messages {
            batch_meta,
            batch_record,
            results_meta,
            result_record: bincode::serialize(&result).unwrap(),
        }
    })
}

/// Mutates `input` in place by one of several strategies chosen by `rng`.
fn mutate(input: &mut Vec<u8>, rng: &mut Rng) {
    let len = input.len();
    let at = |rng: &mut Rng, len: usize| -> usize {
        // Structure sits at the ends of most payloads (headers, dimensions, seeds): aim there
        // half of the time, anywhere otherwise.
        if len == 0 {
            return 0;
        }
        let i = rng.next_u64() as usize % len;
        match rng.next_u64() % 4 {
            0 => i % 256.min(len),
            1 => len - 1 - i % 256.min(len),
            _ => i,
        }
    };
    match rng.next_u64() % 7 {
        0 if len > 0 => {
            let i = at(rng, len);
            input[i] ^= 1 << (rng.next_u64() % 8);
        }
        1 if len > 0 => {
            let i = at(rng, len);
            input[i] = [0u8, 1, 0x7f, 0x80, 0xff][rng.next_u64() as usize % 5];
        }
        2 => input.truncate(rng.next_u64() as usize % (len + 1)),
        3 => {
            let extra = rng.next_u64() as usize % 64;
            for _ in 0..extra {
                input.push(rng.next_u64() as u8);
            }
        }
        4 if len >= 8 => {
            // A 64-bit little-endian length or dimension field rewritten.
            let i = at(rng, len - 7).min(len - 8);
            let v: u64 = [0, 1, u64::MAX, 1 << 32, 1 << 40, 1 << 63][rng.next_u64() as usize % 6];
            input[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        5 if len > 0 => {
            let i = at(rng, len);
            let n = (rng.next_u64() as usize % 16).min(len - i);
            input.drain(i..i + n);
        }
        _ => {
            for _ in 0..3 {
                if !input.is_empty() {
                    let i = rng.next_u64() as usize % input.len();
                    input[i] = rng.next_u64() as u8;
                }
            }
        }
    }
}

/// Runs `decode` on `cases` mutations of `seed` (and on the corpus of `name`), failing with the
/// first input that panics. Returns how many inputs ran and the seconds they took.
fn fuzz(name: &str, seed: &[u8], cases: usize, decode: &dyn Fn(&[u8])) -> (usize, f64) {
    let start = std::time::Instant::now();
    let run = |i: usize, input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| decode(input))).is_err() {
            let path = std::env::temp_dir().join(format!("veilmoe-fuzz-{name}-{i}.bin"));
            let _ = std::fs::write(&path, input);
            panic!("{name}: input {i} panicked (saved to {})", path.display());
        }
    };
    let corpus = corpus(name);
    for (i, input) in corpus.iter().enumerate() {
        run(i, input);
    }
    // One mutated input at a time: a megabyte seed times 10,000 cases would not fit in memory.
    let mut rng = Rng::new(0x5eed ^ name.len() as u64 ^ seed.len() as u64);
    for i in 0..cases {
        let mut m = seed.to_vec();
        for _ in 0..=(rng.next_u64() % 3) {
            mutate(&mut m, &mut rng);
        }
        run(corpus.len() + i, &m);
    }
    (corpus.len() + cases, start.elapsed().as_secs_f64())
}

/// The regression corpus of one decoder.
fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Wraps a (mutated) payload in a valid envelope, so that it passes the checksum: the header
/// layout of `veilmoe-format`, written by hand (no per-byte serialization of large payloads).
fn rewrap(kind: ObjectKind, binding: &Binding, payload: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let name = binding.preset_name.as_bytes();
    let mut out = Vec::with_capacity(70 + name.len() + payload.len());
    out.extend_from_slice(&format::MAGIC);
    out.extend_from_slice(&format::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&binding.preset.0);
    out.extend_from_slice(&binding.key_set.0);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload)[..16]);
    out.extend_from_slice(payload);
    out
}

/// Every decoder, `cases` mutations each.
fn run_all(cases: usize) {
    let k = test_keys();
    let preset = k.client.preset().clone();
    let binding = format::binding(&preset, k.client.key_set());
    let m = messages();
    let client = ClientSession::new(&k.client, model()).unwrap();
    let server = ServerSession::new(&k.server, model(), Strategy::Select).unwrap();
    let mut report = Vec::new();

    // The envelope itself, streamed with a limit.
    let env = format::encode(
        ObjectKind::Batch,
        &preset,
        k.client.key_set(),
        &m.batch_meta,
    )
    .unwrap();
    let n = fuzz("envelope", &env, cases, &|b| {
        let mut cursor = b;
        while let Ok(Some(e)) = format::read_envelope(&mut cursor, 1 << 20) {
            let _ = format::read_header(&e);
        }
    });
    report.push(("envelope", n));

    // Batch header and record, through the server's checks (a record is validated, not run).
    let meta = bincode::serialize(&m.batch_meta).unwrap();
    let n = fuzz("batch-meta", &meta, cases, &|p| {
        let e = rewrap(ObjectKind::Batch, &binding, p);
        if let Ok((_, meta)) = format::decode::<BatchMeta>(&e, ObjectKind::Batch, &preset, None) {
            let _ = server.check_batch(&meta);
        }
    });
    report.push(("batch-meta", n));
    let n = fuzz("batch-record", &m.batch_record, cases, &|p| {
        let e = rewrap(ObjectKind::BatchRecord, &binding, p);
        if let Ok((_, rec)) =
            format::decode::<BatchRecord>(&e, ObjectKind::BatchRecord, &preset, None)
        {
            if rec.x.validate(&preset).is_ok() {
                let _ = rec.x.decompress();
            }
        }
    });
    report.push(("batch-record", n));

    // Results header and record, through the client's checks and decryption.
    let meta = bincode::serialize(&m.results_meta).unwrap();
    let n = fuzz("results-meta", &meta, cases, &|p| {
        let e = rewrap(ObjectKind::Results, &binding, p);
        if let Ok((_, meta)) = format::decode::<ResultsMeta>(&e, ObjectKind::Results, &preset, None)
        {
            if client.check_results(&meta).is_ok() {
                let _ = meta.shard.size(meta.batch_records);
            }
        }
    });
    report.push(("results-meta", n));
    let limit = max_result_record_bytes(&preset, &model().moe);
    let n = fuzz("result-record", &m.result_record, cases, &|p| {
        let e = rewrap(ObjectKind::ResultRecord, &binding, p);
        let mut cursor = e.as_slice();
        if let Ok(Some(e)) = format::read_envelope(&mut cursor, limit) {
            if let Ok((_, rec)) =
                format::decode::<ResultRecord>(&e, ObjectKind::ResultRecord, &preset, None)
            {
                let _ = client.decrypt_record(&m.results_meta, &rec);
            }
        }
    });
    report.push(("result-record", n));

    // Keys (the payload begins with the key's own preset, which is revalidated).
    let ck = k.client.to_bytes().unwrap();
    let (_, ck_payload) = format::read_header(&ck).unwrap();
    let n = fuzz("client-key", ck_payload, cases, &|p| {
        let _ = ClientKey::from_bytes(&rewrap(ObjectKind::ClientKey, &binding, p), None, true);
    });
    report.push(("client-key", n));
    let sk = k.client.server_key_file().unwrap();
    let (_, sk_payload) = format::read_header(&sk).unwrap();
    // Decoding and the shape checks (what expansion allocates follows from checked shapes).
    // Each case hashes and decodes megabytes (0.4 s): a tenth of the cases of the small
    // decoders in the full run, a fiftieth in the quick one.
    let server_cases = if cases >= FULL_CASES {
        cases / 10
    } else {
        cases / 50
    };
    let n = fuzz("server-key", sk_payload, server_cases, &|p| {
        let _ = CompressedServerKey::from_bytes(
            &rewrap(ObjectKind::CompressedServerKey, &binding, p),
            None,
            true,
        );
    });
    report.push(("server-key", n));

    // The quantized-model file.
    let mf = encode_model_file(model(), "fuzz").unwrap();
    let (_, mf_payload) = format::read_header(&mf).unwrap();
    let n = fuzz("model-file", mf_payload, cases, &|p| {
        let _ = decode_model_file(
            &rewrap(ObjectKind::QuantizedModel, &Binding::UNBOUND, p),
            "fuzz",
        );
    });
    report.push(("model-file", n));

    // Text and array formats.
    let toml =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("engine/params/default.toml"))
            .unwrap();
    let n = fuzz("preset-toml", &toml, cases, &|b| {
        if let Ok(t) = std::str::from_utf8(b) {
            let _ = Preset::from_toml("fuzz", t);
        }
    });
    report.push(("preset-toml", n));
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("model/demo/digits-moe");
    let config = std::fs::read(demo.join("config.json")).unwrap();
    let weights = std::fs::read(demo.join("model.safetensors")).unwrap();
    let n = fuzz("config-json", &config, cases, &|b| {
        let _ = FloatMoeModel::from_bytes("fuzz", b, &[("model.safetensors", &weights)], None);
    });
    report.push(("config-json", n));
    // The safetensors header sits at the start of the file (8-byte length, then JSON).
    let head = weights[..4096.min(weights.len())].to_vec();
    let n = fuzz("safetensors", &head, cases, &|b| {
        let mut w = b.to_vec();
        w.extend_from_slice(&weights[head.len()..]);
        let _ = FloatMoeModel::from_bytes("fuzz", &config, &[("model.safetensors", &w)], None);
    });
    report.push(("safetensors", n));
    let mut npy_bytes = b"\x93NUMPY\x01\x00".to_vec();
    let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    npy_bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy_bytes.extend_from_slice(h.as_bytes());
    for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
        npy_bytes.extend_from_slice(&v.to_le_bytes());
    }
    let n = fuzz("npy", &npy_bytes, cases, &|b| {
        let _ = npy::parse_npy(b);
    });
    report.push(("npy", n));
    let csv = b"a,b,c,label\n1,2,3,0\n-1.5,2e3,0.25,9\n# note\n\n4,5,6,1\n".to_vec();
    let n = fuzz("csv", &csv, cases, &|b| {
        if let Ok(t) = std::str::from_utf8(b) {
            let _ = table::parse_rows("fuzz", t);
            let _ = digits::parse_labelled_csv("fuzz", t);
        }
    });
    report.push(("csv", n));
    let gz = {
        use std::io::Write;
        let mut e = flate2_encoder();
        e.write_all(&csv).unwrap();
        e.finish().unwrap()
    };
    let n = fuzz("csv-gz", &gz, cases, &|b| {
        let _ = table::gunzip("fuzz", b);
    });
    report.push(("csv-gz", n));
    for (name, (n, secs)) in &report {
        eprintln!("fuzz {name:<14} {n:>6} inputs, no panic, {secs:.1} s");
    }
}

fn flate2_encoder() -> flate2::write::GzEncoder<Vec<u8>> {
    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default())
}

#[test]
fn decoders_survive_mutated_inputs_and_the_regression_corpus() {
    run_all(QUICK_CASES);
}

#[test]
#[ignore = "the full run: 10,000 cases per decoder, 1,000 server keys (minutes); see the module docs"]
fn decoders_survive_ten_thousand_mutations_each() {
    run_all(FULL_CASES);
}

#[test]
fn the_envelope_refuses_a_small_file_claiming_a_huge_payload() {
    let k = test_keys();
    let mut env = format::encode(
        ObjectKind::Batch,
        k.client.preset(),
        k.client.key_set(),
        &messages().batch_meta,
    )
    .unwrap();
    // 100 bytes or so that claim 64 GiB.
    let name_len = k.client.preset().name.len();
    let at = 8 + 2 + 2 + 16 + 16 + 2 + name_len;
    env[at..at + 8].copy_from_slice(&(64u64 << 30).to_le_bytes());
    let mut cursor = env.as_slice();
    let err = format::read_envelope(&mut cursor, MAX_META_BYTES).unwrap_err();
    assert!(err.to_string().contains("claims"), "{err}");
    let mut cursor = env.as_slice();
    let err = format::read_envelope(&mut cursor, u64::MAX).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}
