//! Programmable bootstrapping through the engine: keyswitch (big -> small key), centered-mean
//! modulus switch (as tfhe's 2M128 sets assume), blind rotation of the lookup table, sample
//! extraction. Batches run in parallel with rayon, each thread reusing its own scratch memory;
//! each thread keyswitches its share of a batch in blocks (see `keyswitch.rs`), so the
//! keyswitching key is read from memory once per block rather than once per ciphertext, and
//! blind-rotates the block side by side (tfhe's `batch_blind_rotate_assign`: each GGSW of the
//! bootstrapping key is applied to every accumulator of the block while it is in cache).

use crate::accounting::OpKind;
use crate::ciphertext::{LweKeyKind, LweVector};
use crate::error::{EngineError, Result};
use crate::evaluator::{with_scratch, Evaluator};
use crate::keyswitch::{keyswitch_block, ks_chunk};
use crate::lut::{BivariateLut, Lut};
use crate::noise;
use rayon::prelude::*;
use tfhe::core_crypto::fft_impl::fft64::crypto::bootstrap::batch_blind_rotate_assign_scratch;
use tfhe::core_crypto::prelude::*;

impl<'k> Evaluator<'k> {
    /// Keyswitches big-key ciphertexts to the small key.
    pub fn keyswitch(&self, x: &LweVector) -> Result<LweVector> {
        self.check_big_input(x, "keyswitch")?;
        let key = self.key();
        let small = key.ksk.output_key_lwe_dimension().to_lwe_size();
        let big = x.as_list().lwe_size().0;
        let mut out = vec![0u64; x.len() * small.0];
        let chunk = ks_chunk(x.len());
        out.par_chunks_mut(chunk * small.0)
            .zip(x.as_list().as_ref().par_chunks(chunk * big))
            .for_each(|(o, i)| keyswitch_block(&key.ksk, i, big, o, small.0, 0));
        self.ops
            .record(OpKind::Keyswitch, x.len() as u64, big as u64);
        let p = self.preset();
        Ok(LweVector::new(
            x.key_set(),
            LweKeyKind::Small,
            x.encoding(),
            x.range(),
            x.variance() + noise::keyswitch_variance(p, big - 1),
            LweCiphertextList::from_container(out, small, CiphertextModulus::new_native()),
        ))
    }

    /// Refuses an input whose noise exceeds the preset's failure-probability budget.
    fn check_pbs_input(&self, x: &LweVector, lut: &Lut) -> Result<()> {
        self.check_big_input(x, "PBS (it keyswitches itself)")?;
        if x.encoding().width != lut.input().width || x.encoding().signed != lut.input().signed {
            return Err(EngineError::shape(
                "PBS",
                format!("input encoding {:?}", lut.input()),
                format!("{:?}", x.encoding()),
            ));
        }
        let budget = noise::pbs_input_budget(self.preset());
        self.ops.note_read(x.len() as u64, x.variance());
        if x.variance() > budget {
            return Err(EngineError::NoiseBudget {
                context: "PBS input",
                variance: x.variance(),
                budget,
            });
        }
        Ok(())
    }

    /// Runs KS + PBS on every ciphertext of `x`; returns one vector per function of the table.
    fn run_pbs(&self, x: &LweVector, lut: &Lut) -> Result<Vec<LweVector>> {
        Ok(self.run_tables(x, &[lut])?.remove(0))
    }

    /// Keyswitches and modulus-switches every ciphertext of `x` once, then blind-rotates it
    /// through each table: per table, one vector per function of the table.
    fn run_tables(&self, x: &LweVector, luts: &[&Lut]) -> Result<Vec<Vec<LweVector>>> {
        if luts.is_empty() {
            return Ok(Vec::new());
        }
        for lut in luts {
            self.check_pbs_input(x, lut)?;
        }
        let key = self.key();
        let p = self.preset();
        let big = x.as_list().lwe_size().0;
        let small = key.ksk.output_key_lwe_dimension().to_lwe_size();
        let out_size = key.bsk.output_lwe_dimension().to_lwe_size();
        // words per input value: every function of every table
        let per_value: usize = luts.iter().map(|l| l.extract.len() * out_size.0).sum();
        let offset = (x.encoding().pbs_offset() as u64).wrapping_mul(x.encoding().delta());
        let log_modulus =
            CiphertextModulusLog(p.glwe.polynomial_size.trailing_zeros() as usize + 1);
        let fft = key.fft.as_view();
        let modulus = CiphertextModulus::new_native();
        // the words of function `j` of table `t` start at `first[t] + j * out_size` in a value's
        let mut first = Vec::with_capacity(luts.len());
        let mut at = 0;
        for lut in luts {
            first.push(at);
            at += lut.extract.len() * out_size.0;
        }

        let mut out = vec![0u64; x.len() * per_value];
        let chunk = ks_chunk(x.len());
        let req = batch_blind_rotate_assign_scratch::<u64>(
            key.bsk.glwe_size(),
            key.bsk.polynomial_size(),
            CiphertextCount(chunk),
            fft,
        )
        .unaligned_bytes_required();
        out.par_chunks_mut(chunk * per_value)
            .zip(x.as_list().as_ref().par_chunks(chunk * big))
            .for_each(|(o, i)| {
                // the block's keyswitches first (the key read once for all of them)
                let count = i.len() / big;
                let mut ks = vec![0u64; count * small.0];
                keyswitch_block(&key.ksk, i, big, &mut ks, small.0, offset);
                let msed: Vec<_> = ks
                    .chunks_exact(small.0)
                    .map(|ks| {
                        lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(
                            LweCiphertext::from_container(ks, modulus),
                            log_modulus,
                        )
                    })
                    .collect();
                for (lut, &start) in luts.iter().zip(&first) {
                    // the block's blind rotations side by side: each GGSW of the bootstrapping
                    // key is applied to every accumulator while it is in cache
                    let mut accs = GlweCiphertextList::new(
                        0u64,
                        lut.acc.glwe_size(),
                        lut.acc.polynomial_size(),
                        GlweCiphertextCount(count),
                        modulus,
                    );
                    for mut acc in accs.iter_mut() {
                        acc.as_mut().copy_from_slice(lut.acc.as_ref());
                    }
                    with_scratch(req, |stack| {
                        key.bsk.as_view().batch_blind_rotate_assign(
                            accs.as_mut_view(),
                            &msed,
                            fft,
                            stack,
                        );
                    });
                    for (acc, o) in accs.iter().zip(o.chunks_exact_mut(per_value)) {
                        let words = o[start..].chunks_exact_mut(out_size.0);
                        for (&degree, chunk) in lut.extract.iter().zip(words) {
                            let mut lwe = LweCiphertext::from_container(chunk, modulus);
                            extract_lwe_sample_from_glwe_ciphertext(
                                &acc,
                                &mut lwe,
                                MonomialDegree(degree),
                            );
                        }
                    }
                }
            });
        self.ops
            .record(OpKind::Keyswitch, x.len() as u64, (big - 1) as u64);
        self.ops.record(
            OpKind::Pbs,
            (x.len() * luts.len()) as u64,
            p.lwe.dimension as u64,
        );
        let var = noise::pbs_output_variance(p);
        Ok(luts
            .iter()
            .zip(&first)
            .map(|(lut, &start)| {
                (0..lut.extract.len())
                    .map(|j| {
                        let from = start + j * out_size.0;
                        let mut data = Vec::with_capacity(x.len() * out_size.0);
                        for c in out.chunks_exact(per_value) {
                            data.extend_from_slice(&c[from..from + out_size.0]);
                        }
                        LweVector::new(
                            x.key_set(),
                            LweKeyKind::Big,
                            lut.output(),
                            lut.output_range(),
                            var,
                            LweCiphertextList::from_container(data, out_size, modulus),
                        )
                    })
                    .collect()
            })
            .collect())
    }

    /// Applies each single-output table of `luts` to every value of `x`, keyswitching each value
    /// once for all of them (a keyswitch is about a tenth of a PBS on `default`): one vector per
    /// table, the same ciphertexts as one [`Evaluator::pbs`] per table would give.
    pub fn pbs_each(&self, x: &LweVector, luts: &[&Lut]) -> Result<Vec<LweVector>> {
        if let Some(l) = luts.iter().find(|l| l.outputs() != 1) {
            return Err(EngineError::shape(
                "PBS",
                "single-output tables",
                format!("a table of {} outputs (use pbs_many)", l.outputs()),
            ));
        }
        Ok(self
            .run_tables(x, luts)?
            .into_iter()
            .map(|mut v| v.remove(0))
            .collect())
    }

    /// Several tables, many-LUTs among them, on every value of `x`, keyswitched once for all of
    /// them: per table, one vector per function of the table.
    pub fn pbs_tables(&self, x: &LweVector, luts: &[&Lut]) -> Result<Vec<Vec<LweVector>>> {
        self.run_tables(x, luts)
    }

    /// Applies `lut` to every value of `x` (KS + PBS each, in parallel).
    pub fn pbs(&self, x: &LweVector, lut: &Lut) -> Result<LweVector> {
        if lut.outputs() != 1 {
            return Err(EngineError::shape(
                "PBS",
                "a single-output table",
                format!("{} outputs (use pbs_many)", lut.outputs()),
            ));
        }
        Ok(self.run_pbs(x, lut)?.remove(0))
    }

    /// Applies a many-LUT: one blind rotation per value, one output vector per function.
    pub fn pbs_many(&self, x: &LweVector, lut: &Lut) -> Result<Vec<LweVector>> {
        self.run_pbs(x, lut)
    }

    /// `f(a_i, b_i)` elementwise: packs `a * 2^b_bits + b` (leveled) then one PBS per pair.
    pub fn bivariate_pbs(
        &self,
        a: &LweVector,
        b: &LweVector,
        lut: &BivariateLut,
    ) -> Result<LweVector> {
        let combined = self.linear_combination(&[a, b], &[1i64 << lut.b_bits, 1], lut.input())?;
        self.pbs(&combined, &lut.lut)
    }
}
