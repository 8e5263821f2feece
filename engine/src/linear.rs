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

use crate::accounting::OpKind;
use crate::ciphertext::{LweKeyKind, LweVector, PackedGlwe};
use crate::encoding::{Encoding, ValueRange};
use crate::error::{EngineError, Result};
use crate::evaluator::{with_scratch, Evaluator};
use crate::noise;
use crate::preset::Preset;
use crate::select::GgswBit;
use rayon::prelude::*;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::fft_impl::fft64::math::polynomial::FourierPolynomial;
use tfhe::core_crypto::prelude::*;

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
        Ok(WeightMatrix { rows, cols, data })
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
        let (lo, hi) = self.output_range(range, bias);
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

/// Weights laid out and FFT-transformed for [`Evaluator::packed_matvec`], once per model load.
pub struct PackedWeights {
    rows: Rows,
    cols: Cols,
    /// Values per input chunk (one chunk per input GLWE): min(cols, N).
    chunk: usize,
    /// Rows folded into one weight polynomial.
    rows_per_poly: usize,
    groups: usize,
    chunks: usize,
    norm2_sq: f64,
    matrix: WeightMatrix,
    /// `fourier[g * chunks + j]`: group g, input chunk j.
    fourier: Vec<FourierPolynomial<Vec<c64>>>,
    polynomial_size: PolynomialSize,
}

impl PackedWeights {
    /// Lays out and transforms `matrix` for the preset's polynomial size.
    pub fn new(preset: &Preset, matrix: WeightMatrix) -> PackedWeights {
        let n = preset.glwe.polynomial_size;
        let (rows, cols) = (matrix.rows.0, matrix.cols.0);
        let chunk = cols.min(n);
        let rows_per_poly = (n / chunk).max(1);
        let groups = rows.div_ceil(rows_per_poly);
        let chunks = cols.div_ceil(chunk);
        let fft = Fft::new(PolynomialSize(n));
        let fft = fft.as_view();
        let req = fft.forward_scratch().unaligned_bytes_required();
        let fourier = (0..groups * chunks)
            .into_par_iter()
            .map(|gj| {
                let (g, j) = (gj / chunks, gj % chunks);
                let mut poly = vec![0u64; n];
                for s in 0..rows_per_poly {
                    let r = g * rows_per_poly + s;
                    if r >= rows {
                        break;
                    }
                    for i in 0..chunk {
                        let col = j * chunk + i;
                        if col < cols {
                            poly[s * chunk + chunk - 1 - i] = matrix.data[r * cols + col] as u64;
                        }
                    }
                }
                let mut f = FourierPolynomial {
                    data: vec![c64::default(); n / 2],
                };
                with_scratch(req, |stack| {
                    fft.forward_as_integer(
                        f.as_mut_view(),
                        Polynomial::from_container(poly.as_slice()),
                        stack,
                    );
                });
                f
            })
            .collect();
        PackedWeights {
            rows: matrix.rows,
            cols: matrix.cols,
            chunk,
            rows_per_poly,
            groups,
            chunks,
            norm2_sq: matrix.max_row_norm2_sq(),
            matrix,
            fourier,
            polynomial_size: PolynomialSize(n),
        }
    }

    pub fn rows(&self) -> Rows {
        self.rows
    }
    pub fn cols(&self) -> Cols {
        self.cols
    }
    pub fn matrix(&self) -> &WeightMatrix {
        &self.matrix
    }
    /// GLWE x polynomial products per evaluation.
    pub fn poly_products(&self) -> usize {
        self.groups * self.chunks
    }
}

/// Where the rows of a packed product sit in its GLWE ciphertexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    rows: usize,
    rows_per_poly: usize,
    chunk: usize,
}

/// Results of a packed matrix-vector product still in GLWE form (see
/// [`Evaluator::packed_products`]).
#[derive(Debug, Clone)]
pub struct PackedRows {
    glwes: PackedGlwe,
    layout: RowLayout,
}

impl PackedRows {
    /// Number of result rows.
    pub fn rows(&self) -> usize {
        self.layout.rows
    }
    /// GLWE ciphertexts holding them.
    pub fn glwe_count(&self) -> usize {
        self.glwes.glwe_count()
    }
}

impl<'k> Evaluator<'k> {
    /// `W x + bias` over LWE ciphertexts (big or small key).
    pub fn lwe_matvec(
        &self,
        w: &WeightMatrix,
        bias: Option<&[i64]>,
        x: &LweVector,
    ) -> Result<LweVector> {
        self.check_key_set(x.key_set())?;
        let (out_enc, out_range) =
            w.check_input("LWE matvec", x.len(), x.encoding(), x.range(), bias)?;
        let size = x.as_list().lwe_size().0;
        let in_data = x.as_list().as_ref();
        let delta = x.encoding().delta();
        let mut out = vec![0u64; w.rows.0 * size];
        out.par_chunks_mut(size).enumerate().for_each(|(r, acc)| {
            for (&wv, ct) in w.row(r).iter().zip(in_data.chunks_exact(size)) {
                if wv != 0 {
                    let s = wv as u64;
                    for (a, &c) in acc.iter_mut().zip(ct) {
                        *a = a.wrapping_add(c.wrapping_mul(s));
                    }
                }
            }
            if let Some(b) = bias {
                acc[size - 1] = acc[size - 1].wrapping_add((b[r] as u64).wrapping_mul(delta));
            }
        });
        self.ops
            .record(OpKind::LweMulAdd, (w.rows.0 * w.cols.0) as u64, size as u64);
        Ok(LweVector::new(
            x.key_set(),
            x.key_kind(),
            out_enc,
            out_range,
            x.variance() * w.max_row_norm2_sq(),
            LweCiphertextList::from_container(
                out,
                x.as_list().lwe_size(),
                x.as_list().ciphertext_modulus(),
            ),
        ))
    }

    /// `W x + bias` over a GLWE-packed input; returns one big-key LWE per row.
    pub fn packed_matvec(
        &self,
        w: &PackedWeights,
        bias: Option<&[i64]>,
        x: &PackedGlwe,
    ) -> Result<LweVector> {
        let rows = self.packed_products(w, bias, x)?;
        self.extract_rows(&rows)
    }

    /// The products of [`Evaluator::packed_matvec`] before sample extraction: the results stay
    /// packed in GLWE coefficients, so a CMUX tree can choose among several matrices' results
    /// with one CMUX per GLWE (not per row); [`Evaluator::extract_rows`] finishes the job.
    pub fn packed_products(
        &self,
        w: &PackedWeights,
        bias: Option<&[i64]>,
        x: &PackedGlwe,
    ) -> Result<PackedRows> {
        self.check_key_set(x.key_set())?;
        let (out_enc, out_range) =
            w.matrix
                .check_input("packed matvec", x.len(), x.encoding(), x.range(), bias)?;
        check_bias_len(bias, w.rows.0)?;
        let p = self.preset();
        if w.polynomial_size != p.polynomial_size() {
            return Err(EngineError::shape(
                "packed matvec",
                format!("weights for N = {}", p.glwe.polynomial_size),
                format!("N = {}", w.polynomial_size.0),
            ));
        }
        if x.glwe_count() != w.chunks {
            return Err(EngineError::shape(
                "packed matvec",
                format!("{} GLWE chunks", w.chunks),
                x.glwe_count(),
            ));
        }
        let n = p.glwe.polynomial_size;
        let glwe_size = p.glwe_dimension().to_glwe_size().0;
        let fft = self.key().fft.as_view();
        let fwd_req = fft.forward_scratch().unaligned_bytes_required();
        let bwd_req = fft.backward_scratch().unaligned_bytes_required();

        // Forward FFT of every polynomial of every input GLWE, shared by all row groups.
        let in_polys: Vec<&[u64]> = x.as_list().as_ref().chunks_exact(n).collect();
        let in_fourier: Vec<FourierPolynomial<Vec<c64>>> = in_polys
            .par_iter()
            .map(|poly| {
                let mut f = FourierPolynomial {
                    data: vec![c64::default(); n / 2],
                };
                with_scratch(fwd_req, |stack| {
                    fft.forward_as_torus(f.as_mut_view(), Polynomial::from_container(*poly), stack);
                });
                f
            })
            .collect();

        let delta = x.encoding().delta();
        let per_group: Vec<Vec<u64>> = (0..w.groups)
            .into_par_iter()
            .map(|g| {
                // Fourier-domain accumulation over chunks, one polynomial of the GLWE at a time.
                let mut glwe = GlweCiphertext::new(
                    0u64,
                    GlweSize(glwe_size),
                    PolynomialSize(n),
                    CiphertextModulus::new_native(),
                );
                let mut acc = vec![c64::default(); n / 2];
                for (pi, mut out_poly) in glwe.as_mut_polynomial_list().iter_mut().enumerate() {
                    acc.iter_mut().for_each(|a| *a = c64::default());
                    for j in 0..w.chunks {
                        let xf = &in_fourier[j * glwe_size + pi].data;
                        let wf = &w.fourier[g * w.chunks + j].data;
                        for ((a, &xv), &wv) in acc.iter_mut().zip(xf).zip(wf) {
                            *a += xv * wv;
                        }
                    }
                    with_scratch(bwd_req, |stack| {
                        fft.backward_as_torus(
                            out_poly.as_mut_view(),
                            FourierPolynomial {
                                data: acc.as_slice(),
                            },
                            stack,
                        );
                    });
                }
                if let Some(b) = bias {
                    let mut body = glwe.get_mut_body();
                    let coeffs = body.as_mut();
                    for s in 0..w.rows_per_poly {
                        let r = g * w.rows_per_poly + s;
                        if r < w.rows.0 {
                            let c = &mut coeffs[s * w.chunk + w.chunk - 1];
                            *c = c.wrapping_add((b[r] as u64).wrapping_mul(delta));
                        }
                    }
                }
                glwe.into_container()
            })
            .collect();
        let data: Vec<u64> = per_group.into_iter().flatten().collect();

        self.ops.record(
            OpKind::Fft,
            (in_polys.len() + w.groups * glwe_size) as u64,
            n as u64,
        );
        self.ops
            .record(OpKind::PolyProduct, (w.groups * w.chunks) as u64, n as u64);
        let variance =
            x.variance() * w.norm2_sq + noise::packed_product_fft_variance(p, w.norm2_sq);
        Ok(PackedRows {
            glwes: PackedGlwe {
                key_set: x.key_set(),
                encoding: out_enc,
                range: out_range,
                variance,
                len: w.rows.0,
                list: GlweCiphertextList::from_container(
                    data,
                    GlweSize(glwe_size),
                    PolynomialSize(n),
                    CiphertextModulus::new_native(),
                ),
            },
            layout: RowLayout {
                rows: w.rows.0,
                rows_per_poly: w.rows_per_poly,
                chunk: w.chunk,
            },
        })
    }

    /// Sample-extracts the rows of [`Evaluator::packed_products`]: one big-key LWE per row.
    pub fn extract_rows(&self, rows: &PackedRows) -> Result<LweVector> {
        self.check_key_set(rows.glwes.key_set())?;
        let p = self.preset();
        let n = p.glwe.polynomial_size;
        let glwe_len = p.glwe_dimension().to_glwe_size().0 * n;
        let lwe_size = p.big_lwe_dimension().to_lwe_size();
        let l = rows.layout;
        let per_group: Vec<Vec<u64>> = rows
            .glwes
            .list
            .as_ref()
            .par_chunks(glwe_len)
            .enumerate()
            .map(|(g, data)| {
                let glwe = GlweCiphertext::from_container(
                    data,
                    PolynomialSize(n),
                    CiphertextModulus::new_native(),
                );
                let mut out = Vec::with_capacity(l.rows_per_poly * lwe_size.0);
                let mut lwe = LweCiphertext::new(0u64, lwe_size, CiphertextModulus::new_native());
                for s in 0..l.rows_per_poly {
                    if g * l.rows_per_poly + s >= l.rows {
                        break;
                    }
                    extract_lwe_sample_from_glwe_ciphertext(
                        &glwe,
                        &mut lwe,
                        MonomialDegree(s * l.chunk + l.chunk - 1),
                    );
                    out.extend_from_slice(lwe.as_ref());
                }
                out
            })
            .collect();
        self.ops
            .record(OpKind::SampleExtract, l.rows as u64, n as u64);
        Ok(LweVector::new(
            rows.glwes.key_set(),
            LweKeyKind::Big,
            rows.glwes.encoding(),
            rows.glwes.range(),
            rows.glwes.variance(),
            LweCiphertextList::from_container(
                per_group.into_iter().flatten().collect(),
                lwe_size,
                CiphertextModulus::new_native(),
            ),
        ))
    }

    /// Chooses among the packed results of several matrices of one shape by encrypted index bits
    /// (least significant first): one CMUX per GLWE per tree node, whatever the number of rows.
    pub fn cmux_tree_rows(
        &self,
        index_bits: &[GgswBit],
        inputs: &[PackedRows],
    ) -> Result<PackedRows> {
        let first = inputs
            .first()
            .ok_or_else(|| EngineError::shape("CMUX tree", "at least one input", 0))?;
        if inputs.iter().any(|r| r.layout != first.layout) {
            return Err(EngineError::shape(
                "CMUX tree over packed rows",
                format!("every input laid out as {:?}", first.layout),
                "inputs of different shapes",
            ));
        }
        let glwes: Vec<PackedGlwe> = inputs.iter().map(|r| r.glwes.clone()).collect();
        Ok(PackedRows {
            glwes: self.cmux_tree(index_bits, &glwes)?,
            layout: first.layout,
        })
    }

    /// Trivial (noiseless, zero-mask) big-key encryptions of public constants, for the places
    /// where a protocol needs a known value as a ciphertext (for instance the one-hot of a
    /// single expert).
    pub fn trivial(&self, values: &[i64], encoding: Encoding) -> Result<LweVector> {
        encoding.validate()?;
        let p = self.preset();
        let size = p.big_lwe_dimension().to_lwe_size().0;
        let mut data = vec![0u64; values.len() * size];
        for (ct, &v) in data.chunks_exact_mut(size).zip(values) {
            ct[size - 1] = encoding.encode(v)?;
        }
        let lo = values.iter().copied().min().unwrap_or(0);
        let hi = values.iter().copied().max().unwrap_or(0);
        Ok(LweVector::new(
            self.key().key_set(),
            LweKeyKind::Big,
            encoding,
            ValueRange::new(lo, hi)?,
            0.0,
            LweCiphertextList::from_container(data, LweSize(size), CiphertextModulus::new_native()),
        ))
    }

    /// Adds plaintext constants (one per value, in the vector's encoding).
    pub fn add_plain(&self, x: &LweVector, constants: &[i64]) -> Result<LweVector> {
        self.check_key_set(x.key_set())?;
        if constants.len() != x.len() {
            return Err(EngineError::shape(
                "add_plain",
                format!("{} constants", x.len()),
                constants.len(),
            ));
        }
        let lo = constants.iter().min().copied().unwrap_or(0) as i128 + x.range().min as i128;
        let hi = constants.iter().max().copied().unwrap_or(0) as i128 + x.range().max as i128;
        let enc = x.encoding();
        if lo < enc.min() as i128 || hi > enc.max() as i128 {
            return Err(EngineError::range(
                "add_plain",
                format!("the result can reach [{lo}, {hi}], outside {enc:?}"),
            ));
        }
        let mut out = x.clone();
        out.range = ValueRange {
            min: lo as i64,
            max: hi as i64,
        };
        let size = out.list.lwe_size().0;
        let delta = x.encoding().delta();
        for (ct, &c) in out.list.as_mut().chunks_exact_mut(size).zip(constants) {
            ct[size - 1] = ct[size - 1].wrapping_add((c as u64).wrapping_mul(delta));
        }
        Ok(out)
    }

    /// Elementwise `sum_i coeffs[i] * parts[i]` (plaintext coefficients), e.g. a - b or a*2^w + b.
    pub fn linear_combination(
        &self,
        parts: &[&LweVector],
        coeffs: &[i64],
        out_encoding: Encoding,
    ) -> Result<LweVector> {
        self.combine(parts, coeffs, out_encoding, None)
    }

    /// [`Evaluator::linear_combination`] whose result is known, from the protocol's structure,
    /// to stay in `range`, narrower than the interval bound: for instance
    /// `max(a, b) = a + relu(b - a)` stays within the union of the ranges of `a` and `b`. The
    /// claim is public (it holds for every input), never derived from data.
    pub fn linear_combination_within(
        &self,
        parts: &[&LweVector],
        coeffs: &[i64],
        out_encoding: Encoding,
        range: ValueRange,
    ) -> Result<LweVector> {
        self.combine(parts, coeffs, out_encoding, Some(range))
    }

    fn combine(
        &self,
        parts: &[&LweVector],
        coeffs: &[i64],
        out_encoding: Encoding,
        known: Option<ValueRange>,
    ) -> Result<LweVector> {
        let first = parts
            .first()
            .ok_or_else(|| EngineError::shape("linear combination", "at least one input", 0))?;
        if parts.len() != coeffs.len() {
            return Err(EngineError::shape(
                "linear combination",
                format!("{} coefficients", parts.len()),
                coeffs.len(),
            ));
        }
        out_encoding.validate()?;
        self.check_key_set(first.key_set())?;
        let mut variance = 0.0;
        for p in parts {
            first.check_compatible(p, "linear combination")?;
            if p.len() != first.len() {
                return Err(EngineError::shape(
                    "linear combination",
                    format!("{} values", first.len()),
                    p.len(),
                ));
            }
        }
        if out_encoding.width != first.encoding().width {
            return Err(EngineError::shape(
                "linear combination",
                format!("output width {}", first.encoding().width),
                out_encoding.width,
            ));
        }
        let ranges: Vec<ValueRange> = parts.iter().map(|p| p.range()).collect();
        let (mut lo, mut hi) = ValueRange::affine(&ranges, coeffs, 0);
        if let Some(r) = known {
            lo = lo.max(r.min as i128);
            hi = hi.min(r.max as i128);
            if lo > hi {
                return Err(EngineError::range(
                    "linear combination",
                    format!("declared range {r:?} is disjoint from the interval bound"),
                ));
            }
        }
        if lo < out_encoding.min() as i128 || hi > out_encoding.max() as i128 {
            return Err(EngineError::range(
                "linear combination",
                format!("the result can reach [{lo}, {hi}], outside {out_encoding:?}"),
            ));
        }
        let mut data = vec![0u64; first.list.as_ref().len()];
        for (p, &c) in parts.iter().zip(coeffs) {
            variance += (c as f64) * (c as f64) * p.variance();
            let s = c as u64;
            data.par_iter_mut()
                .zip(p.list.as_ref().par_iter())
                .for_each(|(a, &v)| *a = a.wrapping_add(v.wrapping_mul(s)));
        }
        self.ops.record(
            OpKind::LweMulAdd,
            (parts.len() * first.len()) as u64,
            first.list.lwe_size().0 as u64,
        );
        Ok(LweVector::new(
            first.key_set(),
            first.key_kind(),
            out_encoding,
            ValueRange {
                min: lo as i64,
                max: hi as i64,
            },
            variance,
            LweCiphertextList::from_container(
                data,
                first.list.lwe_size(),
                first.list.ciphertext_modulus(),
            ),
        ))
    }
}
