//! `veilmoe`: the command-line front end. It parses, dispatches to `veilmoe_tools::cli`, and
//! reports; every error is one line on stderr with a non-zero exit.

use clap::{Parser, Subcommand};
use veilmoe_tools::cli::{self, batch, bench, inspect, params, route, run};

#[derive(Parser)]
#[command(
    name = "veilmoe",
    version,
    about = "Private Mixture-of-Experts inference under TFHE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks (JSON with --json).
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
    Keygen(batch::Keygen),
    Quantize(batch::Quantize),
    Encrypt(batch::Encrypt),
    Infer(batch::Infer),
    Merge(batch::Merge),
    Decrypt(batch::Decrypt),
    Run(run::Run),
    Route(route::Route),
    /// Presets: security, precision, failure probability, key sizes, PBS time (as `params`).
    Params {
        #[command(subcommand)]
        command: params::ParamsCommand,
    },
    Inspect(inspect::Inspect),
}

fn main() {
    let result = match cli::parse_or_exit::<Cli>().command {
        Command::Bench { what } => what.run(),
        Command::Keygen(c) => c.run(),
        Command::Quantize(c) => c.run(),
        Command::Encrypt(c) => c.run(),
        Command::Infer(c) => c.run(),
        Command::Merge(c) => c.run(),
        Command::Decrypt(c) => c.run(),
        Command::Run(c) => c.run(),
        Command::Route(c) => c.run(),
        Command::Params { command } => params::run_params(command),
        Command::Inspect(c) => c.run(),
    };
    if let Err(e) = result {
        cli::exit_with(e);
    }
}
