//! `params sweep`: which quantization bits, preset, top-k and strategy make a model both
//! accurate and fast, at what failure probability.
//!
//! Every cell of the grid is scored the way the other `params` commands score one
//! configuration, with nothing analytic standing in for the protocol:
//! - **fidelity** to the float model: cosine similarity and relative L2 error of the
//!   quantized block output against the float block output, and expert-choice agreement
//!   ([`reference_fidelity`], exact rounding, on the test records);
//! - **accuracy** from the simulation mode ([`simulated_rounding`]): the plaintext
//!   integer reference with the preset's read noise, averaged over `seeds` seeds, on labelled
//!   test records (and the exact-rounding accuracy next to it);
//! - **time** from one token's real operation trace on the preset's keys (made in memory once
//!   per preset) times unit costs calibrated through the engine on this machine
//!   ([`super::estimate`]);
//! - **failure probability** from the same token's bootstrapped reads ([`super::probe`]).
//!
//! A model quantized for fewer bits than a preset reads runs on it with wider boxes (more
//! margin than the budget the engine enforces); more bits than the preset reads do not fit.
//! Gated models can also be swept over where the linear factor is read (`linear_in_product`:
//! on its own, or inside its product's quarter squares, a quarter of a gated expert's PBS
//! fewer for a coarser factor).
//!
//! The Pareto front (higher simulated accuracy, lower time) is taken over the cells that run
//! within their preset's limits on a preset of at least 128-bit security: an insecure preset
//! is never a recommendation.

mod output;

pub use output::{output_kind, svg_plot, to_csv, write_report, OutputKind};

use super::check::CheckError;
use super::estimate::{calibrate_units, estimate_ms, UnitCosts};
use super::probe::{probe_token, ProbeKeys};
use crate::model_source::{ModelSource, Variant};
use serde::Serialize;
use std::collections::BTreeMap;
use veilmoe_engine::{OpKind, Preset};
use veilmoe_model::quantize::{evaluate_accuracy, float_accuracy, QuantizeOptions};
use veilmoe_model::{
    reference_fidelity, Dataset, FfnKind, Fidelity, FloatMoeModel, QuantizedClassifier, Rounding,
    TopK,
};
use veilmoe_protocols::{simulated_rounding, ProtocolError, Strategy};

/// The grid.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// Quantization bits (weights' requantized reads and activations), each >= 3.
    pub bits: Vec<u32>,
    pub presets: Vec<Preset>,
    /// Experts per token; empty: the model's own.
    pub top_k: Vec<usize>,
    /// Oblivious strategies.
    pub strategies: Vec<Strategy>,
    /// Where a gated model reads its linear factor: `false` on its own, `true` inside the
    /// product (empty: as the model source says).
    pub linear_in_product: Vec<bool>,
    /// How experts are chosen: `false` by the tournament, `true` by pairwise comparisons
    /// (empty: as the model source says; models of more than 8 experts: the tournament only).
    pub pairwise_routing: Vec<bool>,
    /// Threads the time estimate assumes.
    pub threads: usize,
    /// Simulation seeds averaged for the accuracy.
    pub seeds: u64,
}

/// One configuration of the grid.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepCell {
    pub preset: String,
    /// Claimed security of the preset (0 when insecure).
    pub security_bits: u32,
    pub insecure: bool,
    pub bits: u32,
    pub top_k: usize,
    /// The linear factor is read inside the product.
    pub linear_in_product: bool,
    /// The experts are chosen by pairwise comparisons of the router accumulators.
    pub pairwise_routing: bool,
    pub strategy: Strategy,
    /// Runs on the preset within its noise budget and encodings.
    pub runnable: bool,
    /// Why not (or `None`).
    pub reason: Option<String>,
    /// Float model with this top-k (`None` when the model cannot take this top-k).
    pub float_accuracy: Option<f64>,
    /// Quantized, reads rounded to nearest.
    pub quantized_accuracy: Option<f64>,
    /// Quantized, reads with the preset's noise (mean over the seeds): what decryption gives.
    pub simulated_accuracy: Option<f64>,
    /// Mean cosine similarity of the quantized block output to the float one (1: same).
    pub block_cosine: Option<f64>,
    /// Relative L2 error of the quantized block output against the float one (0: equal).
    pub block_relative_l2: Option<f64>,
    /// Records whose quantized router picks the float router's experts.
    pub expert_agreement: Option<f64>,
    pub estimated_ms_per_token: Option<f64>,
    pub pbs_per_token: Option<u64>,
    /// Union bound over the token's bootstrapped reads (log2).
    pub log2_p_fail_token: Option<f64>,
    /// On the accuracy/time Pareto front.
    pub pareto: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub model: String,
    pub test_data: String,
    pub test_records: usize,
    pub threads: usize,
    pub seeds: u64,
    pub cells: Vec<SweepCell>,
}

impl SweepReport {
    /// The Pareto cells, fastest first.
    pub fn front(&self) -> Vec<&SweepCell> {
        let mut f: Vec<&SweepCell> = self.cells.iter().filter(|c| c.pareto).collect();
        f.sort_by(|a, b| {
            a.estimated_ms_per_token
                .partial_cmp(&b.estimated_ms_per_token)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        f
    }
}

/// Parses `3..6` (inclusive), `3,4,5` or `4`.
pub fn parse_bits(s: &str) -> Result<Vec<u32>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u32>()
            .map_err(|_| format!("--bits: `{t}` is not a number (use e.g. 3..6 or 3,4)"))
    };
    let bits: Vec<u32> = match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b.trim_start_matches('='))?);
            if a > b {
                return Err(format!("--bits: empty range {s}"));
            }
            (a..=b).collect()
        }
        None => s.split(',').map(num).collect::<Result<_, _>>()?,
    };
    if let Some(b) = bits.iter().find(|b| !(3..=8).contains(*b)) {
        return Err(format!("--bits: {b} is outside 3..8"));
    }
    Ok(bits)
}

/// A quantized model of one (top-k, bits) pair with its exact-rounding accuracy, or why there
/// is none.
/// A quantized model, its exact-rounding accuracy and its fidelity to the float model.
type Quantized = Result<(QuantizedClassifier, f64, Fidelity), String>;

fn with_top_k(model: &FloatMoeModel, k: usize) -> Result<FloatMoeModel, String> {
    let e = model.config.experts.0;
    if k == 0 || k > 2 || k > e {
        return Err(format!("top-k {k}: 1 or 2 and at most E = {e}"));
    }
    let mut m = model.clone();
    m.config.top_k = TopK(k);
    Ok(m)
}

/// Runs the sweep; `status` gets one line per phase and per cell.
pub fn sweep(
    source: &ModelSource,
    test: &Dataset,
    spec: &SweepSpec,
    status: &mut dyn FnMut(&str),
) -> Result<SweepReport, CheckError> {
    let strategies = spec
        .strategies
        .iter()
        .map(|&s| Ok((s, s.oblivious()?)))
        .collect::<Result<Vec<_>, ProtocolError>>()?;
    let float = source.load_float()?;
    if test.feature_count() != float.features() {
        return Err(ProtocolError::Config(format!(
            "{}: records have {} features, the model takes {}",
            test.origin,
            test.feature_count(),
            float.features()
        ))
        .into());
    }
    let calibration = source.calibration_records(&float)?;
    let ks: Vec<usize> = if spec.top_k.is_empty() {
        vec![float.config.top_k.0]
    } else {
        spec.top_k.clone()
    };
    // Quantize each (k, bits) once: the quantization does not depend on the preset.
    // One quantization per (top-k, bits) serves every swept preset: the tightest noise budget
    // among them sizes the wide outputs.
    let max_norm2 = spec
        .presets
        .iter()
        .map(|p| p.max_norm2)
        .reduce(f64::min)
        .unwrap_or(QuantizeOptions::for_message_bits(4).max_norm2);
    let linear: Vec<bool> = if float.config.ffn != FfnKind::GatedSilu {
        // a plain FFN has no linear factor: one variant
        vec![false]
    } else {
        choices(&spec.linear_in_product, source.variant().linear_in_product)
    };
    let e = float.config.experts.0;
    let routing: Vec<bool> = if veilmoe_model::pairwise::check_supported(e, 1).is_err() {
        vec![false]
    } else {
        choices(&spec.pairwise_routing, source.variant().pairwise_routing)
    };
    let variants: Vec<Variant> = linear
        .iter()
        .flat_map(|&l| {
            routing.iter().map(move |&r| Variant {
                linear_in_product: l,
                pairwise_routing: r,
            })
        })
        .collect();
    let mut quantized: BTreeMap<(usize, u32, Variant), Quantized> = BTreeMap::new();
    let mut floats: BTreeMap<usize, (Result<FloatMoeModel, String>, Option<f64>)> = BTreeMap::new();
    for &k in &ks {
        let float_k = with_top_k(&float, k);
        let acc = float_k.as_ref().ok().map(|m| float_accuracy(m, test));
        for (&b, &v) in spec
            .bits
            .iter()
            .flat_map(|b| variants.iter().map(move |v| (b, v)))
        {
            status(&format!(
                "quantizing for {b} bits, top-{k}{}{} ...",
                if v.linear_in_product {
                    ", linear factor in the product"
                } else {
                    ""
                },
                if v.pairwise_routing {
                    ", pairwise routing"
                } else {
                    ""
                }
            ));
            let q = float_k.clone().and_then(|m| {
                let (q, _) = source
                    .quantize_variant(&m, (b, max_norm2), v, &calibration)
                    .map_err(|e| e.to_string())?;
                let exact = evaluate_accuracy(&m, &q, test, &mut Rounding::Exact)
                    .map_err(|e| e.to_string())?;
                let fidelity = reference_fidelity(&m, &q, &test.features, &mut Rounding::Exact)
                    .map_err(|e| e.to_string())?;
                Ok((q, exact.quantized_accuracy(), fidelity))
            });
            quantized.insert((k, b, v), q);
        }
        floats.insert(k, (float_k, acc));
    }
    let total = spec.presets.len() * ks.len() * spec.bits.len() * variants.len() * strategies.len();
    let mut cells = Vec::with_capacity(total);
    for preset in &spec.presets {
        // Keys and unit costs, made when the first cell that fits the preset needs them.
        let mut keys_units: Option<(ProbeKeys, UnitCosts)> = None;
        for &k in &ks {
            for (&b, &v) in spec
                .bits
                .iter()
                .flat_map(|b| variants.iter().map(move |v| (b, v)))
            {
                let (float_k, float_accuracy) = &floats[&k];
                let q = &quantized[&(k, b, v)];
                for (name, strat) in &strategies {
                    let mut cell = SweepCell {
                        preset: preset.name.clone(),
                        security_bits: preset.security_bits,
                        insecure: preset.insecure,
                        bits: b,
                        top_k: k,
                        linear_in_product: v.linear_in_product,
                        pairwise_routing: v.pairwise_routing,
                        strategy: *name,
                        runnable: false,
                        reason: None,
                        float_accuracy: *float_accuracy,
                        quantized_accuracy: None,
                        simulated_accuracy: None,
                        block_cosine: None,
                        block_relative_l2: None,
                        expert_agreement: None,
                        estimated_ms_per_token: None,
                        pbs_per_token: None,
                        log2_p_fail_token: None,
                        pareto: false,
                    };
                    match (q, float_k) {
                        (Err(e), _) | (_, Err(e)) => cell.reason = Some(e.clone()),
                        (Ok(_), _) if b > preset.message_bits => {
                            cell.reason = Some(format!(
                                "the preset reads only {} bits",
                                preset.message_bits
                            ))
                        }
                        (Ok((qc, exact, fidelity)), Ok(float_k)) => {
                            cell.quantized_accuracy = Some(*exact);
                            cell.block_cosine = Some(fidelity.block_output.cosine_mean);
                            cell.block_relative_l2 = Some(fidelity.block_output.relative_l2);
                            cell.expert_agreement = Some(fidelity.expert_agreement);
                            cell.simulated_accuracy = Some(simulated_accuracy(
                                float_k, qc, test, preset, b, spec.seeds,
                            )?);
                            let (keys, units) = match keys_units.take() {
                                Some(ku) => ku,
                                None => {
                                    status(&format!("generating keys ({preset}) ..."));
                                    let keys = ProbeKeys::generate(preset);
                                    status("calibrating unit costs (one thread) ...");
                                    let units = calibrate_units(&keys.client, &keys.server, 5)?;
                                    (keys, units)
                                }
                            };
                            let probe = probe_token(&keys.client, &keys.server, &qc.moe, *strat)?;
                            let (ms, _) = estimate_ms(&probe.trace, &units, spec.threads);
                            keys_units = Some((keys, units));
                            cell.estimated_ms_per_token = Some(ms);
                            cell.pbs_per_token = Some(
                                probe
                                    .counts
                                    .values()
                                    .filter_map(|m| m.get(&OpKind::Pbs))
                                    .sum(),
                            );
                            cell.log2_p_fail_token = Some(probe.log2_p_fail_token());
                            cell.runnable = probe.within_limits();
                            cell.reason = probe.refusal.clone().or_else(|| {
                                (!cell.runnable)
                                    .then(|| "a read exceeds the preset's noise budget".into())
                            });
                        }
                    }
                    status(&format!(
                        "[{}/{total}] {}",
                        cells.len() + 1,
                        cell_line(&cell)
                    ));
                    cells.push(cell);
                }
            }
        }
    }
    mark_pareto(&mut cells);
    Ok(SweepReport {
        model: source.label(),
        test_data: test.origin.clone(),
        test_records: test.len(),
        threads: spec.threads,
        seeds: spec.seeds,
        cells,
    })
}

fn simulated_accuracy(
    float: &FloatMoeModel,
    q: &QuantizedClassifier,
    test: &Dataset,
    preset: &Preset,
    bits: u32,
    seeds: u64,
) -> Result<f64, ProtocolError> {
    let mut sum = 0.0;
    for seed in 0..seeds.max(1) {
        let mut r: Rounding = simulated_rounding(preset, bits, seed);
        sum += evaluate_accuracy(float, q, test, &mut r)?.quantized_accuracy();
    }
    Ok(sum / seeds.max(1) as f64)
}

/// Marks the cells no other eligible cell beats on both simulated accuracy and time.
fn mark_pareto(cells: &mut [SweepCell]) {
    let point = |c: &SweepCell| -> Option<(f64, f64)> {
        if !c.runnable || c.insecure || c.security_bits < 128 {
            return None;
        }
        Some((c.simulated_accuracy?, c.estimated_ms_per_token?))
    };
    let points: Vec<Option<(f64, f64)>> = cells.iter().map(point).collect();
    for (i, c) in cells.iter_mut().enumerate() {
        let Some((a, t)) = points[i] else { continue };
        c.pareto = !points.iter().enumerate().any(|(j, o)| {
            o.is_some_and(|(oa, ot)| j != i && oa >= a && ot <= t && (oa > a || ot < t || j < i))
        });
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn cell_line(c: &SweepCell) -> String {
    let lin = if c.linear_in_product {
        " linear-in-product"
    } else {
        ""
    };
    let pairwise = if c.pairwise_routing { " pairwise" } else { "" };
    let head = format!(
        "{} bits={} k={}{lin}{pairwise} {}",
        c.preset, c.bits, c.top_k, c.strategy
    );
    match (&c.reason, c.estimated_ms_per_token) {
        (Some(r), None) => format!("{head}: not runnable: {r}"),
        _ => format!(
            "{head}: simulated {} (exact {}), {:.2} s/token, p_fail 2^{:.1}/token{}",
            pct(c.simulated_accuracy),
            pct(c.quantized_accuracy),
            c.estimated_ms_per_token.unwrap_or(f64::NAN) / 1e3,
            c.log2_p_fail_token.unwrap_or(f64::NAN),
            c.reason
                .as_ref()
                .map(|r| format!(" — NOT RUNNABLE: {r}"))
                .unwrap_or_default()
        ),
    }
}

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "params sweep: {} on {} ({} records), {} threads, accuracy averaged over {} simulation seeds",
            self.model, self.test_data, self.test_records, self.threads, self.seeds
        )?;
        writeln!(
            f,
            "  {:<9} {:>4} {:>2} {:<7} {:<10} {:<12} {:>7} {:>7} {:>9} {:>6} {:>6} {:>9} {:>6} {:>9}  note",
            "preset",
            "bits",
            "k",
            "W3 read",
            "routing",
            "strategy",
            "float",
            "exact",
            "simulated",
            "cosine",
            "rel-L2",
            "s/token",
            "PBS",
            "p_fail"
        )?;
        for c in &self.cells {
            let note = if c.pareto {
                "PARETO".to_string()
            } else if c.insecure {
                format!(
                    "INSECURE preset{}",
                    c.reason
                        .as_ref()
                        .map(|r| format!("; {r}"))
                        .unwrap_or_default()
                )
            } else {
                c.reason.clone().unwrap_or_default()
            };
            writeln!(
                f,
                "  {:<9} {:>4} {:>2} {:<7} {:<10} {:<12} {:>7} {:>7} {:>9} {:>6} {:>6} {:>9} {:>6} {:>9}  {}",
                c.preset,
                c.bits,
                c.top_k,
                if c.linear_in_product { "product" } else { "own" },
                if c.pairwise_routing {
                    "pairwise"
                } else {
                    "tournament"
                },
                c.strategy,
                pct(c.float_accuracy),
                pct(c.quantized_accuracy),
                pct(c.simulated_accuracy),
                c.block_cosine.map_or("-".into(), |v| format!("{v:.3}")),
                c.block_relative_l2
                    .map_or("-".into(), |v| format!("{v:.3}")),
                c.estimated_ms_per_token
                    .map_or("-".into(), |m| format!("{:.2}", m / 1e3)),
                c.pbs_per_token.map_or("-".into(), |p| p.to_string()),
                c.log2_p_fail_token
                    .map_or("-".into(), |p| format!("2^{p:.1}")),
                note
            )?;
        }
        let front = self.front();
        if front.is_empty() {
            write!(
                f,
                "  Pareto front: empty (no cell runs within its limits on a preset of >= 128-bit security)"
            )
        } else {
            writeln!(f, "  Pareto front (accuracy vs time, fastest first):")?;
            for (i, c) in front.iter().enumerate() {
                write!(f, "    {}", cell_line(c))?;
                if i + 1 < front.len() {
                    writeln!(f)?;
                }
            }
            Ok(())
        }
    }
}

/// The values of a swept choice: those asked for, in order and without repeats, or the
/// source's own when none was asked for.
fn choices(asked: &[bool], own: bool) -> Vec<bool> {
    if asked.is_empty() {
        return vec![own];
    }
    let mut v = asked.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
