//! Circuit bootstrapping: an encrypted bit (an LWE ciphertext of 0 or 1) into a GGSW ciphertext
//! of the same bit, the control input of CMUX trees and gate products.
//!
//! A GGSW of `L` levels needs, per level `l` (1..=L), an LWE encryption of `bit * q / B^l`,
//! which `k + 1` private functional packing keyswitches turn into the level's GLWE rows. tfhe's
//! `circuit_bootstrap_boolean` makes each of those LWEs with its own blind rotation (L per bit).
//! Here one blind rotation makes all of them: its lookup table is a many-LUT (one function per
//! level, `v -> v * q / B^l`), sample-extracted at `L` positions. A bit's phase occupies two of
//! the `2^w` boxes of its `w`-bit encoding, so up to `2^(w-1)` functions fit without narrowing
//! the box: the read has exactly the margin of one PBS of that encoding, which is what the noise
//! check below (and `noise::cbs_equivalent_input_variance`) assumes, and the output noise is one
//! blind rotation's under the circuit-bootstrapping key, as before. The cost drops from `L`
//! blind rotations to one (L = 3 on `default` and `test`).

use crate::accounting::OpKind;
use crate::ciphertext::LweVector;
use crate::encoding::Encoding;
use crate::error::{EngineError, Result};
use crate::evaluator::{with_scratch, Evaluator};
use crate::keyswitch::{ks_chunk, pfks_block};
use crate::lut::Lut;
use crate::noise;
use crate::select::GgswBit;
use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;

impl<'k> Evaluator<'k> {
    /// Circuit-bootstraps every value of `bits` (each 0 or 1 in its encoding) into a GGSW
    /// ciphertext: keyswitch, one many-LUT blind rotation, and `k + 1` private functional
    /// packing keyswitches per GGSW level.
    pub fn circuit_bootstrap(&self, bits: &LweVector) -> Result<Vec<GgswBit>> {
        self.check_big_input(bits, "circuit bootstrap")?;
        let r = bits.range();
        if r.min < 0 || r.max > 1 {
            return Err(EngineError::range(
                "circuit bootstrap",
                format!("inputs must be bits, the range is [{}, {}]", r.min, r.max),
            ));
        }
        // Circuit bootstrapping reads each bit through a PBS: the same noise budget applies, in
        // units of the bit's own encoding (a wider encoding leaves a narrower margin).
        let budget = noise::pbs_input_budget(self.preset());
        let weighted = noise::cbs_equivalent_input_variance(
            self.preset(),
            bits.variance(),
            bits.encoding().width,
        );
        self.ops.note_read(bits.len() as u64, weighted);
        if weighted > budget {
            return Err(EngineError::NoiseBudget {
                context: "circuit bootstrap input (variance weighted by its encoding width)",
                variance: weighted,
                budget,
            });
        }
        let lut = self.level_table(bits.encoding().width)?;
        let small = self.keyswitch(bits)?;
        let key = self.key();
        let p = self.preset();
        let cbs = p.circuit_bootstrap;
        let glwe_size = p.glwe_dimension().to_glwe_size();
        let n = p.polynomial_size();
        let fft = key.fft.as_view();
        let modulus = CiphertextModulus::new_native();
        let log_modulus = CiphertextModulusLog(n.0.trailing_zeros() as usize + 1);
        let big_size = key.cbs_bsk.output_lwe_dimension().to_lwe_size();
        let req = blind_rotate_assign_mem_optimized_requirement::<u64>(
            key.cbs_bsk.glwe_size(),
            key.cbs_bsk.polynomial_size(),
            fft,
        )
        .unaligned_bytes_required()
        .max(
            convert_standard_ggsw_ciphertext_to_fourier_mem_optimized_requirement(fft)
                .unaligned_bytes_required(),
        );
        let size = small.as_list().lwe_size().0;
        let (levels, rows) = (cbs.level, glwe_size.0);
        let glwe_words = rows * n.0;
        let decomp = (
            DecompositionBaseLog(cbs.base_log),
            DecompositionLevelCount(cbs.level),
        );
        // Each task: the blind rotations of a block of bits, then every level LWE of the block
        // through each function key at once (see `keyswitch.rs`), then the GGSWs assembled.
        let blocks: Vec<Vec<FourierGgswCiphertext<aligned_vec::ABox<[c64]>>>> = small
            .as_list()
            .as_ref()
            .par_chunks(ks_chunk(bits.len()) * size)
            .map(|cts| {
                let count = cts.len() / size;
                let mut level_lwes = vec![0u64; count * levels * big_size.0];
                with_scratch(req, |stack| {
                    for (ct, out) in cts
                        .chunks_exact(size)
                        .zip(level_lwes.chunks_exact_mut(levels * big_size.0))
                    {
                        let msed = lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(
                            LweCiphertext::from_container(ct, modulus),
                            log_modulus,
                        );
                        let mut acc = lut.acc.clone();
                        blind_rotate_assign_mem_optimized(
                            &msed,
                            &mut acc,
                            &key.cbs_bsk,
                            fft,
                            stack,
                        );
                        // Matrix i of a GGSW holds level L - i (tfhe's layout): bit * q / B^(L-i).
                        for (i, lwe) in out.chunks_exact_mut(big_size.0).enumerate() {
                            extract_lwe_sample_from_glwe_ciphertext(
                                &acc,
                                &mut LweCiphertext::from_container(lwe, modulus),
                                MonomialDegree(lut.extract[i]),
                            );
                        }
                    }
                });
                // Row r of every matrix comes from function key r. The keys are streamed side
                // by side: a lone bit (a chain of circuit bootstraps, see the protocols'
                // `index_chain.rs`) is otherwise one thread streaming every key.
                let packed: Vec<Vec<u64>> = key
                    .cbs_pfpksk
                    .par_iter()
                    .map(|pfpksk| {
                        let mut out = vec![0u64; count * levels * glwe_words];
                        pfks_block(&pfpksk, &level_lwes, big_size.0, &mut out, glwe_words);
                        out
                    })
                    .collect();
                (0..count)
                    .map(|b| {
                        let mut std_ggsw =
                            GgswCiphertext::new(0u64, glwe_size, n, decomp.0, decomp.1, modulus);
                        for (i, mut matrix) in std_ggsw.iter_mut().enumerate() {
                            let at = (b * levels + i) * glwe_words;
                            for (mut row, rows_of_key) in
                                matrix.as_mut_glwe_list().iter_mut().zip(&packed)
                            {
                                row.as_mut()
                                    .copy_from_slice(&rows_of_key[at..at + glwe_words]);
                            }
                        }
                        let mut fourier =
                            FourierGgswCiphertext::new(glwe_size, n, decomp.0, decomp.1);
                        with_scratch(req, |stack| {
                            convert_standard_ggsw_ciphertext_to_fourier_mem_optimized(
                                &std_ggsw,
                                &mut fourier,
                                fft,
                                stack,
                            );
                        });
                        fourier
                    })
                    .collect()
            })
            .collect();
        let ggsws: Vec<_> = blocks.into_iter().flatten().collect();
        let levels = cbs.level as u64;
        self.ops
            .record(OpKind::CircuitBootstrap, bits.len() as u64, levels);
        let variance = noise::cbs_pbs_output_variance(p) + noise::pfks_variance(p);
        Ok(ggsws
            .into_iter()
            .map(|ggsw| GgswBit {
                key_set: bits.key_set(),
                ggsw,
                variance,
            })
            .collect())
    }

    /// The many-LUT of one circuit bootstrap for bits at encoding width `w`: function `i`
    /// (extracted at `extract[i]`) maps a bit `v` to `v * 2^(64 - base_log * (L - i))`, the
    /// torus value of GGSW matrix `i`. Its output encoding has `base_log * L` bits, so that
    /// each value is an integer multiple of the encoding's step.
    fn level_table(&self, w: u32) -> Result<Lut> {
        let p = self.preset();
        let (bl, levels) = (
            p.circuit_bootstrap.base_log as u32,
            p.circuit_bootstrap.level as u32,
        );
        let out_width = bl * levels;
        if levels == 0 || levels as usize > (1usize << (w.max(1) - 1)) || out_width < 2 {
            return Err(EngineError::range(
                "circuit bootstrap",
                format!("{levels} GGSW levels of base 2^{bl} do not fit a {w}-bit bit encoding"),
            ));
        }
        let fs: Vec<Box<dyn Fn(i64) -> i64>> = (0..levels)
            .map(|i| {
                // raw = v * 2^(63 - out_width) * 2^(1 + out_width - bl (L - i))
                let shift = 1 + out_width - bl * (levels - i);
                Box::new(move |v: i64| v.clamp(0, 1) << shift) as Box<dyn Fn(i64) -> i64>
            })
            .collect();
        let refs: Vec<&dyn Fn(i64) -> i64> = fs.iter().map(|f| f.as_ref()).collect();
        Lut::many(
            p,
            Encoding::unsigned(w),
            Encoding::unsigned(out_width),
            &refs,
        )
    }
}
