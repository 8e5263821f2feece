//! Timing helpers every benchmark and estimate shares: the median of repeated runs and the
//! machine's name for reports.

use std::time::Instant;

/// Median of `runs` timings of `f`, in milliseconds (after one warm-up run).
pub fn median_ms(runs: usize, f: &dyn Fn()) -> f64 {
    f();
    let t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    veilmoe_model::median(&t)
}

/// CPU model and core count, for reports.
pub fn machine_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{model}, {cores} cores")
}

/// The median of `runs` and the index of the run closest to it (whose stages and trace a
/// benchmark reports); `(0, 0)` for none.
pub fn median_run(runs: &[f64]) -> (f64, usize) {
    let med = veilmoe_model::median(runs);
    let at = (0..runs.len())
        .min_by(|&i, &j| (runs[i] - med).abs().total_cmp(&(runs[j] - med).abs()))
        .unwrap_or(0);
    (med, at)
}
