//! The `veilmoe` binary: keygen and inspect on the test preset, and one-line errors with a
//! non-zero exit and no partial output on bad input.

mod common;

use common::{ok, veilmoe};

use std::path::PathBuf;

/// Runs `veilmoe ARGS`, checks it succeeded, and parses its JSON report.
fn json_report(args: &[&str]) -> serde_json::Value {
    let out = veilmoe().args(args).output().unwrap();
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    common::tmp("cli", name)
}

#[test]
fn keygen_then_inspect() {
    let dir = tmpdir("keygen");
    let out = veilmoe()
        .args(["keygen", "--preset", "test", "--allow-insecure", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("INSECURE"));
    let out = veilmoe()
        .args(["inspect", "--json"])
        .arg(dir.join("server.key"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "server key");
    assert_eq!(v["preset"], "test");
    let out = veilmoe()
        .args(["inspect"])
        .arg(dir.join("client.key"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("client key, preset test"));
    // The secret key is readable by its owner only, from its creation on.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("client.key"), 0o600);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn insecure_preset_without_opt_in_fails_cleanly() {
    let dir = tmpdir("insecure");
    let out = veilmoe()
        .args(["keygen", "--preset", "test", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("INSECURE"));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no partial output"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_refuses_bad_files_in_one_line() {
    let dir = tmpdir("inspect");
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"definitely not a veilmoe file").unwrap();
    for path in [junk, dir.join("missing.key")] {
        let out = veilmoe().arg("inspect").arg(&path).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bench moe --json` counts every operation of a token both in total and per stage, and the
/// per-stage counts add up to the totals (the circuit bootstraps of the index bits sit in
/// `index-ggsw`, one per bit).
#[test]
fn bench_moe_counts_operations_per_stage() {
    let v = json_report(&[
        "bench",
        "moe",
        "--preset",
        "test",
        "--allow-insecure",
        "--experts",
        "4",
        "--strategy",
        "select",
        "--d",
        "4",
        "--h",
        "4",
        "--runs",
        "1",
        "--json",
    ]);
    let case = &v["cases"][0];
    let stages = case["ops_per_stage"].as_object().unwrap();
    for (kind, total) in case["ops"].as_object().unwrap() {
        let sum: u64 = stages
            .values()
            .filter_map(|s| s[kind.as_str()].as_u64())
            .sum();
        assert_eq!(sum, total.as_u64().unwrap(), "{kind}");
    }
    assert_eq!(stages["index-ggsw"]["circuit_bootstrap"], 2);
    assert!(stages["expert"]["pbs"].as_u64().unwrap() >= 4);
}

/// `veilmoe bench multibit`: the classic set first (ratio 1), then tfhe's multi-bit sets of
/// grouping 2, 3, 4, each with the key size that its shape implies (`n / g * 2^g` GGSWs of
/// `(k + 1)^2 * level` Fourier polynomials of `N / 2` complex values).
#[test]
fn bench_multibit_compares_the_vetted_sets() {
    let v = json_report(&[
        "bench",
        "multibit",
        "--threads",
        "2",
        "--batch",
        "2",
        "--runs",
        "1",
        "--json",
    ]);
    let rows = v["rows"].as_array().unwrap();
    let groups: Vec<u64> = rows
        .iter()
        .map(|r| r["grouping_factor"].as_u64().unwrap())
        .collect();
    assert_eq!(groups, [1, 2, 3, 4]);
    assert_eq!(rows[0]["batch_vs_classic"], 1.0);
    for r in rows {
        let (g, n, poly, level) = (
            r["grouping_factor"].as_u64().unwrap(),
            r["lwe_dimension"].as_u64().unwrap(),
            r["polynomial_size"].as_u64().unwrap(),
            r["pbs_level"].as_u64().unwrap(),
        );
        let ggsws = if g == 1 { n } else { n / g * (1 << g) };
        let mb = (ggsws * 4 * level * poly / 2 * 16) as f64 / 1e6;
        assert!(
            (r["fourier_key_mb"].as_f64().unwrap() - mb).abs() < 1e-6,
            "{r}"
        );
        assert_eq!(r["external_products"].as_u64().unwrap(), n / g);
        assert!(r["batch_ms_per_pbs"].as_f64().unwrap() > 0.0);
        assert!(r["log2_p_fail"].as_f64().unwrap() <= -128.0);
    }
}

/// `veilmoe route` on the shipped digits pool (test preset): every record answered (the pool's
/// fallback covers its batches), a short last batch, the CSV of answers, and answers that
/// match the plaintext reference of the same rules and the labels far above chance (the test
/// preset's noise moves a few near-edge routing decisions).
#[test]
fn route_runs_the_shipped_pool() {
    let dir = tmpdir("route");
    let csv = dir.join("answers.csv");
    let out = veilmoe()
        .args([
            "route",
            "--preset",
            "test",
            "--allow-insecure",
            "--records",
            "20",
        ])
        .args(["--json", "--out"])
        .arg(&csv)
        .output()
        .unwrap();
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"], 20);
    assert_eq!(v["batch"], 16);
    assert_eq!(v["covering"], true);
    assert_eq!(v["dropped"], 0);
    let answered: u64 = v["answered_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(answered, 20);
    // measured over 20 runs: agreement 0.75-1.0, accuracy 0.85-0.95; chance is 0.1
    assert!(v["agreement"].as_f64().unwrap() >= 0.5, "{v}");
    assert!(v["encrypted_accuracy"].as_f64().unwrap() >= 0.5, "{v}");
    assert!(v["ops_per_batch"]["pbs"].as_u64().unwrap() > 0);
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 21);
    assert_eq!(
        lines[0],
        "index,label,model,class,reference_model,reference_class"
    );
    for l in &lines[1..] {
        let f: Vec<&str> = l.split(',').collect();
        assert!(f.len() == 6 && f.iter().all(|v| !v.is_empty()), "{l}");
    }
    // a missing pool: one line, non-zero exit, no answers file
    let missing = dir.join("missing.csv");
    let out = veilmoe()
        .args(["route", "--preset", "test", "--allow-insecure", "--pool"])
        .arg(dir.join("no-pool"))
        .arg("--out")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool.toml"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
    assert!(!missing.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
