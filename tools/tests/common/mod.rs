//! Helpers shared by the tools' CLI test binaries (`veilmoe`, `params`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `veilmoe` binary of this build.
pub fn veilmoe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veilmoe"))
}

/// The `params` binary of this build.
pub fn params() -> Command {
    Command::new(env!("CARGO_BIN_EXE_params"))
}

/// A fresh, empty directory named after the test binary's `prefix` and `name`, under cargo's
/// temporary directory for integration tests (`target/tmp`; emptied when made again, so runs
/// do not pile files up in the system temp dir).
pub fn tmp(prefix: &str, name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A success, or the command's stderr in the failure message.
pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A failure: non-zero exit, exactly one line on stderr containing `needle`.
pub fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure, got success");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("WARNING: preset"))
        .collect();
    assert_eq!(lines.len(), 1, "one-line error expected, got: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "expected `{needle}` in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The first `n` digits test records as CSV (with a header line).
pub fn write_records(path: &Path, n: usize) -> Vec<Vec<f32>> {
    let (_, test) =
        veilmoe_model::data::digits_split(&veilmoe_model::data::embedded_digits().unwrap());
    let recs: Vec<Vec<f32>> = test.features[..n].to_vec();
    let mut s: String = (0..64).map(|i| format!("p{i},")).collect();
    s.pop();
    s.push('\n');
    for r in &recs {
        let row: Vec<String> = r.iter().map(|v| v.to_string()).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
    recs
}

/// The command's stdout as JSON (panics with both streams when it is not).
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The text of an embedded preset's TOML file.
pub fn preset_text(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../engine/params/{name}.toml")),
    )
    .unwrap()
}

/// Writes, under `dir`, the test preset renamed `tight` with its failure probability claimed
/// only for single PBS outputs (max_norm2 = 1): every read of a sum of PBS outputs exceeds its
/// budget. Returns the file's path.
pub fn tight_preset(dir: &Path) -> PathBuf {
    let path = dir.join("tight.toml");
    let text = preset_text("test")
        .replace("name = \"test\"", "name = \"tight\"")
        .replace("max_norm2 = ", "max_norm2 = 1 # was ");
    std::fs::write(&path, text).unwrap();
    path
}
