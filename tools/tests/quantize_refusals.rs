//! `veilmoe quantize` refusals: a model its target preset cannot run, and a bad `--headroom`;
//! one-line errors and no model file either way.

mod common;

use common::{fails_with, veilmoe, write_records};

fn tmpdir(name: &str) -> std::path::PathBuf {
    common::tmp("quantize", name)
}

/// `veilmoe quantize` runs one token on the target preset before writing: a model that exceeds
/// the preset's noise budget is refused there, with the stage and what to change, and no model
/// file is written (the client never encrypts for a model `infer` would stop on).
#[test]
fn quantize_refuses_a_model_the_preset_cannot_run() {
    let dir = tmpdir("quantize-refused");
    let tight = common::tight_preset(&dir);
    let out_file = dir.join("model.vmm");
    let out = veilmoe()
        .args(["quantize", "--allow-insecure", "--preset"])
        .arg(&tight)
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the model does not run on preset `tight`")
            && last.contains("exceeds the budget"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out_file.exists());
    // its fidelity to the float model was reported on the way
    assert!(err.contains("fidelity to the float model"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--headroom` outside [1, 16], `--activation-reads` other than 1, 2 or 4 and `--output-noise`
/// outside [1, 16] are refused in one line, and `--headroom` beside `--worst-case-ranges` by
/// the argument parser; nothing is written either way.
#[test]
fn a_bad_headroom_is_refused_and_nothing_is_written() {
    let dir = tmpdir("headroom");
    let model_dir = dir.join("model");
    veilmoe_model::embedded_demo_model()
        .unwrap()
        .save_mixtral(&model_dir)
        .unwrap();
    let csv = dir.join("calib.csv");
    write_records(&csv, 4);
    let out_path = dir.join("m.vmm");
    let quantize = |extra: &[&str]| {
        veilmoe()
            .args([
                "quantize",
                "--preset",
                "test",
                "--allow-insecure",
                "--model",
            ])
            .arg(&model_dir)
            .arg("--calibration")
            .arg(&csv)
            .arg("--out")
            .arg(&out_path)
            .args(extra)
            .output()
            .unwrap()
    };
    fails_with(&quantize(&["--headroom", "0.5"]), "--headroom 0.5");
    assert!(!out_path.exists());
    fails_with(
        &quantize(&["--activation-reads", "3"]),
        "--activation-reads 3",
    );
    assert!(!out_path.exists());
    for bad in ["17", "0.5", "NaN"] {
        fails_with(
            &quantize(&["--output-noise", bad]),
            &format!("--output-noise {bad}"),
        );
        assert!(!out_path.exists());
    }
    let out = quantize(&["--headroom", "2", "--worst-case-ranges"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    assert!(!out_path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
