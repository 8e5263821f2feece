//! `veilmoe bench route`: time per input of encrypted routing over a pool of models, side by
//! side in one process: always the largest model (the baseline SecureRouter compares with),
//! the per-input oblivious mode (every model runs) and batches with public per-model capacities.
//!
//! Under FHE the batch's time depends only on the public capacities, never on where the router
//! sends the inputs: so the time side can be measured on a pool of random models of the given
//! shapes (`--hidden`, `--experts`). With `--pool DIR` (a directory `train_pool` writes) the
//! trained pool runs on digits test records under its own capacities, and the report adds the
//! accuracy of the largest model alone, of per-input routing and of the batch mode on the whole
//! test split, from the plaintext reference the encrypted pool equals (with exact reads, and
//! with the preset's read noise simulated, since near an edge an encrypted read may fall
//! either way): time and accuracy from one run.

use super::moe::{ops_of, ops_per_stage};
use super::primitives::BenchError;
use super::timing::{machine_name, median_run};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;
use veilmoe_engine::{ClientKey, Evaluator, Preset};
use veilmoe_model::capacity::Capacities;
use veilmoe_model::pool::{Pool, PoolCapacities, PoolRouter};
use veilmoe_model::pool_accuracy::{pool_accuracy, pool_accuracy_with, PoolAccuracy};
use veilmoe_model::pool_files::PoolFiles;
use veilmoe_model::{digits_split, embedded_digits};
use veilmoe_model::{
    ExpertCount, FfnKind, Gating, HiddenDim, InputQuantizer, ModelDim, MoeConfig, QuantParams,
    QuantizedClassifier, QuantizedMoe, TopK,
};
use veilmoe_protocols::pool::PoolLayer;
use veilmoe_protocols::simulate::simulated_rounding;
use veilmoe_protocols::{MoeLayer, Select};

/// What to measure.
pub struct RouteBench {
    /// A trained pool directory: its models, router and capacities replace the shapes below.
    pub pool_dir: Option<std::path::PathBuf>,
    pub d: usize,
    /// Per pool model: hidden size and experts (gated SiLU, top-1), smallest first.
    pub hidden: Vec<usize>,
    pub experts: Vec<usize>,
    pub batch: usize,
    pub capacities: Vec<usize>,
    pub fallback_model: usize,
    pub fallback_slots: usize,
    pub runs: usize,
}

#[derive(Serialize)]
pub struct RouteReport {
    pub preset: String,
    /// The trained pool measured (`None`: random models of the shapes).
    pub pool_dir: Option<String>,
    /// Accuracy on the digits test split (trained pools only), with exact reads.
    pub accuracy: Option<PoolAccuracy>,
    /// The same with the preset's read noise simulated (the router's sign reads and the
    /// models'): what the encrypted pool is expected to reach.
    pub accuracy_simulated: Option<PoolAccuracy>,
    pub machine: String,
    pub threads: usize,
    pub d: usize,
    pub hidden: Vec<usize>,
    pub experts: Vec<usize>,
    pub batch: usize,
    pub capacities: Vec<usize>,
    pub fallback_model: usize,
    pub fallback_slots: usize,
    /// Median ms per input of each pool model alone (Select-Then-Compute).
    pub model_ms: Vec<f64>,
    /// Per-input oblivious mode (router, every model, selection).
    pub per_input_ms: f64,
    /// Batch mode: median over the timed batches of (batch time / inputs).
    pub batch_ms_per_input: f64,
    pub batch_runs_ms_per_input: Vec<f64>,
    /// Operation counts of one batch, by kind and per stage.
    pub batch_ops: BTreeMap<String, u64>,
    pub batch_ops_per_stage: BTreeMap<String, BTreeMap<String, u64>>,
    pub batch_stage_ms: BTreeMap<String, f64>,
    /// always-largest / batch (the target: >= 1.9) and per-input / always-largest.
    pub largest_over_batch: f64,
    pub per_input_over_largest: f64,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// The pool of random models of the requested shapes, and a random router over them.
fn random_pool(b: &RouteBench, quant: QuantParams) -> Pool {
    let models = b
        .hidden
        .iter()
        .zip(&b.experts)
        .enumerate()
        .map(|(i, (&h, &e))| QuantizedClassifier {
            moe: QuantizedMoe::random(
                MoeConfig {
                    d: ModelDim(b.d),
                    h: HiddenDim(h),
                    experts: ExpertCount(e),
                    top_k: TopK(1),
                    ffn: FfnKind::GatedSilu,
                    gating: Gating::SoftmaxSelected,
                },
                quant,
                100 + i as u64,
                true,
            ),
            input: InputQuantizer {
                input_scale: 1.0,
                input_zero_point: 0,
            },
            x_scale: 0.0,
            y_scale: 1.0,
            head: None,
        })
        .collect::<Vec<_>>();
    let m = models.len();
    let router = QuantizedMoe::random(
        MoeConfig {
            d: ModelDim(b.d),
            h: HiddenDim(1),
            experts: ExpertCount(m),
            top_k: TopK(1),
            ffn: FfnKind::GatedSilu,
            gating: Gating::SoftmaxSelected,
        },
        quant,
        7,
        true,
    );
    Pool {
        models,
        router: PoolRouter {
            weights: router.router,
            bias: router.router_bias,
            quant,
        },
    }
}

/// Runs the routing benchmark; `progress` gets one line per stage.
pub fn run_route(
    preset: &Preset,
    b: &RouteBench,
    progress: &mut dyn FnMut(&str),
) -> Result<RouteReport, BenchError> {
    let (pool, caps, inputs, accuracy, accuracy_simulated) = match &b.pool_dir {
        Some(dir) => trained_pool(preset, dir, b)?,
        None => {
            let pool = random_pool(b, QuantParams::for_message_bits(preset.message_bits));
            let caps = PoolCapacities {
                per_model: Capacities::new(b.capacities.clone()).map_err(err)?,
                fallback_model: b.fallback_model,
                fallback_slots: b.fallback_slots,
            };
            let inputs = (0..b.runs * b.batch)
                .map(|i| {
                    (0..b.d)
                        .map(|f| ((f * 7 + i * 3) % 16) as i64 - 8)
                        .collect()
                })
                .collect();
            (pool, caps, inputs, None, None)
        }
    };
    pool.validate().map_err(err)?;
    // a trained pool's batch is its pool.toml's
    let batch = accuracy
        .as_ref()
        .and_then(|a| a.batch.as_ref())
        .map_or(b.batch, |a| a.batch);
    caps.validate(pool.models.len(), batch).map_err(err)?;
    progress("generating keys");
    let client = ClientKey::generate(preset);
    let server = client.server_key();
    let layer = PoolLayer::new(&Evaluator::new(&server), pool.clone()).map_err(err)?;
    let input = |r: usize, t: usize| -> Vec<i64> { inputs[(r * batch + t) % inputs.len()].clone() };
    let time = |f: &mut dyn FnMut() -> Result<(), BenchError>| -> Result<f64, BenchError> {
        let start = Instant::now();
        f()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };

    let mut model_ms = Vec::new();
    for (m, c) in pool.models.iter().enumerate() {
        let alone = MoeLayer::new(&Evaluator::new(&server), c.moe.clone()).map_err(err)?;
        let mut runs = Vec::new();
        for r in 0..b.runs {
            let ct = alone.encrypt(&client, &input(r, 0)).map_err(err)?;
            let ev = Evaluator::new(&server);
            runs.push(time(&mut || {
                alone.forward(&ev, &ct, &Select).map_err(err)?;
                Ok(())
            })?);
        }
        model_ms.push(median_run(&runs).0);
        progress(&format!("model {m} alone: {:.0} ms/input", model_ms[m]));
    }
    let mut runs = Vec::new();
    for r in 0..b.runs {
        let x = layer.encrypt(&client, &input(r, 0)).map_err(err)?;
        let ev = Evaluator::new(&server);
        runs.push(time(&mut || {
            layer.forward(&ev, &x, &Select).map_err(err)?;
            Ok(())
        })?);
    }
    let per_input_ms = median_run(&runs).0;
    progress(&format!("per-input oblivious: {per_input_ms:.0} ms/input"));

    let mut batch_runs = Vec::new();
    let (mut ops, mut per_stage, mut stages) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for r in 0..b.runs {
        let xs = (0..batch)
            .map(|t| layer.encrypt(&client, &input(r, t)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let ev = Evaluator::new(&server);
        let ms = time(&mut || {
            layer.forward_batch(&ev, &xs, &caps).map_err(err)?;
            Ok(())
        })?;
        batch_runs.push(ms / batch as f64);
        ops = ops_of(&ev);
        per_stage = ops_per_stage(&ev);
        stages.push(ev.ops().stage_ms());
    }
    let (batch_ms, at) = median_run(&batch_runs);
    progress(&format!("batch of {batch}: {batch_ms:.0} ms/input"));
    let largest = model_ms.last().copied().unwrap_or(0.0);
    let shapes = |f: &dyn Fn(&veilmoe_model::QuantizedClassifier) -> usize| {
        pool.models.iter().map(f).collect::<Vec<_>>()
    };
    Ok(RouteReport {
        preset: preset.name.clone(),
        pool_dir: b.pool_dir.as_ref().map(|d| d.display().to_string()),
        accuracy,
        accuracy_simulated,
        machine: machine_name(),
        threads: rayon::current_num_threads(),
        d: pool.features(),
        hidden: shapes(&|c| c.moe.config.h.0),
        experts: shapes(&|c| c.moe.config.experts.0),
        batch,
        capacities: caps.per_model.per_destination().to_vec(),
        fallback_model: caps.fallback_model,
        fallback_slots: caps.fallback_slots,
        per_input_over_largest: per_input_ms / largest,
        largest_over_batch: largest / batch_ms,
        model_ms,
        per_input_ms,
        batch_ms_per_input: batch_ms,
        batch_runs_ms_per_input: batch_runs,
        batch_ops: ops,
        batch_ops_per_stage: per_stage,
        batch_stage_ms: stages.get(at).cloned().unwrap_or_default(),
    })
}

/// A pool to time: its capacities, the quantized inputs to time on and, for a trained pool,
/// its accuracy with exact and with simulated reads.
type BenchPool = (
    Pool,
    PoolCapacities,
    Vec<Vec<i64>>,
    Option<PoolAccuracy>,
    Option<PoolAccuracy>,
);

/// A trained pool from its directory, quantized on the digits training split, its
/// capacities, the quantized test records to time on, and its accuracy on the test split.
fn trained_pool(
    preset: &Preset,
    dir: &std::path::Path,
    b: &RouteBench,
) -> Result<BenchPool, BenchError> {
    let files = PoolFiles::load(dir).map_err(err)?;
    let (train, test) = digits_split(&embedded_digits().map_err(err)?);
    let (pool, caps) = files
        .quantize(preset.message_bits, &train.features)
        .map_err(err)?;
    let batch = files.config.capacities.batch;
    let accuracy = pool_accuracy(&pool, &test, Some((&caps, batch))).map_err(err)?;
    let mut noisy = simulated_rounding(preset, preset.message_bits, 7);
    let simulated =
        pool_accuracy_with(&pool, &test, Some((&caps, batch)), &mut noisy).map_err(err)?;
    let inputs = test
        .features
        .iter()
        .take((b.runs * batch).max(1))
        .map(|r| pool.models[0].quantize_input(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok((pool, caps, inputs, Some(accuracy), Some(simulated)))
}
