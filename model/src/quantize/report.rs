//! [`QuantizeReport`]: what the quantizer chose, stage by stage, and its human-readable form
//! (the `Display` the tools print).

use super::options::QuantChoice;
use crate::classifier::InputQuantizer;
use std::fmt;

/// What the quantizer chose, stage by stage, and how well the result tracks the float model
/// on the calibration records.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    pub choice: QuantChoice,
    /// Raw calibration range mapped onto the signed m-bit inputs.
    pub input_range: (f32, f32),
    pub input: InputQuantizer,
    /// Real (block-input) value of one input step.
    pub input_step: f64,
    pub input_width: u32,
    pub input_shift: u32,
    /// The headroom over calibrated ranges (`None`: worst-case ranges).
    pub calibrated_headroom: Option<f64>,
    /// Scored records with a first-stage accumulator beyond its read box or an expert output
    /// beyond its encoding (they would wrap under encryption; always 0 with worst-case ranges).
    pub overflowing_records: usize,
    /// Real value of one router read step (= `logit_scale`).
    pub router_step: f64,
    pub router_zeroed: f64,
    pub logit_zero_point: i64,
    pub act_in_scale: f64,
    pub w1_zeroed: f64,
    /// Real value of one W3 read step, per expert and hidden unit (gated FFNs).
    pub w3_steps: Vec<Vec<f64>>,
    pub w3_zeroed: f64,
    /// The linear factor is read inside the product (its rows fit the factor range).
    pub linear_in_product: bool,
    /// The experts are chosen by pairwise comparisons of the router accumulators.
    pub pairwise_routing: bool,
    pub act_out_scale: f64,
    /// Reads per pre-activation ([`crate::quant::QuantParams::activation_reads`]).
    pub activation_reads: u32,
    /// Real value of one unit of W2's integer weights.
    pub w2_scale: f64,
    pub w2_max_abs: i64,
    pub w2_zeroed: f64,
    /// Largest squared 2-norm of a W2 row, and the limit the noise allowance sets on an
    /// encrypted row (each digit's, with digits).
    pub w2_norm2_sq: i64,
    pub w2_norm2_sq_limit: i64,
    /// W2's digits (see [`crate::output_digits`]), if split.
    pub output_digits: Option<crate::output_digits::OutputDigits>,
    pub output_width: u32,
    pub output_shift: u32,
    pub x_scale: f64,
    pub y_scale: f64,
    pub switch_numerator: i64,
    /// Calibration records scored.
    pub scored: usize,
    /// Fraction of scored records where the quantized argmax equals the float one (head only).
    pub agreement: Option<f64>,
    /// Fraction of scored records routed to the same experts as the float model.
    pub routing_agreement: f64,
    /// Relative squared error of the outputs, `sum (q - f)^2 / sum (f - mean f)^2`.
    pub relative_error: f64,
    /// Candidates evaluated by the search.
    pub candidates: usize,
}

impl fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |v: f64| 100.0 * v;
        writeln!(
            f,
            "input:    raw [{}, {}] -> signed m-bit, {:.4} raw per step, zero point {} (block step {:.5})",
            self.input_range.0, self.input_range.1, self.input.input_scale, self.input.input_zero_point, self.input_step
        )?;
        writeln!(
            f,
            "stage 1:  input width {} bits, read shift {} (router, W1, W3 share it), {}",
            self.input_width,
            self.input_shift,
            match self.calibrated_headroom {
                None => "worst-case ranges".to_string(),
                Some(h) => format!(
                    "calibrated ranges x {h:.2}: {} of the scored records overflow a read or an output (they would wrap)",
                    self.overflowing_records
                ),
            }
        )?;
        writeln!(
            f,
            "router:   {}step {:.4}, {:.1}% weights zeroed (prune {:.2}), logit zero point {}, {}",
            if self.choice.router_center {
                "centred, "
            } else {
                ""
            },
            self.router_step,
            pct(self.router_zeroed),
            self.choice.router_prune,
            self.logit_zero_point,
            if self.pairwise_routing {
                "experts chosen by pairwise comparisons of the accumulators"
            } else {
                "experts chosen by a tournament over the logit reads"
            }
        )?;
        writeln!(
            f,
            "W1:       act_in_scale {:.4}, {:.1}% weights zeroed (prune {:.2})",
            self.act_in_scale,
            pct(self.w1_zeroed),
            self.choice.w1_prune
        )?;
        if !self.w3_steps.is_empty() {
            let all: Vec<f64> = self.w3_steps.iter().flatten().copied().collect();
            let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = all.iter().copied().fold(0.0, f64::max);
            writeln!(
                f,
                "W3:       per-row steps {lo:.4}..{hi:.4}, {:.1}% weights zeroed (prune {:.2}), {}",
                pct(self.w3_zeroed),
                self.choice.w3_prune,
                if self.linear_in_product {
                    "read inside the product (rows fit the factor range)"
                } else {
                    "read on its own (clipped to the factor range)"
                }
            )?;
        }
        writeln!(
            f,
            "act:      act_out_scale {:.4} (clip {:.2}), {} read{} per pre-activation",
            self.act_out_scale,
            self.choice.act_clip,
            self.activation_reads,
            if self.activation_reads == 1 { "" } else { "s" }
        )?;
        writeln!(
            f,
            "W2:       scale {:.5}, largest |w| {} (target {:.1}), row L1 budget {}, {:.1}% zeroed, row norm^2 <= {} (limit {}{})",
            self.w2_scale,
            self.w2_max_abs,
            self.choice.w2_top,
            self.choice.w2_l1.map_or("none".to_string(), |b| b.to_string()),
            pct(self.w2_zeroed),
            self.w2_norm2_sq,
            self.w2_norm2_sq_limit,
            self.output_digits.map_or(String::new(), |g| format!(
                " per digit; two digits W2 = 2^{} hi + lo, each output {} bits wide",
                g.shift, g.width
            ))
        )?;
        writeln!(
            f,
            "output:   width {} bits, read shift {}, y_scale {:.5}, x_scale {:.5}",
            self.output_width, self.output_shift, self.y_scale, self.x_scale
        )?;
        write!(
            f,
            "calibration: {} records, {} candidates; routing agreement {:.1}%, ",
            self.scored,
            self.candidates,
            pct(self.routing_agreement)
        )?;
        if let Some(a) = self.agreement {
            write!(f, "argmax agreement {:.1}%, ", pct(a))?;
        }
        write!(f, "relative output error {:.4}", self.relative_error)
    }
}
