//! `params`: presets' security, precision, failure probability, key sizes and PBS cost.
//! Also reachable as `veilmoe params`.

use clap::Parser;
use veilmoe_tools::cli::{self, params::ParamsCommand};

#[derive(Parser)]
#[command(
    name = "params",
    version,
    about = "veilmoe parameter presets: security, failure probability, cost"
)]
struct Cli {
    #[command(subcommand)]
    command: ParamsCommand,
}

fn main() {
    if let Err(e) = cli::params::run_params(cli::parse_or_exit::<Cli>().command) {
        cli::exit_with(e);
    }
}
