//! `veilmoe bench moe`: per-token time and operation counts of the encrypted MoE layer for each
//! strategy and number of experts, measured side by side in one process.

use super::capacity::{run_capacity, CapacityBench, CapacityCase};
use super::primitives::BenchError;
use super::timing::{machine_name, median_run};
use crate::params::estimate::{calibrate_units, estimate_ms};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;
use veilmoe_engine::{ClientKey, Encoding, Evaluator, OpKind, Preset};
use veilmoe_model::{
    median, ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, QuantParams,
    QuantizedMoe, TopK,
};
use veilmoe_protocols::router::RouterTables;
use veilmoe_protocols::{ExpertStrategy, MoeLayer, ProtocolError, PublicRouting, Strategy};

/// What to measure.
pub struct MoeBench {
    pub experts: Vec<usize>,
    pub strategies: Vec<Strategy>,
    pub d: usize,
    pub h: usize,
    pub top_k: usize,
    pub ffn: FfnKind,
    /// Hidden units of a Qwen2-MoE shared expert (`None`: no shared expert).
    pub shared_hidden: Option<usize>,
    /// Gated FFNs read their linear factor inside the product's quarter squares.
    pub linear_in_product: bool,
    /// Route by pairwise comparisons of the router accumulators (E = 2, 4 or 8; one expert
    /// has nothing to route).
    pub pairwise_routing: bool,
    pub runs: usize,
    /// Also time batches under expert capacities (`None`: not measured).
    pub capacity: Option<CapacityBench>,
}

#[derive(Serialize)]
pub struct MoeCase {
    pub strategy: Strategy,
    pub leaks_routing: bool,
    pub experts: usize,
    pub median_ms_per_token: f64,
    pub runs_ms: Vec<f64>,
    /// Operation counts of one token, by kind.
    pub ops: BTreeMap<String, u64>,
    /// Wall time of the median token's stages (router, top-k, index-ggsw, select, expert, ...).
    pub stage_ms: BTreeMap<String, f64>,
    /// Operation counts of one token per stage, by kind (where the PBS, circuit bootstraps and
    /// external products go).
    pub ops_per_stage: BTreeMap<String, BTreeMap<String, u64>>,
    /// The cost model's estimate from the token's operation trace (`params estimate`'s method)
    /// and its ratio to the measured median.
    pub estimated_ms_per_token: f64,
    pub estimate_over_measured: f64,
}

#[derive(Serialize)]
pub struct MoeReport {
    pub preset: String,
    pub machine: String,
    pub threads: usize,
    pub d: usize,
    pub h: usize,
    pub top_k: usize,
    pub ffn: String,
    /// Hidden units of the shared expert, when the layer has one (its PBS, circuit bootstraps
    /// and external products are the `shared-expert` stage of `ops_per_stage`).
    pub shared_hidden: Option<usize>,
    pub linear_in_product: bool,
    pub pairwise_routing: bool,
    pub cases: Vec<MoeCase>,
    /// Batches under expert capacities, per number of experts (when asked for).
    pub capacity_cases: Vec<CapacityCase>,
    /// Encrypted argmax of 8 values (one-hot and index bits): median ms and PBS count.
    pub argmax8_ms: f64,
    pub argmax8_pbs: u64,
    /// Ratios the issue sets targets for (absent when a needed case was not measured).
    pub ratios: BTreeMap<String, f64>,
    /// Single-thread cost of each recorded operation kind, measured before the cases.
    pub unit_costs_ms: BTreeMap<String, f64>,
}

pub(super) fn ops_of(ev: &Evaluator) -> BTreeMap<String, u64> {
    OpKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), ev.ops().total(*k)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Operation counts per stage of one evaluation, by kind name.
pub(super) fn ops_per_stage(ev: &Evaluator) -> BTreeMap<String, BTreeMap<String, u64>> {
    ev.ops()
        .counts()
        .into_iter()
        .map(|(stage, kinds)| {
            let kinds = kinds
                .into_iter()
                .map(|(k, v)| (k.name().to_string(), v))
                .collect();
            (stage, kinds)
        })
        .collect()
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Runs the MoE benchmark; `progress` gets one line per case.
pub fn run_moe(
    preset: &Preset,
    b: &MoeBench,
    progress: &mut dyn FnMut(&str),
) -> Result<MoeReport, BenchError> {
    progress("generating keys");
    let client = ClientKey::generate(preset);
    let server = client.server_key();
    progress("calibrating unit costs");
    let units = calibrate_units(&client, &server, 5).map_err(err)?;
    let threads = rayon::current_num_threads();
    let quant = QuantParams::for_message_bits(preset.message_bits);
    let mut cases = Vec::new();
    let mut capacity_cases = Vec::new();
    let reveal = |bits: &veilmoe_engine::LweVector| -> Result<usize, ProtocolError> {
        // INSECURE by design: stands for the client revealing the routing to the server.
        let v = client.decrypt_lwe(bits)?;
        Ok(v.iter().enumerate().map(|(i, &b)| (b as usize) << i).sum())
    };
    for &e in &b.experts {
        let config = MoeConfig {
            d: ModelDim(b.d),
            h: HiddenDim(b.h),
            experts: ExpertCount(e),
            top_k: TopK(b.top_k.min(e)),
            ffn: b.ffn,
            gating: Gating::SoftmaxSelected,
        };
        let mut model = QuantizedMoe::random(config, quant, 1000 + e as u64, true);
        if let Some(hs) = b.shared_hidden {
            model = model.with_random_shared(hs, 2000 + e as u64);
        }
        if b.linear_in_product {
            model = model.with_linear_in_product();
        }
        model.pairwise_routing = b.pairwise_routing && e > 1;
        let ev = Evaluator::new(&server);
        let layer = MoeLayer::new(&ev, model).map_err(err)?;
        for &name in &b.strategies {
            let public = PublicRouting { reveal: &reveal };
            let strategy: &dyn ExpertStrategy = match name {
                Strategy::PublicRouting => &public,
                oblivious => oblivious.oblivious().map_err(err)?,
            };
            let mut runs = Vec::with_capacity(b.runs);
            let mut ops = BTreeMap::new();
            let mut ops_per_stage = BTreeMap::new();
            let mut stages: Vec<BTreeMap<String, f64>> = Vec::new();
            let mut traces = Vec::new();
            for r in 0..b.runs {
                let x: Vec<i64> = (0..b.d)
                    .map(|i| ((i * 7 + r * 3 + e) % 16) as i64 - 8)
                    .collect();
                let ct = layer.encrypt(&client, &x).map_err(err)?;
                let ev = Evaluator::new(&server);
                let t = Instant::now();
                layer.forward(&ev, &ct, strategy).map_err(err)?;
                runs.push(t.elapsed().as_secs_f64() * 1e3);
                ops = ops_of(&ev);
                ops_per_stage = self::ops_per_stage(&ev);
                stages.push(ev.ops().stage_ms());
                traces.push(ev.ops().trace());
            }
            let (median, at) = median_run(&runs);
            let stage_ms = stages.get(at).cloned().unwrap_or_default();
            let (estimated, _) = estimate_ms(
                traces.get(at).map(Vec::as_slice).unwrap_or(&[]),
                &units,
                threads,
            );
            progress(&format!("{name} E={e}: {median:.0} ms/token"));
            cases.push(MoeCase {
                strategy: name,
                leaks_routing: strategy.leaks_routing(),
                experts: e,
                median_ms_per_token: median,
                runs_ms: runs,
                ops,
                stage_ms,
                ops_per_stage,
                estimated_ms_per_token: estimated,
                estimate_over_measured: estimated / median,
            });
        }
        if let Some(cb) = b.capacity {
            let c = run_capacity(&client, &server, &layer, cb, b.runs)?;
            progress(&format!(
                "capacity E={e} T={} {:?}: {:.0} ms/token, {} of {} entries dropped",
                cb.batch, c.capacities, c.median_ms_per_token, c.dropped, c.entries
            ));
            capacity_cases.push(c);
        }
    }
    // Argmax of 8 encrypted values.
    let config8 = MoeConfig {
        d: ModelDim(1),
        h: HiddenDim(1),
        experts: ExpertCount(8),
        top_k: TopK(1),
        ffn: FfnKind::GatedSilu,
        gating: Gating::SoftmaxSelected,
    };
    let ev = Evaluator::new(&server);
    let tables =
        RouterTables::new(&ev, &QuantizedMoe::random(config8, quant, 8, false)).map_err(err)?;
    let mut times = Vec::new();
    let mut pbs = 0;
    for r in 0..b.runs.max(3) {
        let vals: Vec<i64> = (0..8).map(|i| ((i * 5 + r) % 7) as i64).collect();
        let ct = client
            .encrypt_lwe(&vals, Encoding::signed(preset.message_bits))
            .map_err(err)?;
        let ct = ct
            .with_range(veilmoe_engine::ValueRange {
                min: 0,
                max: quant.logit_max(),
            })
            .map_err(err)?;
        let ev = Evaluator::new(&server);
        let t = Instant::now();
        tables.argmax_logits(&ev, &ct).map_err(err)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        pbs = ev.ops().total(OpKind::Pbs);
    }
    let find = |s: Strategy, e: usize| {
        cases
            .iter()
            .find(|c| c.strategy == s && c.experts == e)
            .map(|c| c.median_ms_per_token)
    };
    let mut ratios = BTreeMap::new();
    if let (Some(a), Some(b1)) = (find(Strategy::Select, 64), find(Strategy::Select, 1)) {
        ratios.insert("select_e64_over_select_e1 (target <= 2.0)".into(), a / b1);
    }
    for e in [8, 16] {
        if let (Some(c), Some(s)) = (find(Strategy::ComputeAll, e), find(Strategy::Select, e)) {
            ratios.insert(
                format!("compute_all_over_select_e{e} (target >= {})", e / 2),
                c / s,
            );
        }
    }
    if let (Some(s), Some(p)) = (
        find(Strategy::Select, 64),
        find(Strategy::PublicRouting, 64),
    ) {
        ratios.insert(
            "select_over_public_routing_e64 (target <= 1.3)".into(),
            s / p,
        );
    }
    for c in &capacity_cases {
        if let Some(s) = find(Strategy::Select, c.experts) {
            ratios.insert(
                format!("capacity_over_select_e{}", c.experts),
                c.median_ms_per_token / s,
            );
        }
    }
    Ok(MoeReport {
        preset: preset.name.clone(),
        machine: machine_name(),
        threads: rayon::current_num_threads(),
        d: b.d,
        h: b.h,
        top_k: b.top_k,
        ffn: b.ffn.name(),
        shared_hidden: b.shared_hidden,
        linear_in_product: b.linear_in_product,
        pairwise_routing: b.pairwise_routing,
        cases,
        capacity_cases,
        argmax8_ms: median(&times),
        argmax8_pbs: pbs,
        ratios,
        unit_costs_ms: units.0,
    })
}
