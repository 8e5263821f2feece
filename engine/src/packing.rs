//! LWE -> GLWE packing keyswitch: gathers up to N LWE ciphertexts (big key) into the coefficients
//! of one GLWE, so that values coming out of PBS can go back into packed products (a selected
//! expert's activations into every expert's second stage, one CMUX per GLWE instead of one per
//! output).
//!
//! tfhe's packing keyswitch multiplies every key ciphertext by every input's digits one scalar at
//! a time: `count * kN * levels * (k+1) N` word products, about a PBS per packed value. The same
//! sum is a ring product: with `D_{i,l}(X) = sum_j digit_l(a_{j,i}) X^j` (digit l of mask element
//! i of input j, put at coefficient j),
//!
//! `sum_j X^j (b_j - sum_{i,l} digit_l(a_{j,i}) K_{i,l}) = B(X) - sum_{i,l} D_{i,l}(X) K_{i,l}(X)`,
//!
//! so a GLWE costs `kN * levels` forward FFTs of small-integer polynomials and their products
//! with the key, kept in the Fourier domain (`FourierPackingKey`), whatever the count: about
//! the cost of one PBS for a whole GLWE. The digits are those tfhe takes (closest representable,
//! signed decomposition), so the phase is tfhe's up to the FFT's rounding. That rounding is
//! most of what the keyswitch adds (10x the key's noise on `default`), yet 2 % of a PBS
//! output's noise at most: [`noise::packing_keyswitch_variance`] counts it and
//! `tests/packing_keyswitch.rs` measures it.

use crate::accounting::OpKind;
use crate::ciphertext::{LweVector, PackedGlwe};
use crate::error::Result;
use crate::evaluator::{with_scratch, Evaluator};
use crate::noise;
use rayon::prelude::*;
use tfhe::core_crypto::commons::math::decomposition::SignedDecomposer;
use tfhe::core_crypto::fft_impl::fft64::math::fft::FftView;
use tfhe::core_crypto::fft_impl::fft64::math::polynomial::FourierPolynomial;
use tfhe::core_crypto::prelude::*;

/// The packing keyswitching key in the Fourier domain: for input key element `i`, level `l`
/// and GLWE polynomial `c`, the transform of that polynomial of tfhe's key ciphertext `(i, l)`.
pub(crate) struct FourierPackingKey {
    input_dimension: usize,
    base_log: usize,
    levels: usize,
    glwe_size: usize,
    polynomial_size: usize,
    /// `[(i * levels + l) * glwe_size + c]`, `N / 2` values each.
    data: Vec<c64>,
}

impl FourierPackingKey {
    /// Transforms tfhe's packing key (its dimensions were checked against the preset).
    pub(crate) fn new(key: &LwePackingKeyswitchKeyOwned<u64>, fft: FftView<'_>) -> Self {
        let n = key.output_polynomial_size().0;
        let glwe_size = key.output_glwe_size().0;
        let polys: Vec<&[u64]> = key.as_ref().chunks_exact(n).collect();
        let req = fft.forward_scratch().unaligned_bytes_required();
        let mut data = vec![c64::default(); polys.len() * n / 2];
        data.par_chunks_mut(n / 2)
            .zip(polys.par_iter())
            .for_each(|(out, poly)| {
                with_scratch(req, |stack| {
                    fft.forward_as_torus(
                        FourierPolynomial { data: out },
                        Polynomial::from_container(*poly),
                        stack,
                    );
                });
            });
        FourierPackingKey {
            input_dimension: key.input_key_lwe_dimension().0,
            base_log: key.decomposition_base_log().0,
            levels: key.decomposition_level_count().0,
            glwe_size,
            polynomial_size: n,
            data,
        }
    }

    /// (input LWE dimension, base log, levels, GLWE size, polynomial size), for validation.
    pub(crate) fn shape(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.input_dimension,
            self.base_log,
            self.levels,
            self.glwe_size,
            self.polynomial_size,
        )
    }

    pub(crate) fn size_bytes(&self) -> usize {
        std::mem::size_of_val(self.data.as_slice())
    }

    fn poly(&self, i: usize, l: usize, c: usize) -> &[c64] {
        let half = self.polynomial_size / 2;
        let at = ((i * self.levels + l) * self.glwe_size + c) * half;
        &self.data[at..at + half]
    }

    /// Packs `lwes` (at most N, each of `input_dimension + 1` words) into `out`.
    fn pack_into(&self, lwes: &[&[u64]], out: &mut [u64], fft: FftView<'_>) {
        let (n, half, levels, glwe_size) = (
            self.polynomial_size,
            self.polynomial_size / 2,
            self.levels,
            self.glwe_size,
        );
        let decomposer = SignedDecomposer::<u64>::new(
            DecompositionBaseLog(self.base_log),
            DecompositionLevelCount(levels),
        );
        let fwd = fft.forward_scratch().unaligned_bytes_required();
        let threads = rayon::current_num_threads().max(1);
        let step = self.input_dimension.div_ceil(threads * 4).max(1);
        // Each worker: sum over its input key elements of D_{i,l} K_{i,l}, in the Fourier domain.
        let sum = (0..self.input_dimension)
            .into_par_iter()
            .step_by(step)
            .map(|start| {
                let mut acc = vec![c64::default(); glwe_size * half];
                let mut digits = vec![0u64; levels * n];
                let mut spectrum = vec![c64::default(); half];
                for i in start..(start + step).min(self.input_dimension) {
                    for (j, lwe) in lwes.iter().enumerate() {
                        // `decompose` rounds to the closest representable value first
                        for (l, term) in decomposer.decompose(lwe[i]).enumerate() {
                            digits[l * n + j] = term.value();
                        }
                    }
                    for l in 0..levels {
                        with_scratch(fwd, |stack| {
                            fft.forward_as_integer(
                                FourierPolynomial {
                                    data: spectrum.as_mut_slice(),
                                },
                                Polynomial::from_container(&digits[l * n..(l + 1) * n]),
                                stack,
                            );
                        });
                        for c in 0..glwe_size {
                            let key = self.poly(i, l, c);
                            let acc = &mut acc[c * half..(c + 1) * half];
                            for ((a, &s), &k) in acc.iter_mut().zip(&spectrum).zip(key) {
                                *a += s * k;
                            }
                        }
                    }
                }
                acc
            })
            .reduce(
                || vec![c64::default(); glwe_size * half],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += *y);
                    a
                },
            );
        let bwd = fft.backward_scratch().unaligned_bytes_required();
        let mut product = vec![0u64; n];
        for (c, poly) in out.chunks_exact_mut(n).enumerate() {
            with_scratch(bwd, |stack| {
                fft.backward_as_torus(
                    PolynomialMutView::from_container(product.as_mut_slice()),
                    FourierPolynomial {
                        data: &sum[c * half..(c + 1) * half],
                    },
                    stack,
                );
            });
            // The body starts from the inputs' bodies at their coefficients (tfhe's B(X)).
            for (j, o) in poly.iter_mut().enumerate() {
                let body = if c + 1 == glwe_size && j < lwes.len() {
                    lwes[j][self.input_dimension]
                } else {
                    0
                };
                *o = body.wrapping_sub(product[j]);
            }
        }
    }
}

impl<'k> Evaluator<'k> {
    /// Packs `x` (big key) N values per GLWE, value `i` to coefficient `i % N` of GLWE `i / N`.
    /// Counted once per output GLWE: its cost does not depend on how many values it holds.
    pub fn pack(&self, x: &LweVector) -> Result<PackedGlwe> {
        self.check_big_input(x, "packing keyswitch")?;
        let p = self.preset();
        let n = p.glwe.polynomial_size;
        let glwes = x.len().div_ceil(n).max(1);
        let glwe_size = p.glwe_dimension().to_glwe_size();
        let mut list = GlweCiphertextList::new(
            0u64,
            glwe_size,
            p.polynomial_size(),
            GlweCiphertextCount(glwes),
            CiphertextModulus::new_native(),
        );
        let lwe_size = x.as_list().lwe_size().0;
        let words = x.as_list().as_ref();
        let key = &self.key().pksk;
        let fft = self.key().fft.as_view();
        for (g, glwe) in list.as_mut().chunks_exact_mut(glwe_size.0 * n).enumerate() {
            let end = ((g + 1) * n).min(x.len());
            let lwes: Vec<&[u64]> = (g * n..end)
                .map(|v| &words[v * lwe_size..(v + 1) * lwe_size])
                .collect();
            key.pack_into(&lwes, glwe, fft);
        }
        let levels = p.packing_keyswitch.level as u64;
        self.ops.record(
            OpKind::Fft,
            glwes as u64 * (p.big_lwe_dimension().0 as u64 * levels + glwe_size.0 as u64),
            n as u64,
        );
        self.ops
            .record(OpKind::PackingKeyswitch, glwes as u64, n as u64);
        Ok(PackedGlwe {
            key_set: x.key_set(),
            encoding: x.encoding(),
            range: x.range(),
            variance: x.variance() + noise::packing_keyswitch_variance(p, x.len().min(n)),
            len: x.len(),
            list,
        })
    }
}
