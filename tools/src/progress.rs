//! Progress of long work (records of a job): an indicatif bar on a terminal, plain lines
//! otherwise (logs of batch systems such as Slurm or Kubernetes).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Reports records done out of a total, with the time per record and the time left.
pub struct RecordProgress {
    bar: Option<ProgressBar>,
}

impl Default for RecordProgress {
    fn default() -> Self {
        RecordProgress::new()
    }
}

impl RecordProgress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new() -> RecordProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} records  {msg}  elapsed {elapsed}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        RecordProgress { bar }
    }

    /// `done` of `total` records, at `per_record` seconds each so far (0 before the first).
    pub fn update(&mut self, done: u64, total: u64, per_record: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                if per_record > 0.0 {
                    bar.set_message(format!("{per_record:.1} s/record"));
                }
                if done == total {
                    bar.finish();
                }
            }
            None => eprintln!("{}", plain_line(done, total, per_record)),
        }
    }
}

/// One progress line: done/total, time per record, ETA.
pub fn plain_line(done: u64, total: u64, per_record: f64) -> String {
    if done == 0 || per_record == 0.0 {
        format!("[{done}/{total}] starting")
    } else {
        let eta = per_record * total.saturating_sub(done) as f64;
        format!(
            "[{done}/{total}] {per_record:.1} s/record, ETA {}",
            duration(eta)
        )
    }
}

/// `1h02m`, `3m05s` or `42s`.
pub fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
