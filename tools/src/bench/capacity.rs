//! `veilmoe bench moe --capacity-batch T`: the MoE layer over batches of `T` tokens with expert
//! capacities (the `capacity` strategy), per token, beside the per-token strategies of the same
//! run: where it beats Select-Then-Compute in d, h and E.

use super::moe::{ops_of, ops_per_stage};
use super::primitives::BenchError;
use super::timing::median_run;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;
use veilmoe_engine::{ClientKey, Evaluator, ServerKey};
use veilmoe_model::capacity::Capacities;
use veilmoe_protocols::MoeLayer;

/// Batches of `batch` tokens, `ceil(factor * batch * k / E)` slots per expert.
#[derive(Debug, Clone, Copy)]
pub struct CapacityBench {
    pub batch: usize,
    pub factor: f64,
}

#[derive(Serialize)]
pub struct CapacityCase {
    pub experts: usize,
    pub batch: usize,
    pub capacity_factor: f64,
    pub capacities: Vec<usize>,
    /// Median over the timed batches of (batch time / tokens).
    pub median_ms_per_token: f64,
    pub runs_ms_per_token: Vec<f64>,
    /// Operation counts of one batch, by kind.
    pub ops_per_batch: BTreeMap<String, u64>,
    /// Operation counts of one batch per stage, by kind (dispatch-count, dispatch-ggsw,
    /// dispatch-ids, dispatch-select, expert-products, expert, router, top-k, gates).
    pub ops_per_stage: BTreeMap<String, BTreeMap<String, u64>>,
    /// Wall time of the median batch's stages.
    pub stage_ms: BTreeMap<String, f64>,
    /// Entries dropped past their expert's capacity, over all timed batches (decrypted by the
    /// bench acting as the client).
    pub entries: usize,
    pub dropped: usize,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Times `runs` batches of the layer under capacities.
pub fn run_capacity(
    client: &ClientKey,
    server: &ServerKey,
    layer: &MoeLayer,
    b: CapacityBench,
    runs: usize,
) -> Result<CapacityCase, BenchError> {
    let cfg = layer.model().config;
    let (e, d, k) = (cfg.experts.0, cfg.d.0, cfg.top_k.0);
    let caps = Capacities::from_factor(e, b.batch * k, b.factor).map_err(err)?;
    let mut runs_ms = Vec::with_capacity(runs);
    let mut stages = Vec::with_capacity(runs);
    let (mut ops, mut per_stage) = (BTreeMap::new(), BTreeMap::new());
    let (mut entries, mut dropped) = (0, 0);
    for r in 0..runs {
        let tokens = (0..b.batch)
            .map(|t| {
                let x: Vec<i64> = (0..d)
                    .map(|i| ((i * 7 + r * 3 + t * 5 + e) % 16) as i64 - 8)
                    .collect();
                layer.encrypt(client, &x)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let ev = Evaluator::new(server);
        let start = Instant::now();
        let out = layer.forward_capacity(&ev, &tokens, &caps).map_err(err)?;
        runs_ms.push(start.elapsed().as_secs_f64() * 1e3 / b.batch as f64);
        stages.push(ev.ops().stage_ms());
        ops = ops_of(&ev);
        per_stage = ops_per_stage(&ev);
        let slots = out.decrypt_slots(client).map_err(err)?;
        entries += slots.len();
        dropped += slots.iter().filter(|s| s.is_none()).count();
    }
    let (med, at) = median_run(&runs_ms);
    Ok(CapacityCase {
        experts: e,
        batch: b.batch,
        capacity_factor: b.factor,
        capacities: caps.per_destination().to_vec(),
        median_ms_per_token: med,
        runs_ms_per_token: runs_ms,
        ops_per_batch: ops,
        ops_per_stage: per_stage,
        stage_ms: stages.get(at).cloned().unwrap_or_default(),
        entries,
        dropped,
    })
}
