//! `veilmoe run`: the whole workflow locally on the embedded demo model.

use super::{load_preset, with_threads};
use crate::jobs::demo::{run_demo, DemoOptions};
use crate::progress::RecordProgress;
use crate::report::print_report;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use veilmoe_protocols::Strategy;

/// Everything locally on the embedded demo model: keygen, encrypt test records, encrypted
/// inference, decrypt; prints agreement with the plaintext model, accuracies, time per record.
#[derive(Args)]
pub struct Run {
    #[arg(long, default_value = "default")]
    preset: String,
    /// How many records of the digits test split to run encrypted.
    #[arg(long, default_value_t = 20)]
    records: usize,
    #[arg(long, value_enum, default_value_t = Strategy::Select)]
    strategy: Strategy,
    #[arg(long)]
    threads: Option<usize>,
    /// Keep the keys, batch and results here (default: a temporary directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    allow_insecure: bool,
}

impl Run {
    pub fn run(self) -> Result<()> {
        let preset = load_preset(&self.preset, self.allow_insecure)?;
        self.strategy.oblivious()?;
        if self.records == 0 {
            bail!("--records must be at least 1");
        }
        let opts = DemoOptions {
            preset,
            records: self.records,
            strategy: self.strategy,
            workdir: self.workdir,
        };
        let report = with_threads(self.threads, || {
            let mut progress = RecordProgress::new();
            run_demo(&opts, &mut |line| eprintln!("{line}"), &mut |d, t, s| {
                progress.update(d, t, s)
            })
        })??;
        print_report(&report, self.json)?;
        Ok(())
    }
}
