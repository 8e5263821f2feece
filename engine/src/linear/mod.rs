//! Leveled linear algebra with plaintext integer weights: no bootstrapping, only noise growth.
//!
//! Two forms of matrix x encrypted vector:
//! - [`Evaluator::lwe_matvec`] over one LWE ciphertext per value: each term is a scalar
//!   multiply-accumulate over k*N + 1 torus words (about 1 microsecond);
//! - [`Evaluator::packed_matvec`] over GLWE-packed values: several rows are folded into one
//!   weight polynomial so that one GLWE x polynomial product (FFT, weights transformed once in
//!   [`PackedWeights::new`]) yields `N / cols` dot products at once, each read out by sample
//!   extraction. Row `r` sits in slot `s` of its group with coefficients
//!   `w(X) = sum_i W[r][i] X^(s*c + c-1-i)`, so the product's coefficient `s*c + c-1` is exactly
//!   `<W[r], x>` and no other row or wrap-around term lands there.
//!
//! Both refuse a product whose accumulator could overflow the input encoding's width, and both
//! update the variance bound by the rows' squared 2-norm.

mod lwe;
mod packed;

pub use packed::{PackedRows, PackedWeights, RowLayout};

use crate::encoding::{Encoding, ValueRange};
use crate::error::{EngineError, Result};

/// Number of matrix rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rows(pub usize);
/// Number of matrix columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cols(pub usize);

/// A plaintext integer matrix, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightMatrix {
    rows: Rows,
    cols: Cols,
    data: Vec<i64>,
    /// The accumulators' declared range, where it is a calibrated bound rather than the worst
    /// case (see [`WeightMatrix::with_declared_range`]).
    declared: Option<ValueRange>,
}

impl WeightMatrix {
    pub fn new(rows: Rows, cols: Cols, data: Vec<i64>) -> Result<WeightMatrix> {
        if rows.0 == 0 || cols.0 == 0 || data.len() != rows.0 * cols.0 {
            return Err(EngineError::shape(
                "weight matrix",
                format!(
                    "{} x {} = {} entries (non-empty)",
                    rows.0,
                    cols.0,
                    rows.0 * cols.0
                ),
                format!("{} entries", data.len()),
            ));
        }
        Ok(WeightMatrix {
            rows,
            cols,
            data,
            declared: None,
        })
    }

    /// Declares the range of the product's accumulators (`W x + b`) for every input the caller
    /// will give, in place of the worst case over the input's tracked range, which the
    /// products otherwise require to fit the encoding. For rows scaled from calibration data:
    /// the worst case of a dense row is several times its typical accumulator. An accumulator
    /// beyond the declared range wraps around the torus (the server computes on, unaware;
    /// what a PBS or the client then reads of it is meaningless): the caller owns that risk
    /// and measures it. The range must hold 0; the output range is never wider than the worst
    /// case.
    pub fn with_declared_range(mut self, range: ValueRange) -> Result<WeightMatrix> {
        if range.min > 0 || range.max < 0 {
            return Err(EngineError::range(
                "declared accumulator range",
                format!("[{}, {}] does not hold 0", range.min, range.max),
            ));
        }
        self.declared = Some(range);
        Ok(self)
    }

    pub fn rows(&self) -> Rows {
        self.rows
    }
    pub fn cols(&self) -> Cols {
        self.cols
    }
    pub fn row(&self, r: usize) -> &[i64] {
        &self.data[r * self.cols.0..(r + 1) * self.cols.0]
    }
    pub fn data(&self) -> &[i64] {
        &self.data
    }

    /// Largest squared 2-norm of a row: the noise growth factor of the product.
    pub fn max_row_norm2_sq(&self) -> f64 {
        (0..self.rows.0)
            .map(|r| {
                self.row(r)
                    .iter()
                    .map(|&w| (w as f64) * (w as f64))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
    }

    /// Largest |accumulator| for inputs with |x| <= `input_max_abs` and the given bias.
    pub fn accumulator_bound(&self, input_max_abs: i64, bias: Option<&[i64]>) -> i128 {
        (0..self.rows.0)
            .map(|r| {
                let l1: i128 = self.row(r).iter().map(|&w| (w as i128).abs()).sum();
                l1 * input_max_abs as i128 + bias.map_or(0, |b| (b[r] as i128).abs())
            })
            .max()
            .unwrap_or(0)
    }

    /// The plaintext product (reference).
    pub fn apply_plain(&self, x: &[i64], bias: Option<&[i64]>) -> Vec<i64> {
        (0..self.rows.0)
            .map(|r| {
                self.row(r).iter().zip(x).map(|(&w, &v)| w * v).sum::<i64>()
                    + bias.map_or(0, |b| b[r])
            })
            .collect()
    }

    /// The exact range of `W x + bias` for x in `input`.
    pub fn output_range(&self, input: ValueRange, bias: Option<&[i64]>) -> (i128, i128) {
        let ranges = vec![input; self.cols.0];
        (0..self.rows.0)
            .map(|r| ValueRange::affine(&ranges, self.row(r), bias.map_or(0, |b| b[r])))
            .fold((i128::MAX, i128::MIN), |(lo, hi), (a, b)| {
                (lo.min(a), hi.max(b))
            })
    }

    /// Checks shapes and that every accumulator fits the input's encoding: the worst case over
    /// `range`, or, where the matrix declares its accumulators' range (a calibrated bound that
    /// the worst case may exceed), that range. Returns the output encoding and range.
    fn check_input(
        &self,
        context: &'static str,
        len: usize,
        enc: Encoding,
        range: ValueRange,
        bias: Option<&[i64]>,
    ) -> Result<(Encoding, ValueRange)> {
        if len != self.cols.0 {
            return Err(EngineError::shape(
                context,
                format!("{} input values", self.cols.0),
                format!("{len}"),
            ));
        }
        if let Some(b) = bias {
            if b.len() != self.rows.0 {
                return Err(EngineError::shape(
                    context,
                    format!("{} bias values", self.rows.0),
                    format!("{}", b.len()),
                ));
            }
        }
        let (lo, hi) = match self.declared {
            // never wider than the worst case
            Some(d) => {
                let (wlo, whi) = self.output_range(range, bias);
                ((d.min as i128).max(wlo), (d.max as i128).min(whi))
            }
            None => self.output_range(range, bias),
        };
        let out = Encoding::signed(enc.width);
        if lo < out.min() as i128 || hi > out.max() as i128 {
            return Err(EngineError::range(
                context,
                format!(
                    "the accumulator can reach [{lo}, {hi}], beyond the {}-bit signed range of the input encoding; encrypt the input with a wider encoding",
                    enc.width
                ),
            ));
        }
        Ok((
            out,
            ValueRange {
                min: lo as i64,
                max: hi as i64,
            },
        ))
    }
}

fn check_bias_len(bias: Option<&[i64]>, rows: usize) -> Result<()> {
    match bias {
        Some(b) if b.len() != rows => Err(EngineError::shape(
            "bias",
            format!("{rows} values"),
            b.len(),
        )),
        _ => Ok(()),
    }
}
