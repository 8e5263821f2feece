//! The offline batch workflow through the `veilmoe` binary on the `test` preset and the
//! embedded digits model: keygen -> encrypt -> infer -> decrypt checked against the plaintext
//! model; a killed job resumed without losing or duplicating a record; a sharded batch merged
//! into exactly the unsharded result; and bad input refused in one line with no output file.

mod common;

use common::{fails_with, ok, veilmoe, write_records};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use veilmoe_model::data::{digits_split, embedded_digits};
use veilmoe_model::Rounding;
use veilmoe_tools::model_source::ModelSource;

fn tmpdir(name: &str) -> PathBuf {
    common::tmp("jobs", name)
}

/// Keys for `preset` (a name or a TOML path) in a fresh directory.
fn keygen(name: &str, preset: &std::ffi::OsStr) -> PathBuf {
    let dir = tmpdir(name);
    ok(&veilmoe()
        .args(["keygen", "--allow-insecure", "--preset"])
        .arg(preset)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap());
    dir
}

/// One key set on the `test` preset for the whole binary.
fn keys() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| keygen("keys", "test".as_ref()))
}

fn encrypt(dir: &Path, csv: &Path, batch: &Path) {
    ok(&veilmoe()
        .args(["encrypt", "--allow-insecure", "--key"])
        .arg(keys().join("client.key"))
        .arg("--input")
        .arg(csv)
        .arg("--out")
        .arg(batch)
        .current_dir(dir)
        .output()
        .unwrap());
}

fn infer_cmd(batch: &Path, out: &Path) -> Command {
    infer_with(keys(), batch, out)
}

/// `infer` with the server key in `key_dir`.
fn infer_with(key_dir: &Path, batch: &Path, out: &Path) -> Command {
    let mut c = veilmoe();
    c.args(["infer", "--allow-insecure", "--server-key"])
        .arg(key_dir.join("server.key"))
        .arg("--input")
        .arg(batch)
        .arg("--out")
        .arg(out);
    c
}

fn decrypt(results: &Path, preds: &Path) -> Vec<(usize, usize)> {
    ok(&veilmoe()
        .args(["decrypt", "--allow-insecure", "--key"])
        .arg(keys().join("client.key"))
        .arg("--input")
        .arg(results)
        .arg("--out")
        .arg(preds)
        .output()
        .unwrap());
    let text = std::fs::read_to_string(preds).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn keygen_encrypt_infer_decrypt_matches_the_plaintext_model() {
    let dir = tmpdir("pipeline");
    let csv = dir.join("records.csv");
    let recs = write_records(&csv, 12);
    let batch = dir.join("batch.vmb");
    encrypt(&dir, &csv, &batch);
    let results = dir.join("results.vmb");
    ok(&infer_cmd(&batch, &results).output().unwrap());
    assert!(!job_partial(&results).exists());
    let out = veilmoe()
        .args(["inspect", "--json"])
        .arg(&results)
        .output()
        .unwrap();
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "encrypted results");
    assert_eq!(v["records"], 12);
    let preds = decrypt(&results, &dir.join("preds.csv"));
    assert_eq!(
        preds.iter().map(|p| p.0).collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
    // The plaintext quantized model on the same records: encrypted predictions agree except
    // where approximate rounding (one step) changes a near tie.
    let preset = veilmoe_engine::Preset::load("test", true).unwrap();
    let model = ModelSource::Embedded.load_classifier(&preset).unwrap();
    let agree = preds
        .iter()
        .filter(|(i, c)| {
            let out = model
                .reference_outputs(&recs[*i], &mut Rounding::Exact)
                .unwrap();
            veilmoe_model::argmax(&out) == *c
        })
        .count();
    assert!(agree >= 11, "agreement {agree} / 12");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn job_partial(out: &Path) -> PathBuf {
    veilmoe_tools::jobs::infer::partial_path(out)
}

/// Whole result records in a checkpoint (the header excluded).
fn checkpoint_records(partial: &Path) -> usize {
    let bytes = match std::fs::read(partial) {
        Ok(b) => b,
        Err(_) => return 0,
    };
    let mut cur = std::io::Cursor::new(bytes.as_slice());
    let mut n = 0usize;
    while let Ok(Some(_)) = veilmoe_engine::format::read_envelope(&mut cur, u64::MAX) {
        n += 1;
    }
    n.saturating_sub(1)
}

#[test]
fn killed_infer_resumes_without_losing_or_duplicating_records() {
    let dir = tmpdir("resume");
    let csv = dir.join("records.csv");
    write_records(&csv, 10);
    let batch = dir.join("batch.vmb");
    encrypt(&dir, &csv, &batch);
    let results = dir.join("results.vmb");
    let partial = job_partial(&results);
    let mut child = infer_cmd(&batch, &results)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while checkpoint_records(&partial) < 3 {
        assert!(t.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = checkpoint_records(&partial);
    assert!((3..10).contains(&before), "killed after {before} records");
    assert!(!results.exists(), "no output before the shard is complete");

    // Without --resume the checkpoint is not silently overwritten.
    fails_with(&infer_cmd(&batch, &results).output().unwrap(), "--resume");

    let out = infer_cmd(&batch, &results)
        .args(["--resume", "--json"])
        .output()
        .unwrap();
    ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["resumed_records"], before as u64);
    assert_eq!(summary["computed_records"], (10 - before) as u64);
    let preds = decrypt(&results, &dir.join("preds.csv"));
    assert_eq!(
        preds.iter().map(|p| p.0).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sharded_batch_merges_into_the_unsharded_result() {
    let dir = tmpdir("shards");
    let csv = dir.join("records.csv");
    write_records(&csv, 5);
    let batch = dir.join("batch.vmb");
    encrypt(&dir, &csv, &batch);
    let whole = dir.join("whole.vmb");
    ok(&infer_cmd(&batch, &whole).output().unwrap());
    let parts: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = dir.join(format!("part{i}.vmb"));
            ok(&infer_cmd(&batch, &p)
                .args(["--shard", &format!("{i}/2")])
                .output()
                .unwrap());
            p
        })
        .collect();
    let merged = dir.join("merged.vmb");
    // A missing shard and a repeated shard are refused.
    let out = veilmoe()
        .args(["merge", "--out"])
        .arg(&merged)
        .arg(&parts[0])
        .output()
        .unwrap();
    fails_with(&out, "missing shards: 1/2");
    let out = veilmoe()
        .args(["merge", "--out"])
        .arg(&merged)
        .arg(&parts[1])
        .arg(&parts[1])
        .output()
        .unwrap();
    fails_with(&out, "given twice");
    assert!(!merged.exists());
    ok(&veilmoe()
        .args(["merge", "--out"])
        .arg(&merged)
        .arg(&parts[1])
        .arg(&parts[0])
        .output()
        .unwrap());
    // The merge holds the whole run's records, in order, with the same sizes, and decrypts to
    // the same classes. Not necessarily the same bytes: tfhe picks its FFT algorithm in each
    // process by timing the candidates, so the lowest (noise) bits of the ciphertexts may
    // differ between two processes running the same computation.
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(len(&merged), len(&whole));
    assert_eq!(
        decrypt(&merged, &dir.join("merged.csv")),
        decrypt(&whole, &dir.join("whole.csv"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_fails_in_one_line_without_output() {
    let dir = tmpdir("bad");
    let csv = dir.join("records.csv");
    write_records(&csv, 3);
    let batch = dir.join("batch.vmb");
    encrypt(&dir, &csv, &batch);
    let bytes = std::fs::read(&batch).unwrap();
    let out_path = dir.join("out.vmb");
    let check_no_output = || {
        assert!(!out_path.exists(), "output written");
        assert!(!job_partial(&out_path).exists(), "checkpoint left behind");
    };

    // Truncated and corrupted batches.
    let truncated = dir.join("truncated.vmb");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    fails_with(
        &infer_cmd(&truncated, &out_path).output().unwrap(),
        "truncated",
    );
    check_no_output();
    let corrupted = dir.join("corrupted.vmb");
    let mut c = bytes.clone();
    let at = c.len() - 50;
    c[at] ^= 0x40;
    std::fs::write(&corrupted, &c).unwrap();
    fails_with(
        &infer_cmd(&corrupted, &out_path).output().unwrap(),
        "corrupted",
    );
    check_no_output();

    // Wrong key: a server key of another key set.
    let other = keygen("otherkeys", "test".as_ref());
    fails_with(
        &infer_with(&other, &batch, &out_path).output().unwrap(),
        "key set",
    );
    check_no_output();

    // Wrong preset: keys of a custom preset (the test preset with another keyswitch).
    let custom = dir.join("custom.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/params/test.toml"),
    )
    .unwrap()
    .replace("name = \"test\"", "name = \"test-variant\"");
    let text = text.replacen("level = 5", "level = 6", 1);
    std::fs::write(&custom, text).unwrap();
    let variant = keygen("variantkeys", custom.as_os_str());
    fails_with(
        &infer_with(&variant, &batch, &out_path).output().unwrap(),
        "preset",
    );
    check_no_output();

    // Wrong input width: records of 63 features.
    let narrow = dir.join("narrow.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let cut: String = text
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n")
        .collect();
    std::fs::write(&narrow, cut).unwrap();
    let out = veilmoe()
        .args(["encrypt", "--allow-insecure", "--key"])
        .arg(keys().join("client.key"))
        .arg("--input")
        .arg(&narrow)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    fails_with(&out, "63 values, the model takes 64");
    check_no_output();

    // Missing tensor: the demo model rewritten without expert 3's w3.
    let model_dir = dir.join("model");
    let m = veilmoe_model::embedded_demo_model().unwrap();
    m.save_mixtral(&model_dir).unwrap();
    let p = "model.layers.0.block_sparse_moe";
    let mat =
        |a: &veilmoe_model::ndarray::Array2<f32>| (a.shape().to_vec(), a.iter().copied().collect());
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let (shape, v) = mat(&m.router);
    tensors.push((format!("{p}.gate.weight"), shape, v));
    for (i, x) in m.experts.iter().enumerate() {
        let (shape, v) = mat(&x.w1);
        tensors.push((format!("{p}.experts.{i}.w1.weight"), shape, v));
        let (shape, v) = mat(&x.w2);
        tensors.push((format!("{p}.experts.{i}.w2.weight"), shape, v));
        if i != 3 {
            let (shape, v) = mat(x.w3.as_ref().unwrap());
            tensors.push((format!("{p}.experts.{i}.w3.weight"), shape, v));
        }
    }
    std::fs::write(
        model_dir.join("model.safetensors"),
        veilmoe_model::checkpoint::safetensors_bytes(
            &tensors,
            veilmoe_model::checkpoint::StoredDtype::F32,
        )
        .unwrap(),
    )
    .unwrap();
    let out = infer_cmd(&batch, &out_path)
        .arg("--model")
        .arg(&model_dir)
        .args(["--calibration"])
        .arg(&csv)
        .output()
        .unwrap();
    fails_with(&out, "experts.3.w3.weight");
    check_no_output();

    // Unknown strategy.
    fails_with(
        &infer_cmd(&batch, &out_path)
            .args(["--strategy", "fastest"])
            .output()
            .unwrap(),
        "invalid value 'fastest'",
    );
    check_no_output();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
    std::fs::remove_dir_all(&variant).unwrap();
}

/// `veilmoe quantize` writes a model file once; encrypt, infer and decrypt take it, decrypt
/// needs nothing else (no model directory, no calibration records); the id is the same in
/// every process that reads the file; a corrupted or truncated model file is refused in one
/// line and nothing is written.
#[test]
fn a_model_file_from_quantize_serves_encrypt_infer_and_decrypt() {
    let dir = tmpdir("modelfile");
    // A checkpoint directory (the demo model saved in Mixtral format) and calibration records.
    // The demo model with a retuned head: another model than the embedded one.
    let model_dir = dir.join("checkpoint");
    let mut m = veilmoe_model::embedded_demo_model().unwrap();
    m.head.as_mut().unwrap().weight *= 1.25;
    m.save_mixtral(&model_dir).unwrap();
    let (train, _) = digits_split(&embedded_digits().unwrap());
    let calibration = dir.join("calibration.csv");
    let rows: Vec<String> = train.features[..200]
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    std::fs::write(&calibration, rows.join("\n")).unwrap();
    let model_file = dir.join("digits.vmm");
    let out = veilmoe()
        .args([
            "quantize",
            "--allow-insecure",
            "--preset",
            "test",
            "--model",
        ])
        .arg(&model_dir)
        .arg("--calibration")
        .arg(&calibration)
        .arg("--out")
        .arg(&model_file)
        .output()
        .unwrap();
    ok(&out);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    // what the quantizer chose is printed before the model is written
    for line in [
        "quantization (",
        "stage 1:",
        "W2:",
        "fidelity to the float model",
    ] {
        assert!(said.contains(line), "no `{line}` in: {said}");
    }
    let id = said
        .lines()
        .find(|l| l.starts_with("wrote "))
        .and_then(|l| l.split(": model ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no model id in: {said}"))
        .to_string();
    // Another process (inspect) and this one read the same id.
    let out = veilmoe()
        .args(["inspect", "--json"])
        .arg(&model_file)
        .output()
        .unwrap();
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "quantized model");
    assert_eq!(v["header"]["model_id"], id.as_str());
    let file = veilmoe_model::model_file::read_model_file(&model_file).unwrap();
    assert_eq!(file.id.to_string(), id);

    let csv = dir.join("records.csv");
    let recs = write_records(&csv, 4);
    let batch = dir.join("batch.vmb");
    ok(&veilmoe()
        .args(["encrypt", "--allow-insecure", "--key"])
        .arg(keys().join("client.key"))
        .args(["--input"])
        .arg(&csv)
        .arg("--model")
        .arg(&model_file)
        .arg("--out")
        .arg(&batch)
        .output()
        .unwrap());
    let results = dir.join("results.vmb");
    ok(&infer_cmd(&batch, &results)
        .arg("--model")
        .arg(&model_file)
        .output()
        .unwrap());
    // The embedded model is another model: its decryption refuses these results.
    let preds_csv = dir.join("preds.csv");
    fails_with(
        &veilmoe()
            .args(["decrypt", "--allow-insecure", "--key"])
            .arg(keys().join("client.key"))
            .arg("--input")
            .arg(&results)
            .arg("--out")
            .arg(&preds_csv)
            .output()
            .unwrap(),
        "model",
    );
    assert!(!preds_csv.exists());
    ok(&veilmoe()
        .args(["decrypt", "--allow-insecure", "--key"])
        .arg(keys().join("client.key"))
        .arg("--input")
        .arg(&results)
        .arg("--model")
        .arg(&model_file)
        .arg("--out")
        .arg(&preds_csv)
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&preds_csv).unwrap();
    let classes: Vec<usize> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    let agree = classes
        .iter()
        .zip(&recs)
        .filter(|(c, r)| {
            let out = file
                .model
                .reference_outputs(r, &mut Rounding::Exact)
                .unwrap();
            veilmoe_model::argmax(&out) == **c
        })
        .count();
    assert!(
        agree + 1 >= recs.len(),
        "agreement {agree} / {}",
        recs.len()
    );

    // A corrupted and a truncated model file: one line, nothing written.
    let bytes = std::fs::read(&model_file).unwrap();
    let mut corrupted = bytes.clone();
    let at = corrupted.len() - 10;
    corrupted[at] ^= 0x01;
    let truncated = bytes[..bytes.len() / 2].to_vec();
    for (name, content, needle) in [
        ("corrupted.vmm", corrupted, "corrupted"),
        ("truncated.vmm", truncated, "truncated"),
    ] {
        let bad = dir.join(name);
        std::fs::write(&bad, content).unwrap();
        let out_batch = dir.join(format!("{name}.vmb"));
        fails_with(
            &veilmoe()
                .args(["encrypt", "--allow-insecure", "--key"])
                .arg(keys().join("client.key"))
                .arg("--input")
                .arg(&csv)
                .arg("--model")
                .arg(&bad)
                .arg("--out")
                .arg(&out_batch)
                .output()
                .unwrap(),
            needle,
        );
        assert!(!out_batch.exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
