//! Encrypted tensors: vectors of LWE ciphertexts and GLWE-packed vectors.
//!
//! Every tensor carries its key-set id (operations refuse to mix key sets), its [`Encoding`], and
//! an upper bound on its noise variance (unit torus), which leveled operations update from their
//! weights' 2-norm so that a PBS can check the preset's failure-probability budget.

use crate::encoding::{Encoding, ValueRange};
use crate::error::{EngineError, Result};
use crate::format::KeySetId;
use crate::preset::Preset;
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

/// Which secret key an LWE ciphertext is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LweKeyKind {
    /// The big key (k * N): PBS outputs and extracted coefficients.
    Big,
    /// The small key (n): keyswitch outputs, PBS inputs.
    Small,
}

/// A vector of LWE ciphertexts, one value each.
#[derive(Clone, Serialize, Deserialize)]
pub struct LweVector {
    pub(crate) key_set: KeySetId,
    pub(crate) key: LweKeyKind,
    pub(crate) encoding: Encoding,
    pub(crate) range: ValueRange,
    pub(crate) variance: f64,
    pub(crate) list: LweCiphertextListOwned<u64>,
}

impl std::fmt::Debug for LweVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LweVector {{ len: {}, dim: {}, {:?}, {:?}, var: {:.2e} }}",
            self.len(),
            self.list.lwe_size().to_lwe_dimension().0,
            self.key,
            self.encoding,
            self.variance
        )
    }
}

impl LweVector {
    pub(crate) fn new(
        key_set: KeySetId,
        key: LweKeyKind,
        encoding: Encoding,
        range: ValueRange,
        variance: f64,
        list: LweCiphertextListOwned<u64>,
    ) -> LweVector {
        LweVector {
            key_set,
            key,
            encoding,
            range,
            variance,
            list,
        }
    }

    /// The declared range of the values.
    pub fn range(&self) -> ValueRange {
        self.range
    }

    /// Declares a narrower value range (public architecture knowledge, e.g. "pixels are 0..=15").
    pub fn with_range(mut self, range: ValueRange) -> Result<LweVector> {
        if !range.fits(self.encoding) {
            return Err(EngineError::range(
                "value range",
                format!("{range:?} does not fit {:?}", self.encoding),
            ));
        }
        self.range = range;
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.list.lwe_ciphertext_count().0
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn key_set(&self) -> KeySetId {
        self.key_set
    }
    pub fn key_kind(&self) -> LweKeyKind {
        self.key
    }
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }
    /// Upper bound on the noise variance (unit torus).
    pub fn variance(&self) -> f64 {
        self.variance
    }
    pub fn lwe_dimension(&self) -> LweDimension {
        self.list.lwe_size().to_lwe_dimension()
    }
    pub fn as_list(&self) -> &LweCiphertextListOwned<u64> {
        &self.list
    }

    /// Reinterprets the values under another encoding of the same delta scale. Used after leveled
    /// arithmetic changed the value range (for example a weighted sum needs a wider signed range).
    pub fn with_encoding(mut self, encoding: Encoding) -> Result<LweVector> {
        encoding.validate()?;
        if encoding.width != self.encoding.width {
            return Err(EngineError::shape(
                "re-encoding",
                format!("width {}", self.encoding.width),
                format!("width {}", encoding.width),
            ));
        }
        if !self.range.fits(encoding) {
            return Err(EngineError::range(
                "re-encoding",
                format!("{:?} does not fit {encoding:?}", self.range),
            ));
        }
        self.encoding = encoding;
        Ok(self)
    }

    /// Reinterprets wide values in a narrower encoding of the same signedness, with no
    /// operation: the torus phase is unchanged, so a value `v` of width `w` stands for
    /// `v / 2^(w - w')` in the narrower one. Its fraction is what the next PBS read rounds
    /// (floor or ceil near a box edge, exactly as a requantizing read of `v` would), so the
    /// result is meant only for a PBS input, alone or added to values of the narrower
    /// encoding: a gated FFN's linear factor read inside the quarter squares of its product
    /// instead of by a read of its own. The declared range becomes
    /// `[floor(lo / 2^k), ceil(hi / 2^k)]`, which holds every rounding of every value.
    pub fn rescaled_down(mut self, encoding: Encoding) -> Result<LweVector> {
        encoding.validate()?;
        if encoding.signed != self.encoding.signed || encoding.width > self.encoding.width {
            return Err(EngineError::shape(
                "rescaling down",
                format!("an encoding no wider than {:?}", self.encoding),
                format!("{encoding:?}"),
            ));
        }
        let k = self.encoding.width - encoding.width;
        let range = ValueRange {
            min: self.range.min.div_euclid(1i64 << k),
            max: -(-self.range.max).div_euclid(1i64 << k),
        };
        if !range.fits(encoding) {
            return Err(EngineError::range(
                "rescaling down",
                format!("{range:?} does not fit {encoding:?}"),
            ));
        }
        self.encoding = encoding;
        self.range = range;
        Ok(self)
    }

    /// A sub-vector of values `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<LweVector> {
        if range.end > self.len() || range.start > range.end {
            return Err(EngineError::shape(
                "LWE slice",
                format!("range within 0..{}", self.len()),
                format!("{range:?}"),
            ));
        }
        let size = self.list.lwe_size().0;
        let data = self.list.as_ref()[range.start * size..range.end * size].to_vec();
        Ok(LweVector {
            list: LweCiphertextList::from_container(
                data,
                self.list.lwe_size(),
                self.list.ciphertext_modulus(),
            ),
            ..self.clone_meta()
        })
    }

    /// Concatenates vectors of the same key set, key kind and encoding.
    pub fn concat(parts: &[&LweVector]) -> Result<LweVector> {
        let first = parts
            .first()
            .ok_or_else(|| EngineError::shape("LWE concat", "at least one part", "none"))?;
        let mut data = Vec::new();
        let mut variance: f64 = 0.0;
        let mut range = first.range;
        for p in parts {
            first.check_compatible(p, "LWE concat")?;
            data.extend_from_slice(p.list.as_ref());
            variance = variance.max(p.variance);
            range = range.union(&p.range);
        }
        Ok(LweVector {
            variance,
            range,
            list: LweCiphertextList::from_container(
                data,
                first.list.lwe_size(),
                first.list.ciphertext_modulus(),
            ),
            ..first.clone_meta()
        })
    }

    /// Checks that `other` can be combined with `self`.
    pub fn check_compatible(&self, other: &LweVector, context: &'static str) -> Result<()> {
        if self.key_set != other.key_set {
            return Err(EngineError::KeySetMismatch {
                what: "ciphertext",
                expected: self.key_set.to_string(),
                found: other.key_set.to_string(),
            });
        }
        if self.key != other.key || self.lwe_dimension() != other.lwe_dimension() {
            return Err(EngineError::shape(
                context,
                format!("{:?} key", self.key),
                format!("{:?} key", other.key),
            ));
        }
        if self.encoding.width != other.encoding.width {
            return Err(EngineError::shape(
                context,
                format!("width {}", self.encoding.width),
                format!("width {}", other.encoding.width),
            ));
        }
        Ok(())
    }

    fn clone_meta(&self) -> LweVector {
        LweVector {
            key_set: self.key_set,
            key: self.key,
            encoding: self.encoding,
            range: self.range,
            variance: self.variance,
            list: LweCiphertextList::new(
                0,
                self.list.lwe_size(),
                LweCiphertextCount(0),
                self.list.ciphertext_modulus(),
            ),
        }
    }
}

/// Values packed as coefficients of GLWE ciphertexts: value `i` is coefficient `i % N` of GLWE
/// `i / N`. One GLWE carries N values for the price of about two LWE ciphertexts.
#[derive(Clone, Serialize, Deserialize)]
pub struct PackedGlwe {
    pub(crate) key_set: KeySetId,
    pub(crate) encoding: Encoding,
    pub(crate) range: ValueRange,
    pub(crate) variance: f64,
    pub(crate) len: usize,
    pub(crate) list: GlweCiphertextListOwned<u64>,
}

impl std::fmt::Debug for PackedGlwe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedGlwe {{ len: {}, glwes: {}, {:?}, var: {:.2e} }}",
            self.len,
            self.glwe_count(),
            self.encoding,
            self.variance
        )
    }
}

impl PackedGlwe {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn glwe_count(&self) -> usize {
        self.list.glwe_ciphertext_count().0
    }
    pub fn key_set(&self) -> KeySetId {
        self.key_set
    }
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }
    pub fn variance(&self) -> f64 {
        self.variance
    }
    pub fn as_list(&self) -> &GlweCiphertextListOwned<u64> {
        &self.list
    }
    /// The declared range of the values.
    pub fn range(&self) -> ValueRange {
        self.range
    }
    /// Declares a narrower value range (public architecture knowledge).
    pub fn with_range(mut self, range: ValueRange) -> Result<PackedGlwe> {
        if !range.fits(self.encoding) {
            return Err(EngineError::range(
                "value range",
                format!("{range:?} does not fit {:?}", self.encoding),
            ));
        }
        self.range = range;
        Ok(self)
    }

    /// Checks that `other` has the same key set and shape.
    pub fn check_compatible(&self, other: &PackedGlwe, context: &'static str) -> Result<()> {
        if self.key_set != other.key_set {
            return Err(EngineError::KeySetMismatch {
                what: "ciphertext",
                expected: self.key_set.to_string(),
                found: other.key_set.to_string(),
            });
        }
        if self.len != other.len || self.glwe_count() != other.glwe_count() {
            return Err(EngineError::shape(
                context,
                format!("{} values", self.len),
                format!("{} values", other.len),
            ));
        }
        Ok(())
    }
}

/// A packed GLWE vector in seeded form: masks replaced by a CSPRNG seed, about half the bytes.
/// This is what a client uploads; the server expands it with [`SeededPackedGlwe::decompress`].
#[derive(Clone, Serialize, Deserialize)]
pub struct SeededPackedGlwe {
    pub(crate) key_set: KeySetId,
    pub(crate) encoding: Encoding,
    pub(crate) range: ValueRange,
    pub(crate) variance: f64,
    pub(crate) len: usize,
    pub(crate) list: SeededGlweCiphertextListOwned<u64>,
}

impl SeededPackedGlwe {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn key_set(&self) -> KeySetId {
        self.key_set
    }
    /// Expands the masks from the seed.
    pub fn decompress(&self) -> PackedGlwe {
        PackedGlwe {
            key_set: self.key_set,
            encoding: self.encoding,
            range: self.range,
            variance: self.variance,
            len: self.len,
            list: self.list.clone().decompress_into_glwe_ciphertext_list(),
        }
    }
}

/// Checks the metadata every received ciphertext carries: a valid encoding, a value range
/// inside it, and a finite, non-negative noise variance.
fn check_metadata(
    what: &'static str,
    encoding: Encoding,
    range: ValueRange,
    variance: f64,
) -> Result<()> {
    encoding.validate()?;
    if range.min > range.max || !range.fits(encoding) {
        return Err(EngineError::Format {
            what,
            reason: format!("value range {range:?} does not fit {encoding:?}"),
        });
    }
    if !(variance.is_finite() && variance >= 0.0) {
        return Err(EngineError::Format {
            what,
            reason: format!("noise variance {variance} is not a finite non-negative number"),
        });
    }
    Ok(())
}

/// Whether a seeded entity's compression seed is what veilmoe's seeders make: an AES-CTR key
/// with the counter at its first index. A crafted seed (another counter position, another seed
/// kind) makes tfhe's generator index out of its buffer while expanding.
pub(crate) fn is_plain_seed(
    seed: &tfhe::core_crypto::commons::math::random::CompressionSeed,
) -> bool {
    use tfhe_csprng::generators::aes_ctr::TableIndex;
    use tfhe_csprng::seeders::SeedKind;
    matches!(seed.inner.seed, SeedKind::Ctr(_)) && seed.inner.first_index == TableIndex::FIRST
}

fn malformed(what: &'static str, reason: String) -> EngineError {
    EngineError::Format { what, reason }
}

impl LweVector {
    /// Checks a received vector against `preset` before any use: every dimension (checked
    /// before anything divides by it), the data length, the modulus and the metadata. A vector
    /// decoded from a file is used only after this.
    pub fn validate(&self, preset: &Preset) -> Result<()> {
        let what = "LWE ciphertext vector";
        let dim = match self.key {
            LweKeyKind::Big => preset.big_lwe_dimension(),
            LweKeyKind::Small => preset.lwe_dimension(),
        };
        let size = self.list.lwe_size();
        if size != dim.to_lwe_size() {
            return Err(malformed(
                what,
                format!(
                    "LWE size {} where the preset's {:?} key gives {}",
                    size.0,
                    self.key,
                    dim.to_lwe_size().0
                ),
            ));
        }
        if self.list.as_ref().is_empty() || self.list.as_ref().len() % size.0 != 0 {
            return Err(malformed(
                what,
                format!(
                    "{} coefficients do not form whole ciphertexts of size {}",
                    self.list.as_ref().len(),
                    size.0
                ),
            ));
        }
        if !self.list.ciphertext_modulus().is_native_modulus() {
            return Err(malformed(what, "not the native 2^64 modulus".into()));
        }
        check_metadata(what, self.encoding, self.range, self.variance)
    }
}

impl SeededPackedGlwe {
    /// Checks a received seeded vector against `preset` before it is expanded: GLWE size,
    /// polynomial size (before anything divides by it), the number of GLWEs its length needs,
    /// the modulus and the metadata.
    pub fn validate(&self, preset: &Preset) -> Result<()> {
        let what = "seeded packed GLWE ciphertext";
        let n = preset.polynomial_size();
        if self.list.polynomial_size() != n
            || self.list.glwe_size() != preset.glwe_dimension().to_glwe_size()
        {
            return Err(malformed(
                what,
                format!(
                    "GLWE size {} and polynomial size {} where the preset has {} and {}",
                    self.list.glwe_size().0,
                    self.list.polynomial_size().0,
                    preset.glwe_dimension().to_glwe_size().0,
                    n.0
                ),
            ));
        }
        let data = self.list.as_ref().len();
        let glwes = self.len.div_ceil(n.0);
        if self.len == 0 || data % n.0 != 0 || data / n.0 != glwes {
            return Err(malformed(
                what,
                format!(
                    "{} values need {glwes} GLWEs, the data holds {} coefficients",
                    self.len, data
                ),
            ));
        }
        if !self.list.ciphertext_modulus().is_native_modulus() {
            return Err(malformed(what, "not the native 2^64 modulus".into()));
        }
        if !is_plain_seed(&self.list.compression_seed()) {
            return Err(malformed(
                what,
                "its mask seed is not a plain AES-CTR seed".into(),
            ));
        }
        check_metadata(what, self.encoding, self.range, self.variance)
    }

    /// The encoding of the values.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }
}
