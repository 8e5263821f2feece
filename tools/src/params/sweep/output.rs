//! `params sweep` outputs: CSV, JSON and an SVG plot of accuracy against time.

use super::{SweepCell, SweepReport};
use std::path::Path;

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The cells as CSV, one row per cell (empty fields where a value does not exist).
pub fn to_csv(r: &SweepReport) -> String {
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    let mut out = String::from(
        "preset,security_bits,insecure,bits,top_k,linear_in_product,pairwise_routing,strategy,runnable,\
         float_accuracy,\
         quantized_accuracy,simulated_accuracy,block_cosine,block_relative_l2,\
         expert_agreement,estimated_ms_per_token,pbs_per_token,\
         log2_p_fail_token,pareto,reason\n",
    );
    for c in &r.cells {
        out += &[
            csv_field(&c.preset),
            c.security_bits.to_string(),
            c.insecure.to_string(),
            c.bits.to_string(),
            c.top_k.to_string(),
            c.linear_in_product.to_string(),
            c.pairwise_routing.to_string(),
            csv_field(c.strategy.name()),
            c.runnable.to_string(),
            opt(c.float_accuracy),
            opt(c.quantized_accuracy),
            opt(c.simulated_accuracy),
            opt(c.block_cosine),
            opt(c.block_relative_l2),
            opt(c.expert_agreement),
            opt(c.estimated_ms_per_token),
            c.pbs_per_token.map_or(String::new(), |p| p.to_string()),
            opt(c.log2_p_fail_token),
            c.pareto.to_string(),
            csv_field(c.reason.as_deref().unwrap_or("")),
        ]
        .join(",");
        out.push('\n');
    }
    out
}

/// Writes the report as `.csv` or `.json` (by extension), atomically.
pub fn write_report(r: &SweepReport, path: &Path) -> Result<(), String> {
    let text = match output_kind(path)? {
        OutputKind::Csv => to_csv(r),
        OutputKind::Json => serde_json::to_string_pretty(r).map_err(|e| e.to_string())?,
        OutputKind::Svg => svg_plot(r),
    };
    veilmoe_engine::format::write_atomic(path, text.as_bytes()).map_err(|e| e.to_string())
}

/// What a file extension asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Csv,
    Json,
    Svg,
}

/// The kind of `path` by extension (checked before a sweep starts).
pub fn output_kind(path: &Path) -> Result<OutputKind, String> {
    match path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .as_deref()
    {
        Some("csv") => Ok(OutputKind::Csv),
        Some("json") => Ok(OutputKind::Json),
        Some("svg") => Ok(OutputKind::Svg),
        _ => Err(format!(
            "{}: unsupported output type (use .csv or .json, or .svg for --plot)",
            path.display()
        )),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Two scatter plots against estimated time per token, one above the other: simulated accuracy
/// and the block output's cosine similarity to the float model (fidelity). Every cell that ran
/// is a point, the Pareto front (accuracy/time) is joined by a line, cells outside their
/// preset's limits are hollow and grey.
pub fn svg_plot(r: &SweepReport) -> String {
    let (w, h) = (720.0, 480.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{w}\" height=\"{}\" fill=\"white\"/>\n",
        2.0 * h,
        2.0 * h,
        2.0 * h
    );
    s += &panel(r, 0.0, "accuracy", "simulated accuracy (%)", &|c| {
        c.simulated_accuracy.map(|a| a * 100.0)
    });
    s += &panel(r, h, "fidelity", "block output cosine to float", &|c| {
        c.block_cosine
    });
    s += "</svg>\n";
    s
}

/// One plot of `y_of` against estimated seconds per token, `top` pixels down.
fn panel(
    r: &SweepReport,
    top: f64,
    title: &str,
    y_label: &str,
    y_of: &dyn Fn(&SweepCell) -> Option<f64>,
) -> String {
    let pts: Vec<(&SweepCell, f64, f64)> = r
        .cells
        .iter()
        .filter_map(|c| Some((c, c.estimated_ms_per_token? / 1e3, y_of(c)?)))
        .collect();
    let (w, h, ml, mr, mt, mb) = (720.0, 480.0, 70.0, 30.0, 40.0, 60.0);
    let span = |vals: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = vals.collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else {
            let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-3);
            (lo - pad, hi + pad)
        }
    };
    let (x0, x1) = span(&mut pts.iter().map(|p| p.1));
    let (y0, y1) = span(&mut pts.iter().map(|p| p.2));
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| top + h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
    let (mt, bottom) = (top + mt, top + h - mb);
    let mut s = format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"14\">{} — {title} vs time per token ({} threads)</text>\n",
        w / 2.0,
        top + 22.0,
        xml_escape(&r.model),
        r.threads
    );
    s += &format!(
        "<line x1=\"{ml}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/>\n<line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{bottom}\" stroke=\"black\"/>\n",
        w - mr,
    );
    for i in 0..=5 {
        let (xv, yv) = (
            x0 + (x1 - x0) * i as f64 / 5.0,
            y0 + (y1 - y0) * i as f64 / 5.0,
        );
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{xv:.2}</text>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            px(xv),
            bottom + 16.0,
            ml - 6.0,
            py(yv) + 4.0,
            if y1 - y0 < 1.0 { format!("{yv:.3}") } else { format!("{yv:.1}") }
        );
    }
    let mid = (mt + bottom) / 2.0;
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">estimated seconds per token</text>\n<text x=\"16\" y=\"{mid}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {mid})\">{y_label}</text>\n",
        (ml + w - mr) / 2.0,
        top + h - 18.0,
    );
    let mut front: Vec<&(&SweepCell, f64, f64)> = pts.iter().filter(|p| p.0.pareto).collect();
    front.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
    if front.len() > 1 {
        let path: Vec<String> = front
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.1), py(p.2)))
            .collect();
        s += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>\n",
            path.join(" ")
        );
    }
    for (c, x, y) in &pts {
        let (fill, stroke) = if c.pareto {
            ("#1f77b4", "#1f77b4")
        } else if c.runnable {
            ("#ff7f0e", "#ff7f0e")
        } else {
            ("none", "#999999")
        };
        let label = format!(
            "{} b{} k{} {}{}",
            c.preset,
            c.bits,
            c.top_k,
            c.strategy,
            if c.insecure { " INSECURE" } else { "" }
        );
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{fill}\" stroke=\"{stroke}\"><title>{}</title></circle>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\" font-size=\"9\">{}</text>\n",
            px(*x),
            py(*y),
            xml_escape(&label),
            px(*x) + 6.0,
            py(*y) - 5.0,
            xml_escape(&label)
        );
    }
    s
}
