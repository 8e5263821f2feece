//! `veilmoe bench route`: time per input of encrypted routing over a pool of models, side by
//! side in one process: always the largest model (the baseline SecureRouter compares with),
//! the per-input oblivious mode (every model runs) and batches with public per-model capacities.
//!
//! Under FHE the batch's time depends only on the public capacities, never on where the router
//! sends the inputs: so the time side of the comparison is measured here on a pool of random
//! models of the given shapes (`--hidden`, `--experts`), while accuracy needs a trained pool.

use super::moe::{ops_of, ops_per_stage};
use super::primitives::BenchError;
use super::timing::{machine_name, median_run};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;
use veilmoe_engine::{ClientKey, Evaluator, Preset};
use veilmoe_model::capacity::Capacities;
use veilmoe_model::pool::{Pool, PoolCapacities, PoolRouter};
use veilmoe_model::{
    ExpertCount, FfnKind, Gating, HiddenDim, InputQuantizer, ModelDim, MoeConfig, QuantParams,
    QuantizedClassifier, QuantizedMoe, TopK,
};
use veilmoe_protocols::pool::PoolLayer;
use veilmoe_protocols::{MoeLayer, Select};

/// What to measure.
pub struct RouteBench {
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
    let quant = QuantParams::for_message_bits(preset.message_bits);
    let pool = random_pool(b, quant);
    pool.validate().map_err(err)?;
    let caps = PoolCapacities {
        per_model: Capacities::new(b.capacities.clone()).map_err(err)?,
        fallback_model: b.fallback_model,
        fallback_slots: b.fallback_slots,
    };
    caps.validate(pool.models.len(), b.batch).map_err(err)?;
    progress("generating keys");
    let client = ClientKey::generate(preset);
    let server = client.server_key();
    let layer = PoolLayer::new(&Evaluator::new(&server), pool.clone()).map_err(err)?;
    let input = |r: usize, t: usize| -> Vec<i64> {
        (0..b.d)
            .map(|i| ((i * 7 + r * 3 + t * 5) % 16) as i64 - 8)
            .collect()
    };
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
        let xs = (0..b.batch)
            .map(|t| layer.encrypt(&client, &input(r, t)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let ev = Evaluator::new(&server);
        let ms = time(&mut || {
            layer.forward_batch(&ev, &xs, &caps).map_err(err)?;
            Ok(())
        })?;
        batch_runs.push(ms / b.batch as f64);
        ops = ops_of(&ev);
        per_stage = ops_per_stage(&ev);
        stages.push(ev.ops().stage_ms());
    }
    let (batch_ms, at) = median_run(&batch_runs);
    progress(&format!("batch of {}: {batch_ms:.0} ms/input", b.batch));
    let largest = model_ms.last().copied().unwrap_or(0.0);
    Ok(RouteReport {
        preset: preset.name.clone(),
        machine: machine_name(),
        threads: rayon::current_num_threads(),
        d: b.d,
        hidden: b.hidden.clone(),
        experts: b.experts.clone(),
        batch: b.batch,
        capacities: b.capacities.clone(),
        fallback_model: b.fallback_model,
        fallback_slots: b.fallback_slots,
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
