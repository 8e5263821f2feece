//! `veilmoe bench scaling`: how throughput grows with threads, for batch inference (records of
//! the embedded demo model through the server session, several records side by side) and for
//! batched PBS, with speedup, efficiency (speedup / threads) and an Amdahl fit of the serial
//! fraction. Each thread count runs in its own rayon pool on the same keys and inputs.

use super::primitives::BenchError;
use super::timing::{machine_name, median_ms};
use crate::model_source::ModelSource;
use serde::Serialize;
use veilmoe_engine::{ClientKey, Encoding, Evaluator, Lut, Preset};
use veilmoe_model::data::{digits_split, embedded_digits};
use veilmoe_protocols::session::BatchRecord;
use veilmoe_protocols::{ClientSession, ServerSession, Strategy};

/// What to measure.
pub struct ScalingBench {
    /// Thread counts, ascending; the first is the baseline of speedups (normally 1).
    pub threads: Vec<usize>,
    /// Records of the batch-inference workload (the same batch for every thread count).
    pub records: usize,
    /// PBS of the batched-PBS workload.
    pub pbs: usize,
    /// Timed runs per point (median reported).
    pub runs: usize,
}

/// One thread count.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingPoint {
    pub threads: usize,
    pub records_per_second: f64,
    pub inference_speedup: f64,
    pub inference_efficiency: f64,
    pub pbs_per_second: f64,
    pub pbs_speedup: f64,
    pub pbs_efficiency: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalingReport {
    pub preset: String,
    pub machine: String,
    pub model: String,
    pub strategy: Strategy,
    pub records: usize,
    pub pbs: usize,
    pub runs: usize,
    pub points: Vec<ScalingPoint>,
    /// Amdahl's law fitted to the speedups: the serial fraction s in
    /// `speedup(t) = 1 / (s + (1 - s) / t)` with the least squared error.
    pub inference_serial_fraction: f64,
    pub pbs_serial_fraction: f64,
}

/// The serial fraction of Amdahl's law that best fits `(threads, speedup)` points (least
/// squares over s in [0, 1] in steps of 0.001).
pub fn amdahl_fit(points: &[(usize, f64)]) -> f64 {
    let err = |s: f64| -> f64 {
        points
            .iter()
            .map(|&(t, sp)| {
                let model = 1.0 / (s + (1.0 - s) / t.max(1) as f64);
                (sp - model).powi(2)
            })
            .sum()
    };
    (0..=1000)
        .map(|i| i as f64 / 1000.0)
        .min_by(|a, b| err(*a).total_cmp(&err(*b)))
        .unwrap_or(0.0)
}

fn pool(threads: usize) -> Result<rayon::ThreadPool, BenchError> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}

/// Runs the scaling benchmark; `status` gets one line per phase and point.
pub fn run_scaling(
    preset: &Preset,
    b: &ScalingBench,
    status: &mut dyn FnMut(&str),
) -> Result<ScalingReport, BenchError> {
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    if b.threads.is_empty() || b.threads.contains(&0) || b.records == 0 || b.pbs == 0 {
        return Err(BenchError::Setup(
            "threads, records and PBS must be positive".into(),
        ));
    }
    status(&format!("generating keys ({preset}) ..."));
    let client = ClientKey::generate(preset);
    let server = client.server_key();
    let source = ModelSource::Embedded;
    let model = source.load_classifier(preset).map_err(|e| setup(&e))?;
    let strategy = Strategy::Select;
    let client_session = ClientSession::new(&client, &model).map_err(|e| setup(&e))?;
    let server_session = ServerSession::new(&server, &model, strategy).map_err(|e| setup(&e))?;
    let (_, test) = digits_split(&embedded_digits().map_err(|e| setup(&e))?);
    let meta = client_session.new_batch(b.records as u64);
    let records: Vec<BatchRecord> = (0..b.records)
        .map(|i| {
            client_session
                .encrypt_record(&meta, i as u64, &test.features[i % test.len()])
                .map_err(|e| setup(&e))
        })
        .collect::<Result<_, _>>()?;
    let small = Encoding::signed(preset.message_bits);
    let lut = Lut::univariate(preset, small, small, |v| v)?;
    let values: Vec<i64> = (0..b.pbs).map(|i| (i % 7) as i64 - 3).collect();
    let cts = client.encrypt_lwe(&values, small)?;

    let mut raw = Vec::new();
    for &t in &b.threads {
        let pool = pool(t)?;
        status(&format!("{t} threads: {} records ...", b.records));
        let failed = std::sync::atomic::AtomicBool::new(false);
        let inference_ms = pool.install(|| {
            median_ms(b.runs, &|| {
                let ok = server_session
                    .evaluate_many(records.clone())
                    .iter()
                    .all(|r| r.is_ok());
                if !ok {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })
        });
        if failed.into_inner() {
            return Err(BenchError::Setup("a record failed to evaluate".into()));
        }
        status(&format!("{t} threads: {} PBS ...", b.pbs));
        let pbs_ms = pool.install(|| {
            median_ms(b.runs, &|| {
                let ev = Evaluator::new(&server);
                let _ = ev.pbs(&cts, &lut);
            })
        });
        let point = (
            t,
            b.records as f64 / (inference_ms / 1e3),
            b.pbs as f64 / (pbs_ms / 1e3),
        );
        status(&format!(
            "{t} threads: {:.3} records/s, {:.1} PBS/s",
            point.1, point.2
        ));
        raw.push(point);
    }
    let (base_t, base_rec, base_pbs) = raw[0];
    let base_t = base_t as f64;
    let points: Vec<ScalingPoint> = raw
        .iter()
        .map(|&(t, rec, pbs)| {
            // Speedups relative to the first thread count, scaled to 1 thread.
            let inference_speedup = rec / base_rec * base_t;
            let pbs_speedup = pbs / base_pbs * base_t;
            ScalingPoint {
                threads: t,
                records_per_second: rec,
                inference_speedup,
                inference_efficiency: inference_speedup / t as f64,
                pbs_per_second: pbs,
                pbs_speedup,
                pbs_efficiency: pbs_speedup / t as f64,
            }
        })
        .collect();
    let fit = |f: &dyn Fn(&ScalingPoint) -> f64| {
        amdahl_fit(&points.iter().map(|p| (p.threads, f(p))).collect::<Vec<_>>())
    };
    Ok(ScalingReport {
        preset: preset.name.clone(),
        machine: machine_name(),
        model: source.label(),
        strategy,
        records: b.records,
        pbs: b.pbs,
        runs: b.runs,
        inference_serial_fraction: fit(&|p| p.inference_speedup),
        pbs_serial_fraction: fit(&|p| p.pbs_speedup),
        points,
    })
}

impl std::fmt::Display for ScalingReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scaling on {}: preset {}, {} ({}), {} records, {} PBS, median of {} runs",
            self.machine, self.preset, self.model, self.strategy, self.records, self.pbs, self.runs
        )?;
        writeln!(
            f,
            "  {:>7} {:>11} {:>8} {:>10} {:>9} {:>8} {:>10}",
            "threads", "records/s", "speedup", "efficiency", "PBS/s", "speedup", "efficiency"
        )?;
        for p in &self.points {
            writeln!(
                f,
                "  {:>7} {:>11.3} {:>8.2} {:>10.2} {:>9.1} {:>8.2} {:>10.2}",
                p.threads,
                p.records_per_second,
                p.inference_speedup,
                p.inference_efficiency,
                p.pbs_per_second,
                p.pbs_speedup,
                p.pbs_efficiency
            )?;
        }
        write!(
            f,
            "  Amdahl serial fraction: inference {:.3}, PBS {:.3}",
            self.inference_serial_fraction, self.pbs_serial_fraction
        )
    }
}

/// Draws speedup against threads (inference, PBS, ideal, and the inference Amdahl fit): the
/// text of an SVG file.
pub fn plot_svg(r: &ScalingReport) -> Result<String, String> {
    let mut svg = String::new();
    draw(r, &mut svg)?;
    Ok(svg)
}

fn draw(r: &ScalingReport, svg: &mut String) -> Result<(), String> {
    use plotters::prelude::*;
    let max_t = r.points.iter().map(|p| p.threads).max().unwrap_or(1).max(2) as f64;
    let max_s = r
        .points
        .iter()
        .flat_map(|p| [p.inference_speedup, p.pbs_speedup])
        .fold(max_t, f64::max);
    let err = |e: &dyn std::fmt::Display| format!("cannot draw the plot: {e}");
    let root = SVGBackend::with_string(svg, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("veilmoe scaling ({}, {})", r.preset, r.machine),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d(1f64..max_t, 0f64..max_s * 1.05)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("threads")
        .y_desc("speedup over 1 thread")
        .draw()
        .map_err(|e| err(&e))?;
    let ideal = vec![(1.0, 1.0), (max_t, max_t)];
    chart
        .draw_series(LineSeries::new(ideal, BLACK.mix(0.3)))
        .map_err(|e| err(&e))?
        .label("ideal")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    let s = r.inference_serial_fraction;
    let amdahl: Vec<(f64, f64)> = (0..=100)
        .map(|i| {
            let t = 1.0 + (max_t - 1.0) * i as f64 / 100.0;
            (t, 1.0 / (s + (1.0 - s) / t))
        })
        .collect();
    chart
        .draw_series(LineSeries::new(amdahl, GREEN.mix(0.6)))
        .map_err(|e| err(&e))?
        .label(format!("Amdahl fit, serial fraction {s:.3}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.mix(0.6)));
    for (name, color, f) in [
        (
            "batch inference",
            BLUE,
            &(|p: &ScalingPoint| p.inference_speedup) as &dyn Fn(&ScalingPoint) -> f64,
        ),
        ("batched PBS", RED, &|p: &ScalingPoint| p.pbs_speedup),
    ] {
        let pts: Vec<(f64, f64)> = r.points.iter().map(|p| (p.threads as f64, f(p))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(PointSeries::of_element(pts, 3, color, &|c, s, st| {
                Circle::new(c, s, st.filled())
            }))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::amdahl_fit;

    #[test]
    fn amdahl_fit_recovers_the_serial_fraction() {
        let s = 0.2;
        let pts: Vec<(usize, f64)> = [1, 2, 4, 8, 16]
            .iter()
            .map(|&t| (t, 1.0 / (s + (1.0 - s) / t as f64)))
            .collect();
        assert!((amdahl_fit(&pts) - s).abs() < 1e-3);
        assert_eq!(amdahl_fit(&[(1, 1.0), (2, 2.0)]), 0.0);
    }
}
