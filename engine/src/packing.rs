//! LWE -> GLWE packing keyswitch: gathers up to N LWE ciphertexts (big key) into the coefficients
//! of one GLWE, so that values coming out of PBS can go back into packed products. It costs about
//! a PBS per value on our machines, so protocols count it and avoid it where a layout allows.

use crate::accounting::OpKind;
use crate::ciphertext::{LweVector, PackedGlwe};
use crate::error::Result;
use crate::evaluator::Evaluator;
use crate::noise;
use tfhe::core_crypto::prelude::*;

impl<'k> Evaluator<'k> {
    /// Packs `x` (big key) N values per GLWE, value `i` to coefficient `i % N` of GLWE `i / N`.
    pub fn pack(&self, x: &LweVector) -> Result<PackedGlwe> {
        self.check_big_input(x, "packing keyswitch")?;
        let p = self.preset();
        let n = p.glwe.polynomial_size;
        let glwes = x.len().div_ceil(n).max(1);
        let mut list = GlweCiphertextList::new(
            0u64,
            p.glwe_dimension().to_glwe_size(),
            p.polynomial_size(),
            GlweCiphertextCount(glwes),
            CiphertextModulus::new_native(),
        );
        let lwe_size = x.as_list().lwe_size();
        for (g, mut glwe) in list.iter_mut().enumerate() {
            let end = ((g + 1) * n).min(x.len());
            let chunk = &x.as_list().as_ref()[g * n * lwe_size.0..end * lwe_size.0];
            let input =
                LweCiphertextList::from_container(chunk, lwe_size, CiphertextModulus::new_native());
            par_keyswitch_lwe_ciphertext_list_and_pack_in_glwe_ciphertext(
                &self.key().pksk,
                &input,
                &mut glwe,
            );
        }
        self.ops.record(
            OpKind::PackingKeyswitch,
            x.len() as u64,
            lwe_size.to_lwe_dimension().0 as u64,
        );
        Ok(PackedGlwe {
            key_set: x.key_set(),
            encoding: x.encoding(),
            range: x.range(),
            variance: x.variance() + noise::packing_keyswitch_variance(p),
            len: x.len(),
            list,
        })
    }
}
