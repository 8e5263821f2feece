//! The command line's edge: argument structs and the code that calls the libraries and prints.
//! Binaries (`src/bin`) only dispatch to these; errors become one line on stderr there.

pub mod batch;
pub mod bench;
pub mod inspect;
pub mod params;
pub mod run;

use anyhow::{bail, Context, Result};
use veilmoe_engine::Preset;

/// Loads a preset (a name or a TOML file); an insecure one needs `allow_insecure` and is
/// announced on stderr.
pub fn load_preset(name: &str, allow_insecure: bool) -> Result<Preset> {
    let p = Preset::load(name, allow_insecure)?;
    if p.insecure {
        eprintln!(
            "WARNING: preset `{}` is INSECURE and exists for tests only. Never use it on real data.",
            p.name
        );
    }
    Ok(p)
}

/// Runs `f` in a rayon pool of `threads` threads (all cores when `None`).
pub fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(f()),
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => Ok(rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .context("cannot start the thread pool")?
            .install(f)),
    }
}

/// Turns a clap error into one line (its message and the possible values, without the usage
/// hint), so that every failure of the tools is one line on stderr.
pub fn one_line_clap_error(e: &clap::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses the command line; help and version print as usual, any other parse error is one
/// line on stderr and exit code 2.
pub fn parse_or_exit<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{}", one_line_clap_error(&e));
            std::process::exit(2);
        }
    }
}

/// Reports an error chain as one line on stderr and exits with 1.
pub fn exit_with(e: anyhow::Error) -> ! {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    eprintln!("error: {}", chain.join(": "));
    std::process::exit(1);
}
