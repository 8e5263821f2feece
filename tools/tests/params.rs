//! The `params` tool: preset listing, a passing check on `default`, failing checks (an
//! insecure custom preset, a preset whose noise budget the model exceeds), malformed presets.

mod common;
use common::*;

use std::process::Output;

fn test_preset_text() -> String {
    preset_text("test")
}

fn error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(!err.contains("panicked"), "{err}");
    err.lines().last().unwrap_or("").to_string()
}

#[test]
fn list_and_show_report_every_preset() {
    let out = params().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v = json(&out);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "fine", "precise", "test"]);
    let out = params()
        .args(["show", "default", "--json"])
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["security_bits"], 128);
    assert_eq!(v["insecure"], false);
    assert!(v["log2_p_fail_declared"].as_f64().unwrap() <= -128.0);
    assert!(v["key_sizes"]["server_key"].as_u64().unwrap() > 100 << 20);
}

#[test]
fn check_passes_on_default() {
    let out = params().args(["check", "--json"]).output().unwrap();
    let v = json(&out);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["pass"], true);
    assert!(v["log2_p_fail_token"].as_f64().unwrap() < -100.0);
    for s in v["stages"].as_array().unwrap() {
        assert_eq!(s["within_budget"], true, "{s}");
    }
    assert!(v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["stage"] == "index-ggsw"));
    // Fidelity of the embedded model to its float model, per stage, on its test split.
    let fid = &v["fidelity"]["fidelity"];
    assert_eq!(fid["records"], 360);
    let stages: Vec<&str> = fid["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["router logits", "pre-activation", "silu factor"]);
    let cosine = fid["block_output"]["cosine_mean"].as_f64().unwrap();
    assert!(cosine > 0.5 && cosine <= 1.0, "{fid}");
    assert!(fid["top1_agreement"].as_f64().unwrap() > 0.9, "{fid}");
    // the demo keeps its stages (cosine >= 0.97) and loses meaning only in the block output
    assert_eq!(v["fidelity"]["first_lossy_stage"], "block output", "{fid}");
    // the expert output is returned wide, not read
    let out = v["accumulators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["stage"] == "expert output (W2)")
        .unwrap();
    assert_eq!(out["read"], false);
}

#[test]
fn check_fails_on_an_insecure_custom_preset() {
    let dir = tmp("params", "weak");
    let path = dir.join("weak.toml");
    let text = test_preset_text().replace("name = \"test\"", "name = \"weak80\"");
    std::fs::write(&path, text).unwrap();
    let out = params()
        .args(["check", "--json", "--preset"])
        .arg(&path)
        .output()
        .unwrap();
    let v = json(&out);
    assert!(!out.status.success());
    assert_eq!(v["pass"], false);
    assert!(v["advice"][0]
        .as_str()
        .unwrap()
        .contains("below 128-bit security"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_fails_when_the_model_exceeds_the_noise_budget() {
    // The test preset with its failure probability claimed only for single PBS outputs
    // (max_norm2 = 1): every read of a sum of PBS outputs exceeds the budget.
    let dir = tmp("params", "tight");
    let path = tight_preset(&dir);
    let out = params()
        .args(["check", "--json", "--preset"])
        .arg(&path)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["pass"], false);
    let advice: Vec<&str> = v["advice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        advice.iter().any(|a| a.contains("exceeds the budget")),
        "{advice:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_presets_fail_in_one_line() {
    let dir = tmp("params", "malformed");
    for (name, text) in [
        ("garbage.toml", "this is = = not toml".to_string()),
        (
            "missing.toml",
            test_preset_text().replace("message_bits = 4\n", ""),
        ),
        (
            "zero.toml",
            test_preset_text().replace("polynomial_size = 1024", "polynomial_size = 1000"),
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = params().arg("show").arg(&path).output().unwrap();
        let line = error_line(&out);
        assert!(line.starts_with("error: "), "{name}: {line}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1,
            "{name}"
        );
    }
    let out = params().args(["show", "no-such-preset"]).output().unwrap();
    assert!(error_line(&out).contains("unknown preset"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The noise model against reality: on a deliberately noisy custom preset (the test preset
/// with its LWE noise raised so that a PBS fails a few percent of the time), the predicted
/// per-PBS failure probability matches the error rate measured over 8,192 PBS within a factor
/// of 3 (the expected count is in the hundreds, so sampling error is a few percent).
#[test]
fn predicted_failure_probability_matches_the_measured_rate() {
    use veilmoe_engine::{noise, ClientKey, Encoding, Evaluator, Lut, Preset};
    let text = test_preset_text()
        .replace("name = \"test\"", "name = \"noisy\"")
        .replace("log2_p_fail = -57.0", "log2_p_fail = -4.5")
        .replace(
            "noise = { gaussian_std = 9.313225746154785e-10 }",
            "noise = { gaussian_std = 2.4e-5 }",
        );
    let p = Preset::from_toml("noisy", &text).unwrap();
    let client = ClientKey::generate(&p);
    let server = client.server_key();
    let ev = Evaluator::new(&server);
    let enc = Encoding::unsigned(p.message_bits);
    let lut = Lut::univariate(&p, enc, enc, |v| v).unwrap();
    let n = 8192usize;
    let mut seed = 0x9E37_79B9u64;
    let values: Vec<i64> = (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 16) as i64
        })
        .collect();
    let ct = client.encrypt_lwe(&values, enc).unwrap();
    let predicted = noise::log2_p_fail(&p, ct.variance(), p.pbs_read_bits()).exp2();
    assert!(
        (1e-3..0.3).contains(&predicted),
        "the preset should fail a few percent of the time, model says {predicted}"
    );
    let out = client.decrypt_lwe(&ev.pbs(&ct, &lut).unwrap()).unwrap();
    let errors = out.iter().zip(&values).filter(|(a, b)| a != b).count();
    let measured = errors as f64 / n as f64;
    assert!(
        measured <= 3.0 * predicted && measured >= predicted / 3.0,
        "measured {measured:.4} ({errors} / {n}), predicted {predicted:.4}"
    );
    eprintln!("measured {measured:.4} ({errors} / {n}), predicted {predicted:.4}");
}

#[test]
fn estimate_reports_counts_time_and_sizes() {
    let out = params()
        .args([
            "estimate",
            "--preset",
            "test",
            "--threads",
            "2",
            "--batch",
            "100",
            "--json",
        ])
        .output()
        .unwrap();
    let v = json(&out);
    assert!(out.status.success());
    let expert = &v["ops_per_stage"]["expert"];
    // The demo model: gated FFN, h = 16: 4h = 64 PBS for the one selected expert (its d = 64
    // outputs leave the server wide, with no read).
    assert_eq!(expert["pbs"], 64);
    assert_eq!(v["ops_per_stage"]["index-ggsw"]["circuit_bootstrap"], 2);
    let per_token = v["estimated_ms_per_token"].as_f64().unwrap();
    assert!(per_token > 0.0);
    let batch = v["estimated_seconds_per_batch"].as_f64().unwrap();
    assert!((batch - per_token * 100.0 / 1e3).abs() < 1e-6);
    assert!(
        v["download_bytes_per_token"].as_u64().unwrap()
            > v["upload_bytes_per_token"].as_u64().unwrap()
    );
}
