//! The encrypted fidelity measurement BENCHMARKS.md quotes for the Hugging Face-style
//! checkpoints: each family quantized with each variant of the options for a preset,
//! `tokens` held-out records encrypted and run with Select-Then-Compute; the decrypted block
//! output against the float one and against the reference, the reference over all 300
//! records (exact reads, and the preset's read noise simulated), the median time per token.

use super::hf_families::records;
use std::path::PathBuf;
use veilmoe::engine::{ClientKey, Evaluator, OpKind, Preset};
use veilmoe::model::checkpoint::FloatMoeModel;
use veilmoe::model::fidelity::VectorErrors;
use veilmoe::model::quantize::{quantize_with, QuantizeOptions};
use veilmoe::model::{reference_fidelity, Rounding};
use veilmoe::protocols::{MoeLayer, Select};

/// Options of one measured variant, from the preset's reads and noise budget.
pub type Variants<'a> = &'a dyn Fn(&Preset) -> Vec<(String, QuantizeOptions)>;

/// Prints one line per family and variant (see the module docs).
pub fn encrypted_fidelity(
    preset: &str,
    tokens: usize,
    families: &[(&str, PathBuf)],
    variants: Variants,
) {
    let (calib, test) = records();
    let preset = Preset::load(preset, false).unwrap();
    let client = ClientKey::generate(&preset);
    let server = client.server_key();
    let ev = Evaluator::new(&server);
    for (name, dir) in families {
        let m = FloatMoeModel::load(dir).unwrap();
        for (label, opts) in variants(&preset) {
            let q = quantize_with(&m, &opts, &calib).unwrap().0;
            let layer = MoeLayer::new(&ev, q.moe.clone()).unwrap();
            let (mut enc, mut refe, mut noise) = (
                VectorErrors::default(),
                VectorErrors::default(),
                VectorErrors::default(),
            );
            let mut times = Vec::new();
            let pbs_before = ev.ops().total(OpKind::Pbs);
            let dq = |v: &[i64]| -> Vec<f64> { v.iter().map(|&a| a as f64 * q.y_step()).collect() };
            for r in test.iter().take(tokens) {
                let x = q.quantize_input(r).unwrap();
                let ct = layer.encrypt(&client, &x).unwrap();
                let t = std::time::Instant::now();
                let out = layer.forward(&ev, &ct, &Select).unwrap();
                times.push(t.elapsed().as_secs_f64());
                let y = dq(&out.decrypt_y(&client).unwrap());
                let want = dq(&q.moe.reference(&x, &mut Rounding::Exact).y);
                let float: Vec<f64> = m.block_output(r).into_iter().map(f64::from).collect();
                enc.add(&y, &float);
                refe.add(&want, &float);
                noise.add(&y, &want);
            }
            let pbs = (ev.ops().total(OpKind::Pbs) - pbs_before) / tokens.max(1) as u64;
            times.sort_by(f64::total_cmp);
            let exact = reference_fidelity(&m, &q, &test, &mut Rounding::Exact).unwrap();
            let mut sim = veilmoe::protocols::simulated_rounding(&preset, preset.message_bits, 7);
            let simulated = reference_fidelity(&m, &q, &test, &mut sim).unwrap();
            println!(
                "{name} on `{}`, {label}: {tokens} tokens, median {:.2} s/token, {pbs} PBS/token; \
                 encrypted {}; \
                 reference on the same records {}; decrypted against the reference {}; \
                 reference over {} records: exact {exact}, simulated {}",
                preset.name,
                times[tokens / 2],
                enc.summary(),
                refe.summary(),
                noise.summary(),
                test.len(),
                simulated.block_output,
            );
        }
    }
}
