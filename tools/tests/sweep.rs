//! `params sweep`, and `check` / `estimate` / `sweep` on a Mixtral-format checkpoint
//! directory: the grid's cells and outputs (CSV, JSON, SVG), cells a preset cannot run, the
//! Pareto front on the secure `default` preset, bad arguments (one line, nothing written), and
//! the encrypted layer on a model quantized for fewer bits than its preset reads (what makes
//! the bits axis of the grid runnable).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Output;
use veilmoe_engine::{ClientKey, Evaluator, Preset};
use veilmoe_model::quantize::quantize;
use veilmoe_model::{argmax, digits_split, embedded_demo_model, embedded_digits, Rounding};
use veilmoe_protocols::{MoeLayer, Select};

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_model_quantized_for_fewer_bits_runs_on_a_wider_preset() {
    let preset = Preset::load("test", true).unwrap();
    assert_eq!(preset.message_bits, 4);
    let (train, test) = digits_split(&embedded_digits().unwrap());
    let q = quantize(&embedded_demo_model().unwrap(), 3, &train.features).unwrap();
    assert_eq!(q.moe.quant.message_bits, 3);
    let client = ClientKey::generate(&preset);
    let server = client.server_key();
    let ev = Evaluator::new(&server);
    let layer = MoeLayer::new(&ev, q.moe.clone()).unwrap();
    let records = &test.features[..12];
    let mut agree = 0;
    for r in records {
        let x = q.quantize_input(r).unwrap();
        let out = layer
            .forward(&ev, &layer.encrypt(&client, &x).unwrap(), &Select)
            .unwrap();
        let y = out.decrypt_y(&client).unwrap();
        let encrypted = argmax(&q.outputs_from(&x, &y));
        let plain = argmax(&q.reference_outputs(r, &mut Rounding::Exact).unwrap());
        agree += (encrypted == plain) as usize;
    }
    // A read landing exactly on a half step may round either way (about 1 record in 1,800
    // changes class in simulation); anything more is a protocol error.
    assert!(agree + 1 >= records.len(), "{agree} / {}", records.len());
}

#[test]
fn sweep_on_the_test_preset_writes_every_format() {
    let dir = tmp("sweep", "grid");
    let (csv, svg) = (dir.join("sweep.csv"), dir.join("sweep.svg"));
    let out = params()
        .args([
            "sweep",
            "--presets",
            "test",
            "--bits",
            "3..5",
            "--top-k",
            "1,2",
            "--strategies",
            "select,compute-all",
            "--seeds",
            "2",
            "--json",
            "--out",
        ])
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    ok(&out);
    let v = json(&out);
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3 * 2 * 2);
    for c in cells {
        let bits = c["bits"].as_u64().unwrap();
        if bits == 5 {
            assert_eq!(c["runnable"], false);
            assert!(c["reason"].as_str().unwrap().contains("reads only 4 bits"));
            continue;
        }
        assert_eq!(c["runnable"], true, "{c}");
        assert_eq!(c["insecure"], true);
        // An insecure preset is never recommended.
        assert_eq!(c["pareto"], false);
        let sim = c["simulated_accuracy"].as_f64().unwrap();
        assert!(sim > 0.85, "{c}");
        assert!(c["estimated_ms_per_token"].as_f64().unwrap() > 0.0);
        assert!(c["log2_p_fail_token"].as_f64().unwrap() < -40.0);
    }
    // Compute-all costs more PBS than select for the same model; top-2 more than top-1.
    let pbs = |k: u64, s: &str| {
        cells
            .iter()
            .find(|c| c["bits"] == 4 && c["top_k"] == k && c["strategy"] == s)
            .unwrap()["pbs_per_token"]
            .as_u64()
            .unwrap()
    };
    assert!(pbs(1, "compute-all") > pbs(1, "select"));
    assert!(pbs(2, "select") > pbs(1, "select"));

    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(
        "preset,security_bits,insecure,bits,top_k,linear_in_product,pairwise_routing,strategy"
    ));
    assert_eq!(lines.len(), 1 + cells.len());
    let header_fields = lines[0].split(',').count();
    for l in &lines[1..] {
        // Reasons contain no commas here, so a plain split counts the fields.
        assert_eq!(l.split(',').count(), header_fields, "{l}");
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    assert_eq!(
        plot.matches("<circle").count(),
        16,
        "one point per runnable cell in each of the accuracy and fidelity plots"
    );
    assert!(plot.contains("accuracy vs time") && plot.contains("fidelity vs time"));
    // fidelity to the float model for every cell that ran
    for c in cells
        .iter()
        .filter(|c| c["estimated_ms_per_token"].is_number())
    {
        let cosine = c["block_cosine"].as_f64().unwrap();
        assert!(cosine > 0.0 && cosine <= 1.0 + 1e-9, "{c}");
        assert!(c["block_relative_l2"].as_f64().unwrap() >= 0.0);
        let agree = c["expert_agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agree));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_sweep_arguments_fail_in_one_line_and_write_nothing() {
    let dir = tmp("sweep", "bad");
    let out_csv = dir.join("out.csv");
    for args in [
        vec!["--bits", "2..4"],
        vec!["--bits", "four"],
        vec!["--bits", "5..3"],
        vec!["--strategies", "public-routing"],
        vec!["--strategies", "nope"],
        vec!["--presets", "no-such-preset"],
        vec!["--top-k", "3"],
        vec!["--plot", "plot.csv"],
        vec!["--model", "/no/such/model/dir"],
    ] {
        let mut cmd = params();
        cmd.arg("sweep").args(&args).arg("--presets").arg("test");
        if args[0] != "--plot" {
            cmd.arg("--out").arg(&out_csv);
        }
        let out = cmd.current_dir(&dir).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if args[0] == "--top-k" {
            // A top-k the model cannot take is a cell that cannot run, not an error.
            ok(&out);
            let t = std::fs::read_to_string(&out_csv).unwrap();
            assert!(t.lines().skip(1).all(|l| l.contains("top-k 3")), "{t}");
            std::fs::remove_file(&out_csv).unwrap();
            continue;
        }
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.lines().last().is_some_and(|l| l.starts_with("error")),
            "{args:?}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{args:?} left files behind"
        );
    }
    let out = params()
        .args(["sweep", "--presets", "test", "--out"])
        .arg(dir.join("out.txt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cell_over_the_noise_budget_is_not_runnable() {
    // The test preset with its failure probability claimed only for single PBS outputs
    // (max_norm2 = 1): the model's reads of sums of PBS outputs exceed the budget.
    let dir = tmp("sweep", "tight");
    let path = tight_preset(&dir);
    let out = params()
        .args([
            "sweep",
            "--bits",
            "4",
            "--strategies",
            "select",
            "--json",
            "--presets",
        ])
        .arg(&path)
        .output()
        .unwrap();
    ok(&out);
    let v = json(&out);
    let c = &v["cells"][0];
    assert_eq!(c["preset"], "tight");
    assert_eq!(c["runnable"], false, "{c}");
    assert!(c["reason"].as_str().unwrap().contains("budget"), "{c}");
    assert_eq!(c["pareto"], false);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes the demo model as a Mixtral-format directory (config.json + safetensors) with a
/// calibration file (training features) and a labelled test file.
fn mixtral_checkpoint(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model_dir = dir.join("mixtral-digits");
    embedded_demo_model()
        .unwrap()
        .save_mixtral(&model_dir)
        .unwrap();
    let (train, test) = digits_split(&embedded_digits().unwrap());
    let row = |r: &[f32]| {
        r.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let calib = dir.join("calibration.csv");
    let text: Vec<String> = train.features.iter().map(|r| row(r)).collect();
    std::fs::write(&calib, text.join("\n")).unwrap();
    let labelled = dir.join("test.csv");
    let text: Vec<String> = test
        .features
        .iter()
        .zip(&test.labels)
        .take(120)
        .map(|(r, l)| format!("{},{l}", row(r)))
        .collect();
    std::fs::write(&labelled, text.join("\n")).unwrap();
    (model_dir, calib, labelled)
}

#[test]
fn check_estimate_and_sweep_read_a_mixtral_checkpoint() {
    let dir = tmp("sweep", "mixtral");
    let (model, calib, test) = mixtral_checkpoint(&dir);
    assert!(model.join("config.json").exists());
    let with_model = |cmd: &str| {
        let mut c = params();
        c.arg(cmd)
            .arg("--model")
            .arg(&model)
            .arg("--calibration")
            .arg(&calib)
            .args(["--preset", "test", "--json"]);
        c
    };
    let out = with_model("check").output().unwrap();
    let v = json(&out);
    assert_eq!(v["experts"], 4, "{v}");
    assert!(v["stages"].as_array().unwrap().len() >= 3, "{v}");
    let out = with_model("estimate").output().unwrap();
    ok(&out);
    let v = json(&out);
    assert!(v["estimated_ms_per_token"].as_f64().unwrap() > 0.0);
    assert_eq!(v["model"], model.display().to_string());

    let out = params()
        .args(["sweep", "--presets", "test", "--bits", "4", "--json"])
        .args(["--linear-factor", "own,product"])
        .args(["--routing", "tournament,pairwise"])
        .arg("--model")
        .arg(&model)
        .arg("--calibration")
        .arg(&calib)
        .arg("--test")
        .arg(&test)
        .output()
        .unwrap();
    ok(&out);
    let v = json(&out);
    assert_eq!(v["test_records"], 120);
    let cells = v["cells"].as_array().unwrap();
    // two strategies, the linear factor read on its own and inside the product, the
    // tournament and pairwise routing
    assert_eq!(cells.len(), 8);
    assert!(cells.iter().all(|c| c["runnable"] == true));
    let pbs = |strategy: &str, product: bool, pairwise: bool| {
        cells
            .iter()
            .find(|c| {
                c["strategy"] == strategy
                    && c["linear_in_product"] == product
                    && c["pairwise_routing"] == pairwise
            })
            .map(|c| c["pbs_per_token"].as_u64().unwrap())
            .unwrap()
    };
    // the demo block: E = 4, h = 16, top-1; select evaluates one expert, compute-all four
    for pairwise in [false, true] {
        assert_eq!(
            pbs("select", false, pairwise) - pbs("select", true, pairwise),
            16
        );
        assert_eq!(
            pbs("compute-all", false, pairwise) - pbs("compute-all", true, pairwise),
            64
        );
    }
    // pairwise routing of 4 experts, top-1 with a constant gate: 6 comparisons (three PBS
    // each, refined), 4 rank reads and 2 clamped index bits replace 4 logit reads, 3
    // comparisons, 2 maxima and 2 paired one-hot reads
    for strategy in ["select", "compute-all"] {
        assert_eq!(pbs(strategy, false, true) - pbs(strategy, false, false), 13);
    }
    // the option is for quantizing a directory: the embedded model keeps its own
    let out = params()
        .args(["check", "--preset", "test", "--linear-in-product"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--linear-in-product"), "{err}");
    // so is pairwise routing
    let out = params()
        .args(["check", "--preset", "test", "--pairwise-routing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--pairwise-routing"), "{err}");
    // Without --test, a directory model has nothing to score accuracy on.
    let out = params()
        .args(["sweep", "--presets", "test"])
        .arg("--model")
        .arg(&model)
        .arg("--calibration")
        .arg(&calib)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--test FILE"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The secure end-to-end check: one cell on `default` (real 128-bit keys), which is then the
/// whole Pareto front.
#[test]
fn sweep_on_default_finds_a_pareto_front() {
    let out = params()
        .args([
            "sweep",
            "--bits",
            "4",
            "--strategies",
            "select",
            "--seeds",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    ok(&out);
    let v = json(&out);
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1);
    let c = &cells[0];
    assert_eq!(c["preset"], "default");
    assert_eq!(c["security_bits"], 128);
    assert_eq!(c["runnable"], true, "{c}");
    assert_eq!(c["pareto"], true, "{c}");
    assert!(c["log2_p_fail_token"].as_f64().unwrap() < -100.0, "{c}");
    assert!(c["simulated_accuracy"].as_f64().unwrap() > 0.9, "{c}");
}
