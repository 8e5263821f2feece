//! Keyswitching blocks of big-key LWE ciphertexts at once: to the small key (every PBS) and,
//! by private functional packing keyswitches, into GLWEs (every circuit bootstrap).
//!
//! Why: the keyswitching key is large (`default`: 2048 input coefficients x 5 levels x 867
//! words = 71 MB) and tfhe's `keyswitch_lwe_ciphertext` streams all of it from memory for every
//! ciphertext, so a keyswitch is bound by memory bandwidth (6.6 ms of a 33 ms PBS on a 2-core
//! Xeon, both cores contending for the same memory in a batch). Here each key block (one input
//! coefficient's `level` ciphertexts, 35 KB on `default`) is applied to a whole block of
//! ciphertexts while it is in cache, so the key is read once per block of [`KS_BLOCK`]
//! ciphertexts instead of once per ciphertext.
//!
//! The same holds for circuit bootstrapping's private functional packing keys (`default`: 2049
//! input coefficients x 2 levels x 2 x 2048 words = 134 MB per function key), which every GGSW
//! level of every bit used to stream again: [`pfks_block`] applies each key block to all the
//! level ciphertexts of a block of bits.
//!
//! The arithmetic is tfhe's (`keyswitch_lwe_ciphertext_native_mod_compatible`,
//! `private_functional_keyswitch_lwe_ciphertext_into_glwe_ciphertext`) term for term: the same
//! signed decomposition, the same key rows, wrapping sums taken in another order, which modular
//! addition does not see. The outputs are bit-identical to tfhe's; the tests check it.

use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_sub_scalar_mul_assign;
use tfhe::core_crypto::prelude::*;

/// Ciphertexts keyswitched together: enough to amortize a key block over, few enough that
/// their outputs (16 x 867 words = 111 KB on `default`) stay in a core's cache beside it.
pub(crate) const KS_BLOCK: usize = 16;

/// Ciphertexts per parallel task of a batch of `len`: at most [`KS_BLOCK`], and as many tasks
/// as a multiple of the threads, of equal size, so that no thread is left with one more block
/// than the others at the end of a batch.
pub(crate) fn ks_chunk(len: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks = threads * len.div_ceil(threads * KS_BLOCK).max(1);
    len.div_ceil(tasks).max(1)
}

/// Keyswitches the big-key ciphertexts in `inputs` (concatenated, `big` words each) into
/// `outputs` (concatenated, `small` words each), after adding `body_offset` to each input's
/// body (the PBS's half-box offset; 0 for a plain keyswitch). Native modulus only, which every
/// veilmoe preset uses.
pub(crate) fn keyswitch_block(
    ksk: &LweKeyswitchKeyOwned<u64>,
    inputs: &[u64],
    big: usize,
    outputs: &mut [u64],
    small: usize,
    body_offset: u64,
) {
    debug_assert_eq!(inputs.len() / big, outputs.len() / small);
    debug_assert_eq!(ksk.input_key_lwe_dimension().0 + 1, big);
    debug_assert_eq!(ksk.output_key_lwe_dimension().0 + 1, small);
    for (o, i) in outputs
        .chunks_exact_mut(small)
        .zip(inputs.chunks_exact(big))
    {
        o.fill(0);
        o[small - 1] = i[big - 1].wrapping_add(body_offset);
    }
    let decomposer = SignedDecomposer::<u64>::new(
        ksk.decomposition_base_log(),
        ksk.decomposition_level_count(),
    );
    for (coef, key_block) in ksk.iter().enumerate() {
        for (o, i) in outputs
            .chunks_exact_mut(small)
            .zip(inputs.chunks_exact(big))
        {
            for (level_key, term) in key_block.iter().zip(decomposer.decompose(i[coef])) {
                slice_wrapping_sub_scalar_mul_assign(o, level_key.as_ref(), term.value());
            }
        }
    }
}

/// Private functional packing keyswitches of the big-key LWEs in `inputs` (concatenated, `big`
/// words each) with one function key, into the GLWEs of `outputs` (concatenated, `glwe` words
/// each), as tfhe's `private_functional_keyswitch_lwe_ciphertext_into_glwe_ciphertext` does one
/// at a time.
pub(crate) fn pfks_block<C: Container<Element = u64>>(
    key: &LwePrivateFunctionalPackingKeyswitchKey<C>,
    inputs: &[u64],
    big: usize,
    outputs: &mut [u64],
    glwe: usize,
) {
    debug_assert_eq!(inputs.len() / big, outputs.len() / glwe);
    debug_assert_eq!(key.input_key_lwe_dimension().0 + 1, big);
    outputs.fill(0);
    let decomposer = SignedDecomposer::<u64>::new(
        key.decomposition_base_log(),
        key.decomposition_level_count(),
    );
    for (coef, key_block) in key.iter().enumerate() {
        for (o, i) in outputs.chunks_exact_mut(glwe).zip(inputs.chunks_exact(big)) {
            let rounded = decomposer.closest_representable(i[coef]);
            for (level_key, term) in key_block.iter().zip(decomposer.decompose(rounded)) {
                slice_wrapping_sub_scalar_mul_assign(o, level_key.as_ref(), term.value());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ClientKey;
    use crate::preset::Preset;

    fn random_words(state: &mut u64, count: usize) -> Vec<u64> {
        (0..count)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                *state
            })
            .collect()
    }

    /// The blocked keyswitch equals tfhe's ciphertext by ciphertext, word for word, with and
    /// without a body offset, on a full block and a partial one.
    #[test]
    fn blocked_keyswitch_is_bit_identical_to_tfhe() {
        let preset = Preset::load("test", true).unwrap();
        let client = ClientKey::generate(&preset);
        let server = client.server_key();
        let ksk = server.keyswitch_key();
        let big = ksk.input_key_lwe_dimension().to_lwe_size().0;
        let small = ksk.output_key_lwe_dimension().to_lwe_size().0;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for count in [1, 5, KS_BLOCK] {
            let inputs = random_words(&mut state, count * big);
            for offset in [0u64, 1 << 58] {
                let mut blocked = vec![0u64; count * small];
                keyswitch_block(ksk, &inputs, big, &mut blocked, small, offset);
                for (c, input) in inputs.chunks_exact(big).enumerate() {
                    let mut shifted = input.to_vec();
                    shifted[big - 1] = shifted[big - 1].wrapping_add(offset);
                    let input =
                        LweCiphertext::from_container(shifted, CiphertextModulus::new_native());
                    let mut expected =
                        LweCiphertext::new(0u64, LweSize(small), CiphertextModulus::new_native());
                    keyswitch_lwe_ciphertext(ksk, &input, &mut expected);
                    assert_eq!(
                        &blocked[c * small..(c + 1) * small],
                        expected.as_ref(),
                        "ciphertext {c} of {count}, offset {offset}"
                    );
                }
            }
        }
    }

    /// The blocked private functional packing keyswitch equals tfhe's, GLWE for GLWE, for each
    /// of the circuit-bootstrapping function keys.
    #[test]
    fn blocked_pfks_is_bit_identical_to_tfhe() {
        let preset = Preset::load("test", true).unwrap();
        let client = ClientKey::generate(&preset);
        let server = client.server_key();
        let big = preset.big_lwe_dimension().to_lwe_size().0;
        let glwe_size = preset.glwe_dimension().to_glwe_size();
        let poly = preset.polynomial_size();
        let glwe = glwe_size.0 * poly.0;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let count = 7;
        let inputs = random_words(&mut state, count * big);
        for key in server.cbs_pfpksk.iter() {
            let mut blocked = vec![1u64; count * glwe];
            pfks_block(&key, &inputs, big, &mut blocked, glwe);
            for (c, input) in inputs.chunks_exact(big).enumerate() {
                let input = LweCiphertext::from_container(input, CiphertextModulus::new_native());
                let mut expected =
                    GlweCiphertext::new(0u64, glwe_size, poly, CiphertextModulus::new_native());
                private_functional_keyswitch_lwe_ciphertext_into_glwe_ciphertext(
                    &key,
                    &mut expected,
                    &input,
                );
                assert_eq!(&blocked[c * glwe..(c + 1) * glwe], expected.as_ref(), "{c}");
            }
        }
    }
}
