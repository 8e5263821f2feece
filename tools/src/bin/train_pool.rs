//! Trains a pool of digits classifiers of increasing size and cost and their cost-aware router
//! (issue 14 item 1), measures the plaintext reference's accuracy of each model alone, of
//! per-input routing and of batches with public capacities, and with `--out` writes the pool
//! directory (`pool.toml`, one Mixtral directory per model, `router.safetensors`).
//!
//! The pool models train on three quarters of the training split; the router learns from the
//! other quarter, where "model m is right here" is what it will be on new inputs. Models have
//! no residual path (with it every shape lands at 95-96 % and a pool has nothing to trade).
//! Costs are the models' first-stage reads per input (`E + 2 h`), a proxy of their PBS count.
//!
//! Usage: `cargo run --release -p veilmoe-tools --bin train_pool [-- --out DIR --lambda L]`

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use veilmoe_protocols::model::data::{digits_split, embedded_digits, Dataset};
use veilmoe_protocols::model::math::argmax;
use veilmoe_protocols::model::pool::{place, Placement, PoolCapacities};
use veilmoe_protocols::model::pool_files::{
    save_pool, CapacityConfig, PoolConfig, PoolFiles, PoolModelEntry,
};
use veilmoe_protocols::model::reference::Rounding;
use veilmoe_protocols::model::train::pool_router::train_pool_router;
use veilmoe_protocols::model::train::{train_digits, TrainOptions, TrainShape};

#[derive(Parser)]
#[command(about = "Train a digits model pool and its cost-aware router (deterministic)")]
struct Args {
    /// Write the pool directory here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Accuracy-cost trade-off (utility per unit of cost).
    #[arg(long, default_value_t = 0.004)]
    lambda: f64,
    /// Per model `experts:hidden`, cheapest first.
    #[arg(long, value_delimiter = ',', default_value = "1:4,1:8,4:16")]
    shapes: Vec<String>,
    /// Inputs per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Slots per model.
    #[arg(long, value_delimiter = ',', default_value = "4,2,2")]
    slots: Vec<usize>,
    /// Fallback model (index) and its extra slots.
    #[arg(long, default_value_t = 1)]
    fallback: usize,
    #[arg(long, default_value_t = 2)]
    fallback_slots: usize,
}

const NAMES: [&str; 4] = ["tiny", "medium", "large", "xlarge"];

fn main() -> Result<()> {
    let args = Args::parse();
    let (train, test) = digits_split(&embedded_digits()?);
    let model_idx: Vec<usize> = (0..train.len()).filter(|i| i % 4 != 3).collect();
    let router_idx: Vec<usize> = (0..train.len()).filter(|i| i % 4 == 3).collect();
    let model_train = train.subset(&model_idx, "digits train (pool models)".into());
    let router_train = train.subset(&router_idx, "digits train (router)".into());
    let mut shapes = Vec::new();
    for s in &args.shapes {
        let (e, h) = s
            .split_once(':')
            .with_context(|| format!("--shapes: `{s}` is not experts:hidden"))?;
        shapes.push((e.parse::<usize>()?, h.parse::<usize>()?));
    }
    anyhow::ensure!(
        !shapes.is_empty() && shapes.len() <= NAMES.len(),
        "--shapes: 1 to {} models",
        NAMES.len()
    );
    let mut floats = Vec::new();
    let mut entries = Vec::new();
    for (i, &(experts, hidden)) in shapes.iter().enumerate() {
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
        let t = train_digits(&opts, &model_train, &test, &mut |_| {})?;
        println!("model {} (E={experts}, h={hidden}): {}", NAMES[i], t.exact);
        floats.push(t.model);
        entries.push(PoolModelEntry {
            name: NAMES[i].into(),
            dir: NAMES[i].into(),
            cost: (experts + 2 * hidden) as f64,
        });
    }
    let config = PoolConfig {
        lambda: args.lambda,
        router: "router.safetensors".into(),
        models: entries,
        capacities: CapacityConfig {
            batch: args.batch,
            slots: args.slots.clone(),
            fallback: NAMES[args.fallback.min(shapes.len() - 1)].into(),
            fallback_slots: args.fallback_slots,
        },
    };
    let quantized: Vec<_> = floats
        .iter()
        .map(|m| veilmoe_protocols::model::quantize::quantize(m, 4, &train.features))
        .collect::<Result<_, _>>()?;
    let router = train_pool_router(&quantized, &config.costs(), args.lambda, &router_train)?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("veilmoe-train-pool"));
    std::fs::create_dir_all(&dir)?;
    save_pool(&dir, &config, &floats, &router)?;
    let files = PoolFiles::load(&dir)?;
    let (pool, caps) = files.quantize(4, &train.features)?;
    report(&pool, &caps, &test, args.batch)?;
    // where the routing loses: the float router's choices on the same quantized inputs
    let mut float_chosen = vec![0; pool.models.len()];
    let mut agree = 0;
    for r in &test.features {
        let x = pool.models[0].quantize_input(r)?;
        let f = files.router.choose(&x);
        float_chosen[f] += 1;
        agree += (f == pool.choose(&x, &mut Rounding::Exact).model) as usize;
    }
    println!(
        "float router: choices {float_chosen:?}; the integer router agrees on {agree}/{}",
        test.len()
    );
    if args.out.is_none() {
        std::fs::remove_dir_all(&dir)?;
    } else {
        println!("wrote {}", dir.display());
    }
    Ok(())
}

/// Plaintext-reference accuracy on `test`: each model alone, per-input routing, and batches.
fn report(
    pool: &veilmoe_protocols::model::pool::Pool,
    caps: &PoolCapacities,
    test: &Dataset,
    batch: usize,
) -> Result<()> {
    let n = test.len();
    let preds: Vec<Vec<usize>> = pool
        .models
        .iter()
        .map(|m| {
            test.features
                .iter()
                .map(|r| Ok(argmax(&m.reference_outputs(r, &mut Rounding::Exact)?)))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let choices: Vec<usize> = test
        .features
        .iter()
        .map(|r| {
            Ok(pool
                .choose(&pool.models[0].quantize_input(r)?, &mut Rounding::Exact)
                .model)
        })
        .collect::<Result<_>>()?;
    let acc = |right: usize| 100.0 * right as f64 / n as f64;
    for (m, p) in preds.iter().enumerate() {
        let right = (0..n).filter(|&i| p[i] == test.labels[i]).count();
        println!("alone {m}: {:.2} %", acc(right));
    }
    let mut chosen = vec![0; pool.models.len()];
    choices.iter().for_each(|&c| chosen[c] += 1);
    let right = (0..n)
        .filter(|&i| preds[choices[i]][i] == test.labels[i])
        .count();
    println!("per-input routing: {:.2} %, choices {chosen:?}", acc(right));
    let (mut right, mut fallback, mut dropped) = (0, 0, 0);
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let c: Vec<usize> = idx.iter().map(|&i| choices[i]).collect();
        for (&i, p) in idx.iter().zip(place(&c, caps)?) {
            let model = match p {
                Placement::Chosen(s) => caps.per_model.locate(s).map(|(m, _)| m),
                Placement::Fallback(_) => {
                    fallback += 1;
                    Some(caps.fallback_model)
                }
                Placement::Dropped => {
                    dropped += 1;
                    None
                }
            };
            right += model.is_some_and(|m| preds[m][i] == test.labels[i]) as usize;
        }
    }
    println!(
        "batch mode (T = {batch}, slots {:?}, fallback {} x {}): {:.2} %, {fallback} fallback, {dropped} dropped (counted wrong)",
        caps.per_model.per_destination(),
        caps.fallback_model,
        caps.fallback_slots,
        acc(right)
    );
    Ok(())
}
