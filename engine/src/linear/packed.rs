//! GLWE-packed products: weights folded into polynomials, products, extraction, CMUX over
//! packed rows.

use super::{check_bias_len, Cols, Rows, WeightMatrix};
use crate::accounting::OpKind;
use crate::ciphertext::{LweKeyKind, LweVector, PackedGlwe};
use crate::error::{EngineError, Result};
use crate::evaluator::{with_scratch, Evaluator};
use crate::noise;
use crate::preset::Preset;
use crate::select::GgswBit;
use rayon::prelude::*;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::fft_impl::fft64::math::polynomial::FourierPolynomial;
use tfhe::core_crypto::prelude::*;

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
}
