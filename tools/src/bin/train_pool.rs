//! Trains a pool of digits classifiers of increasing size and cost and their cost-aware router
//! (issue 14 item 1), measures the plaintext reference's accuracy of each model alone, of
//! per-input routing and of batches with public capacities, and with `--out` writes the pool
//! directory (`pool.toml`, one Mixtral directory per model, `router.safetensors`).
//!
//! The pool models train on three quarters of the training split; the router learns from the
//! other quarter, where how model m does is how it will do on new inputs (its margin there, by
//! default). Models have
//! no residual path (with it every shape lands at 95-96 % and a pool has nothing to trade).
//! Costs are the models' first-stage reads per input (`E + 2 h`), a proxy of their PBS count.
//!
//! Usage: `cargo run --release -p veilmoe-tools --bin train_pool [-- --out DIR --lambda L,...
//! --caps 4,2,2+2 ...]`; `--from DIR` reuses a written pool's models and trains only routers.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use veilmoe_protocols::engine::Preset;
use veilmoe_protocols::model::capacity::Capacities;
use veilmoe_protocols::model::data::{digits_split, embedded_digits, Dataset};
use veilmoe_protocols::model::math::argmax;
use veilmoe_protocols::model::pool::{Pool, PoolCapacities};
use veilmoe_protocols::model::pool_accuracy::pool_accuracy;
use veilmoe_protocols::model::pool_capacity::{plan_capacities, Coverage, PlanTargets};
use veilmoe_protocols::model::pool_files::{
    save_pool, CapacityConfig, PoolConfig, PoolFiles, PoolModelEntry,
};
use veilmoe_protocols::model::reference::Rounding;
use veilmoe_protocols::model::train::pool_lambda::{choose_lambda, LAMBDA_GRID};
use veilmoe_protocols::model::train::pool_router::{train_pool_router, UtilityTarget};
use veilmoe_protocols::model::train::{train_digits, TrainOptions, TrainShape};
use veilmoe_protocols::model::FloatMoeModel;
use veilmoe_protocols::simulate::simulated_rounding;

#[derive(Parser)]
#[command(about = "Train a digits model pool and its cost-aware router (deterministic)")]
struct Args {
    /// Write the pool directory here (with the first `--lambda`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Take the pool models from this pool directory instead of training them (the router is
    /// trained again).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Accuracy-cost trade-offs (utility per unit of cost), comma-separated: one router each.
    #[arg(long, value_delimiter = ',', default_value = "0.004")]
    lambda: Vec<f64>,
    /// Per model `experts:hidden`, cheapest first.
    #[arg(long, value_delimiter = ',', default_value = "1:4,1:8,4:16")]
    shapes: Vec<String>,
    /// Inputs per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Slots per model and the fallback's extra slots, as `4,2,2+2`; repeat to compare several
    /// (the first goes into the pool directory).
    #[arg(long, default_value = "4,2,2+2")]
    caps: Vec<String>,
    /// Fallback model (index).
    #[arg(long, default_value_t = 1)]
    fallback: usize,
    /// Also plan capacities from the router's choices on its own (calibration) records for
    /// this overflow rate (inputs not answered by their chosen model); the plan goes into the
    /// pool directory instead of the first `--caps`.
    #[arg(long)]
    overflow: Option<f64>,
    /// The plan's drop rate (inputs answered by no model).
    #[arg(long, default_value_t = 0.001)]
    max_drop: f64,
    /// Plan a covering fallback: the fallback model answers every input not placed in another
    /// model and runs on every input with no dispatch into it (cheaper when most inputs choose
    /// it).
    #[arg(long)]
    cover: bool,
    /// Choose lambda instead: the largest of a grid whose 5-fold cross-validated routing
    /// accuracy on the router's own records stays within this many points of always-largest's
    /// there (no test record is looked at); it goes first, before any `--lambda`.
    #[arg(long)]
    max_loss: Option<f64>,
    /// What the router predicts per model: its margin on the record, or only whether it is
    /// right.
    #[arg(long, value_enum, default_value_t = Utility::Margin)]
    utility: Utility,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Utility {
    Margin,
    Correct,
}

impl From<Utility> for UtilityTarget {
    fn from(u: Utility) -> UtilityTarget {
        match u {
            Utility::Margin => UtilityTarget::Margin,
            Utility::Correct => UtilityTarget::Correct,
        }
    }
}

const NAMES: [&str; 4] = ["tiny", "medium", "large", "xlarge"];

/// `4,2,2+2`: slots per model, then the fallback's extra slots.
fn parse_caps(s: &str) -> Result<(Vec<usize>, usize)> {
    let (slots, extra) = s.split_once('+').unwrap_or((s, "0"));
    let slots = slots
        .split(',')
        .map(|v| v.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--caps `{s}`: not `slots,...+fallback slots`"))?;
    Ok((slots, extra.trim().parse()?))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (train, test) = digits_split(&embedded_digits()?);
    let model_idx: Vec<usize> = (0..train.len()).filter(|i| i % 4 != 3).collect();
    let router_idx: Vec<usize> = (0..train.len()).filter(|i| i % 4 == 3).collect();
    let model_train = train.subset(&model_idx, "digits train (pool models)".into());
    let router_train = train.subset(&router_idx, "digits train (router)".into());
    let caps_sets = args
        .caps
        .iter()
        .map(|c| parse_caps(c))
        .collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(!args.lambda.is_empty(), "--lambda: at least one value");
    let (floats, entries) = match &args.from {
        Some(dir) => {
            let files = PoolFiles::load(dir)?;
            (files.models, files.config.models)
        }
        None => train_models(&args.shapes, &model_train, &test)?,
    };
    let quantized: Vec<_> = floats
        .iter()
        .map(|m| veilmoe_protocols::model::quantize::quantize(m, 4, &train.features))
        .collect::<Result<_, _>>()?;
    let mut lambdas = args.lambda.clone();
    if let Some(loss) = args.max_loss {
        let costs: Vec<f64> = entries.iter().map(|e| e.cost).collect();
        let c = choose_lambda(
            &quantized,
            &costs,
            &router_train,
            args.utility.into(),
            &LAMBDA_GRID,
            loss,
            5,
        )?;
        println!(
            "lambda by 5-fold cross-validation on the router's {} records (always-largest \
             {:.2} %, loss at most {loss} points):",
            router_train.len(),
            c.largest
        );
        for p in &c.grid {
            println!(
                "  lambda {:<8} accuracy {:.2} %, cost per input {:.1}",
                p.lambda, p.accuracy, p.cost
            );
        }
        if !c.within {
            println!("  no lambda is within the loss: the most accurate is used");
        }
        println!("  chosen: lambda {}", c.chosen.lambda);
        lambdas.insert(0, c.chosen.lambda);
    }
    for (li, &lambda) in lambdas.iter().enumerate() {
        let (slots, fallback_slots) = caps_sets[0].clone();
        let mut config = PoolConfig {
            lambda,
            router: "router.safetensors".into(),
            models: entries.clone(),
            capacities: CapacityConfig {
                batch: args.batch,
                slots,
                fallback: entries[args.fallback.min(entries.len() - 1)].name.clone(),
                fallback_slots,
            },
        };
        let router = train_pool_router(
            &quantized,
            &config.costs(),
            lambda,
            &router_train,
            args.utility.into(),
        )?;
        let plan = match args.overflow {
            Some(rate) => {
                let integer = router.quantize(4)?;
                let choices = router_train
                    .features
                    .iter()
                    .map(|r| {
                        let x = quantized[0].quantize_input(r)?;
                        Ok(integer.choose(&x, &mut Rounding::Exact).model)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let fallback = args.fallback.min(entries.len() - 1);
                let plan = plan_capacities(
                    &choices,
                    &config.costs(),
                    args.batch,
                    fallback,
                    PlanTargets {
                        max_overflow: rate,
                        max_drop: args.max_drop,
                        coverage: if args.cover {
                            Coverage::Fallback
                        } else {
                            Coverage::Slots
                        },
                    },
                    11,
                )?;
                config.capacities.slots = plan.capacities.per_model.per_destination().to_vec();
                config.capacities.fallback_slots = plan.capacities.fallback_slots;
                Some(plan)
            }
            None => None,
        };
        let dir = match (&args.out, li) {
            (Some(out), 0) => out.clone(),
            _ => std::env::temp_dir().join(format!("veilmoe-train-pool-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir)?;
        save_pool(&dir, &config, &floats, &router)?;
        let files = PoolFiles::load(&dir)?;
        let (pool, caps) = files.quantize(4, &train.features)?;
        println!("lambda {lambda}:");
        report(&pool, &test)?;
        if let Some(plan) = &plan {
            println!(
                "  planned on the router's records: slots {:?} + {} fallback, overflow {:.3}, \
                 dropped {:.4}, cost per input {:.1} (always-largest {:.1})",
                plan.capacities.per_model.per_destination(),
                plan.capacities.fallback_slots,
                plan.overflow,
                plan.dropped,
                plan.cost_per_input,
                config.costs().last().copied().unwrap_or(0.0)
            );
            batch_report(&pool, &plan.capacities, &test, args.batch)?;
        }
        for (slots, extra) in &caps_sets {
            let caps = PoolCapacities {
                per_model: Capacities::new(slots.clone())?,
                fallback_slots: *extra,
                ..caps.clone()
            };
            batch_report(&pool, &caps, &test, args.batch)?;
        }
        // where the routing loses: the float router's choices on the same quantized inputs
        // and the encrypted router's, simulated with `default`'s read noise
        let mut noisy = simulated_rounding(&Preset::load("default", false)?, 4, 7);
        let mut float_chosen = vec![0; pool.models.len()];
        let (mut agree, mut agree_noisy, mut float_right) = (0, 0, 0);
        for (r, &label) in test.features.iter().zip(&test.labels) {
            let x = pool.models[0].quantize_input(r)?;
            let f = files.router.choose(&x);
            float_chosen[f] += 1;
            agree += (f == pool.choose(&x, &mut Rounding::Exact).model) as usize;
            agree_noisy += (f == pool.choose(&x, &mut noisy).model) as usize;
            float_right += (argmax(&pool.models[f].reference_outputs(r, &mut Rounding::Exact)?)
                == label) as usize;
        }
        println!(
            "  float router: choices {float_chosen:?}, per-input routing {:.2} %; the integer \
             router agrees on {agree}/{} exactly, {agree_noisy} with `default`'s read noise",
            100.0 * float_right as f64 / test.len() as f64,
            test.len()
        );
        if args.out.is_some() && li == 0 {
            println!("  wrote {}", dir.display());
        } else {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

/// Trains one pool model per `experts:hidden` shape (no residual path).
fn train_models(
    shapes: &[String],
    model_train: &Dataset,
    test: &Dataset,
) -> Result<(Vec<FloatMoeModel>, Vec<PoolModelEntry>)> {
    anyhow::ensure!(
        (2..=NAMES.len()).contains(&shapes.len()),
        "--shapes: 2 to {} models",
        NAMES.len()
    );
    let mut floats = Vec::new();
    let mut entries = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        let (e, h) = s
            .split_once(':')
            .with_context(|| format!("--shapes: `{s}` is not experts:hidden"))?;
        let (experts, hidden) = (e.parse::<usize>()?, h.parse::<usize>()?);
        let opts = TrainOptions {
            shape: TrainShape {
                experts,
                hidden,
                residual: false,
            },
            quantization: None,
            w2_decay: 0.0,
            w2_keep: hidden,
            w2_l1_budget: 12,
            ..TrainOptions::default()
        };
        let t = train_digits(&opts, model_train, test, &mut |_| {})?;
        println!("model {} (E={experts}, h={hidden}): {}", NAMES[i], t.exact);
        floats.push(t.model);
        entries.push(PoolModelEntry {
            name: NAMES[i].into(),
            dir: NAMES[i].into(),
            cost: (experts + 2 * hidden) as f64,
        });
    }
    Ok((floats, entries))
}

/// Prints each model alone and per-input routing.
fn report(pool: &Pool, test: &Dataset) -> Result<()> {
    let a = pool_accuracy(pool, test, None)?;
    for (m, acc) in a.alone.iter().enumerate() {
        println!("  alone {m}: {acc:.2} %");
    }
    println!(
        "  per-input routing: {:.2} %, choices {:?}",
        a.per_input, a.choices
    );
    Ok(())
}

/// Prints the batch mode under `caps`.
fn batch_report(pool: &Pool, caps: &PoolCapacities, test: &Dataset, batch: usize) -> Result<()> {
    let a = pool_accuracy(pool, test, Some((caps, batch)))?;
    let b = a.batch.expect("asked for");
    println!(
        "  batch mode (T = {batch}, slots {:?}, fallback {} x {}): {:.2} %, {} fallback, {} \
         dropped (counted wrong)",
        caps.per_model.per_destination(),
        caps.fallback_model,
        caps.fallback_slots,
        b.accuracy,
        b.fallback,
        b.dropped
    );
    Ok(())
}
