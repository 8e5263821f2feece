//! `params show` and presets' estimated security: the estimate is printed for every preset, a
//! custom preset whose claimed security the fitted curves do not back is refused in one line, and
//! the same parameters marked insecure are shown with what they are worth.

mod common;
use common::*;

use std::process::Output;

/// The default preset renamed, with LWE noise 1e-9 (2^-29.9 at n = 866: only the 80-bit curve
/// is met), marked insecure or not.
fn weak_default(insecure: bool) -> String {
    let text = preset_text("default");
    let weak = text
        .replace("name = \"default\"", "name = \"weak\"")
        .replace(
            "noise = { gaussian_std = 2.046151696979124e-06 }",
            "noise = { gaussian_std = 1e-9 }",
        )
        .replace("insecure = false", &format!("insecure = {insecure}"));
    assert!(weak.contains("gaussian_std = 1e-9"), "default.toml changed");
    weak
}

fn stdout(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "stdout {s} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s
}

#[test]
fn show_prints_the_estimate_of_an_insecure_custom_preset() {
    let dir = tmp("params-security", "insecure");
    let path = dir.join("weak.toml");
    std::fs::write(&path, weak_default(true)).unwrap();
    let text = stdout(&params().arg("show").arg(&path).output().unwrap());
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("security"))
        .unwrap_or_else(|| panic!("no security line in {text}"));
    assert!(line.contains("INSECURE"), "{line}");
    assert!(line.contains("estimated >= 80 bits (about 91)"), "{line}");
    assert!(line.contains("lattice-estimator"), "{line}");
    assert!(
        text.contains("LWE n = 866, std 2^-29.90: >= 80 bits"),
        "{text}"
    );
    assert!(text.contains("GLWE n = 2048"), "{text}");

    let v: serde_json::Value = serde_json::from_str(&stdout(
        &params()
            .arg("show")
            .arg(&path)
            .arg("--json")
            .output()
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(v["estimated_security_bits"], 80);
    let approx = v["estimated_security_approx"].as_f64().unwrap();
    assert!((80.0..112.0).contains(&approx), "{approx}");
    assert_eq!(v["key_security"][0]["key"], "LWE");
    assert_eq!(v["key_security"][0]["estimate"]["certified_bits"], 80);
    assert_eq!(v["key_security"][1]["key"], "GLWE");
    assert_eq!(v["key_security"][1]["estimate"]["certified_bits"], 128);

    // the embedded test preset (n = 256) is below every fitted curve
    let path = dir.join("test-copy.toml");
    std::fs::write(
        &path,
        preset_text("test").replace("name = \"test\"", "name = \"test-copy\""),
    )
    .unwrap();
    let text = stdout(&params().arg("show").arg(&path).output().unwrap());
    assert!(text.contains("estimated < 80 bits"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn show_prints_the_estimate_next_to_the_claim_of_an_embedded_preset() {
    let text = stdout(&params().args(["show", "default"]).output().unwrap());
    assert!(text.contains("128 bits (claimed: tfhe-rs 1.8.2"), "{text}");
    assert!(text.contains("estimated >= 128 bits (about 140)"), "{text}");
}

#[test]
fn show_refuses_a_secure_claim_the_curves_do_not_back_in_one_line() {
    let dir = tmp("params-security", "secure");
    let path = dir.join("weak.toml");
    std::fs::write(&path, weak_default(false)).unwrap();
    let out = params().arg("show").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("claims 128-bit security but the LWE key (n = 866, std 2^-29.9)"),
        "{err}"
    );
    assert!(err.contains("meets only the 80-bit fitted curve"), "{err}");
    assert!(err.contains("mark it insecure"), "{err}");
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
