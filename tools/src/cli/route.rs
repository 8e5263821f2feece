//! `veilmoe route`: encrypted routing over a model pool, locally (both parties in one process).

use super::{load_preset, with_threads};
use crate::jobs::route::{run_route, RouteOptions};
use crate::progress::RecordProgress;
use crate::report::print_report;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// The digits model pool shipped in the repository (`train_pool` writes it; see BENCHMARKS.md).
pub const SHIPPED_POOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../model/demo/digits-pool");

/// Encrypted routing over a pool of models on digits test records: keygen, encrypt, batches
/// under the pool's public capacities, decrypt; prints agreement with the plaintext reference
/// of the same rules, accuracies, time per input and the batch's operations.
#[derive(Args)]
pub struct Route {
    /// Pool directory (`pool.toml`, the models, the router); default: the shipped digits pool.
    #[arg(long)]
    pool: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    preset: String,
    /// How many records of the digits test split to route (in batches of the pool's size).
    #[arg(long, default_value_t = 16)]
    records: usize,
    /// Write each record's answer here as CSV.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    allow_insecure: bool,
}

impl Route {
    pub fn run(self) -> Result<()> {
        let preset = load_preset(&self.preset, self.allow_insecure)?;
        if self.records == 0 {
            bail!("--records must be at least 1");
        }
        let opts = RouteOptions {
            preset,
            pool_dir: self.pool.unwrap_or_else(|| PathBuf::from(SHIPPED_POOL)),
            records: self.records,
            out: self.out,
        };
        let report = with_threads(self.threads, || {
            let mut progress = RecordProgress::new();
            run_route(&opts, &mut |line| eprintln!("{line}"), &mut |d, t, s| {
                progress.update(d, t, s)
            })
        })??;
        print_report(&report, self.json)?;
        Ok(())
    }
}
