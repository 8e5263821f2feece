//! `params`: presets' security, precision, failure probability, key sizes and PBS cost.
//! Also reachable as `veilmoe params`.

use clap::Parser;
use veilmoe_tools::params_cli::{run_params, ParamsCommand};

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
    if let Err(e) = run_params(Cli::parse().command) {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
