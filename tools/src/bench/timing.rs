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
