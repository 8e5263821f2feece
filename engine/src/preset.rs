//! Parameter presets: one TOML file each in `params/`, embedded in the binary and validated here.
//!
//! A preset fixes every cryptographic parameter of a key set (LWE/GLWE dimensions, noise,
//! decompositions of the bootstrapping, keyswitching, packing and circuit-bootstrapping keys), the
//! message precision, and the security claim with its provenance. Its [`PresetFingerprint`] is a
//! hash of the cryptographic parameters only, so that keys and ciphertexts remember which
//! parameters made them and are refused elsewhere.

use crate::error::{EngineError, Result};
use crate::security::{KeySecurity, SecretKeyKind, SecurityEstimate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use tfhe::core_crypto::prelude::*;

/// The presets shipped with veilmoe, embedded at build time.
pub const EMBEDDED_PRESETS: [(&str, &str); 4] = [
    ("default", include_str!("../params/default.toml")),
    ("fine", include_str!("../params/fine.toml")),
    ("precise", include_str!("../params/precise.toml")),
    ("test", include_str!("../params/test.toml")),
];

/// A noise distribution of secret-key encryptions, as in tfhe's `DynamicDistribution`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NoiseSpec {
    /// Centered Gaussian with this standard deviation, relative to the torus [0, 1).
    GaussianStd(f64),
    /// Uniform on [-2^b, 2^b] integers on the 2^64 torus (tfhe's TUniform), given b.
    TuniformBoundLog2(u32),
}

impl NoiseSpec {
    /// The tfhe distribution.
    pub fn distribution(&self) -> DynamicDistribution<u64> {
        match *self {
            NoiseSpec::GaussianStd(s) => {
                DynamicDistribution::new_gaussian_from_std_dev(StandardDev(s))
            }
            NoiseSpec::TuniformBoundLog2(b) => DynamicDistribution::new_t_uniform(b),
        }
    }

    /// Variance relative to the unit torus (so a value of `v` on the 2^64 torus has variance
    /// `variance() * 2^128`).
    pub fn variance(&self) -> f64 {
        match *self {
            NoiseSpec::GaussianStd(s) => s * s,
            NoiseSpec::TuniformBoundLog2(b) => {
                // Var of uniform integers on [-B, B] is ((2B+1)^2 - 1) / 12.
                let bound = 2f64.powi(b as i32);
                (((2.0 * bound + 1.0).powi(2)) - 1.0) / 12.0 / 2f64.powi(128)
            }
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match *self {
            NoiseSpec::GaussianStd(s) if !(s > 0.0 && s < 0.5 && s.is_finite()) => {
                Err(format!("gaussian_std must be in (0, 0.5), got {s}"))
            }
            NoiseSpec::TuniformBoundLog2(b) if b == 0 || b >= 62 => {
                Err(format!("tuniform_bound_log2 must be in 1..62, got {b}"))
            }
            _ => Ok(()),
        }
    }
}

/// LWE (small key) section.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LweSection {
    pub dimension: usize,
    pub noise: NoiseSpec,
}

/// GLWE (big key) section.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlweSection {
    pub dimension: usize,
    pub polynomial_size: usize,
    pub noise: NoiseSpec,
}

/// A gadget decomposition (base 2^base_log, `level` levels).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecompSection {
    pub base_log: usize,
    pub level: usize,
}

impl DecompSection {
    pub fn base_log(&self) -> DecompositionBaseLog {
        DecompositionBaseLog(self.base_log)
    }
    pub fn level(&self) -> DecompositionLevelCount {
        DecompositionLevelCount(self.level)
    }
}

/// Circuit bootstrapping: the GGSW output decomposition and the private functional packing keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBootstrapSection {
    /// GGSW output decomposition.
    pub base_log: usize,
    pub level: usize,
    /// Private functional packing keyswitch decomposition.
    pub pfks_base_log: usize,
    pub pfks_level: usize,
    /// Decomposition of the dedicated bootstrapping key of circuit bootstrapping: the GGSW's
    /// lowest level sits at 2^-(base_log * level), far below what the main (1-level) PBS key's
    /// rounding noise allows, so circuit bootstrapping uses a more precise key on the same secrets.
    pub pbs_base_log: usize,
    pub pbs_level: usize,
}

impl CircuitBootstrapSection {
    pub fn ggsw(&self) -> DecompSection {
        DecompSection {
            base_log: self.base_log,
            level: self.level,
        }
    }
    pub fn pfks(&self) -> DecompSection {
        DecompSection {
            base_log: self.pfks_base_log,
            level: self.pfks_level,
        }
    }
    pub fn pbs(&self) -> DecompSection {
        DecompSection {
            base_log: self.pbs_base_log,
            level: self.pbs_level,
        }
    }
}

/// A validated parameter preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    pub description: String,
    /// Test-only parameters; refused without an explicit opt-in.
    pub insecure: bool,
    /// Claimed security level in bits (0 for insecure presets). Checked on load against
    /// [`Preset::estimated_security`] unless the preset is insecure.
    pub security_bits: u32,
    /// Where the security claim comes from.
    pub provenance: String,
    /// log2 of the per-PBS failure probability at the noise budget (`max_norm2`).
    pub log2_p_fail: f64,
    /// Message bits read by one PBS, not counting the padding bit.
    pub message_bits: u32,
    /// The largest 2-norm of a dot product over PBS outputs that the failure probability covers.
    pub max_norm2: f64,
    pub lwe: LweSection,
    pub glwe: GlweSection,
    pub pbs: DecompSection,
    pub keyswitch: DecompSection,
    pub packing_keyswitch: DecompSection,
    pub circuit_bootstrap: CircuitBootstrapSection,
}

pub use veilmoe_format::PresetFingerprint;

impl Preset {
    /// Loads an embedded preset by name, or a preset file by path.
    ///
    /// Insecure presets are refused unless `allow_insecure` is set.
    pub fn load(name_or_path: &str, allow_insecure: bool) -> Result<Preset> {
        let text = match EMBEDDED_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => t.to_string(),
            None => {
                let path = std::path::Path::new(name_or_path);
                if !path.exists() {
                    return Err(EngineError::UnknownPreset(name_or_path.to_string()));
                }
                std::fs::read_to_string(path).map_err(|source| EngineError::Io {
                    path: name_or_path.to_string(),
                    source,
                })?
            }
        };
        let preset = Preset::from_toml(name_or_path, &text)?;
        if preset.insecure && !allow_insecure {
            return Err(EngineError::InsecurePreset(preset.name));
        }
        Ok(preset)
    }

    /// Parses and validates a preset from TOML text. `origin` names it in errors.
    pub fn from_toml(origin: &str, text: &str) -> Result<Preset> {
        let preset: Preset = toml::from_str(text).map_err(|e| EngineError::InvalidPreset {
            name: origin.to_string(),
            reason: e.message().replace('\n', " "),
        })?;
        preset
            .validate()
            .map_err(|reason| EngineError::InvalidPreset {
                name: origin.to_string(),
                reason,
            })?;
        Ok(preset)
    }

    /// Re-checks a preset that arrived inside a file (a key file carries its preset): the same
    /// validation and security estimate as a preset TOML, so a key file cannot claim 128-bit
    /// security over weak parameters.
    pub fn revalidate(&self, origin: &str) -> Result<()> {
        self.validate()
            .map_err(|reason| EngineError::InvalidPreset {
                name: format!("{} (in {origin})", self.name),
                reason,
            })
    }

    /// Checks internal consistency and the security rules.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        let n = self.glwe.polynomial_size;
        if !n.is_power_of_two() || !(256..=65536).contains(&n) {
            return Err(format!(
                "glwe.polynomial_size must be a power of two in 256..=65536, got {n}"
            ));
        }
        if self.glwe.dimension == 0 || self.glwe.dimension > 8 {
            return Err(format!(
                "glwe.dimension must be in 1..=8, got {}",
                self.glwe.dimension
            ));
        }
        if self.lwe.dimension < 16 || self.lwe.dimension > 8192 {
            return Err(format!(
                "lwe.dimension must be in 16..=8192, got {}",
                self.lwe.dimension
            ));
        }
        if self.message_bits == 0 || (1usize << (self.message_bits + 1)) > n {
            return Err(format!(
                "message_bits must be >= 1 with 2^(message_bits + 1) <= polynomial_size, got {}",
                self.message_bits
            ));
        }
        self.lwe
            .noise
            .validate()
            .map_err(|e| format!("lwe.noise: {e}"))?;
        self.glwe
            .noise
            .validate()
            .map_err(|e| format!("glwe.noise: {e}"))?;
        for (what, d) in [
            ("pbs", self.pbs),
            ("keyswitch", self.keyswitch),
            ("packing_keyswitch", self.packing_keyswitch),
            ("circuit_bootstrap", self.circuit_bootstrap.ggsw()),
            ("circuit_bootstrap.pfks", self.circuit_bootstrap.pfks()),
            ("circuit_bootstrap.pbs", self.circuit_bootstrap.pbs()),
        ] {
            if d.base_log == 0 || d.level == 0 || d.base_log * d.level > 64 {
                return Err(format!(
                    "{what}: need base_log >= 1, level >= 1 and base_log * level <= 64, got {} x {}",
                    d.base_log, d.level
                ));
            }
        }
        if !(self.max_norm2 >= 1.0 && self.max_norm2.is_finite()) {
            return Err(format!("max_norm2 must be >= 1, got {}", self.max_norm2));
        }
        if self.log2_p_fail.is_nan() || self.log2_p_fail >= 0.0 {
            return Err(format!(
                "log2_p_fail must be negative, got {}",
                self.log2_p_fail
            ));
        }
        if !self.insecure {
            if self.security_bits < 128 {
                return Err(format!(
                    "security_bits = {} < 128 on a preset not marked insecure",
                    self.security_bits
                ));
            }
            if self.log2_p_fail > -64.0 {
                return Err(format!(
                    "log2_p_fail = {} > -64 on a preset not marked insecure",
                    self.log2_p_fail
                ));
            }
            // The claim is checked, not trusted: a custom preset can say 128 bits over any noise.
            // Each key must meet the fitted curve of the highest fitted level at or below the
            // claim (the curves certify only 80/112/128/192 bits; the claim is >= 128 here).
            if let Some(reason) = self
                .key_security()
                .iter()
                .find_map(|k| k.shortfall(self.security_bits))
            {
                return Err(reason);
            }
        }
        Ok(())
    }

    /// The estimated security of each secret key, LWE then GLWE (the GLWE key as an LWE key of
    /// dimension k·N), from Concrete's lattice-estimator-fitted curves; see [`crate::security`].
    pub fn key_security(&self) -> [KeySecurity; 2] {
        [
            KeySecurity::new(SecretKeyKind::Lwe, self.lwe.dimension, &self.lwe.noise),
            KeySecurity::new(
                SecretKeyKind::Glwe,
                self.glwe.dimension * self.glwe.polynomial_size,
                &self.glwe.noise,
            ),
        ]
    }

    /// The estimated security of the key set: that of its weaker key. Only
    /// [`SecurityEstimate::certified_bits`] is backed by the fit; a preset not marked insecure
    /// has it at least at the fitted level of its claim (checked when it is loaded).
    pub fn estimated_security(&self) -> SecurityEstimate {
        let [lwe, glwe] = self.key_security();
        lwe.estimate.weakest(glwe.estimate)
    }

    /// Hash of the cryptographic parameters.
    pub fn fingerprint(&self) -> PresetFingerprint {
        let canonical = format!(
            "veilmoe-preset-v1|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}",
            self.lwe,
            self.glwe,
            self.pbs,
            self.keyswitch,
            self.packing_keyswitch,
            self.circuit_bootstrap,
            self.insecure,
            self.message_bits,
            self.max_norm2
        );
        let digest = Sha256::digest(canonical.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        PresetFingerprint(out)
    }

    pub fn lwe_dimension(&self) -> LweDimension {
        LweDimension(self.lwe.dimension)
    }
    pub fn glwe_dimension(&self) -> GlweDimension {
        GlweDimension(self.glwe.dimension)
    }
    pub fn polynomial_size(&self) -> PolynomialSize {
        PolynomialSize(self.glwe.polynomial_size)
    }
    /// Dimension of LWE ciphertexts under the big key (GLWE key flattened): k * N.
    pub fn big_lwe_dimension(&self) -> LweDimension {
        LweDimension(self.glwe.dimension * self.glwe.polynomial_size)
    }
    /// log2 of the number of distinct boxes a PBS reads: message bits plus the padding bit.
    pub fn pbs_read_bits(&self) -> u32 {
        self.message_bits + 1
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} bits, n={}, k={}, N={}, {})",
            self.name,
            self.message_bits,
            self.lwe.dimension,
            self.glwe.dimension,
            self.glwe.polynomial_size,
            if self.insecure {
                "INSECURE".to_string()
            } else {
                format!("{}-bit security", self.security_bits)
            }
        )
    }
}
