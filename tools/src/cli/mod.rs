//! The command line's edge: argument structs and the code that calls the libraries and prints.
//! Binaries (`src/bin`) only dispatch to these; errors become one line on stderr there.

pub mod batch;
pub mod bench;
pub mod inspect;
pub mod params;
pub mod route;
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
    eprintln!("error: {}", one_line(&e));
    std::process::exit(1);
}

/// An error chain as one line: each cause appended unless the line already says it (many
/// errors print their source in their own message as well as exposing it as a cause).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("I/O error on k: no such file");
        let e = e.context("k");
        assert_eq!(one_line(&e), "k: I/O error on k: no such file");
    }
}
