//! Estimated security of a preset's secret keys, from Zama Concrete's lattice-estimator-fitted
//! curves, so that a preset's `security_bits` is checked rather than trusted.
//!
//! # Method
//!
//! Zama fitted, for binary secret keys, Gaussian noise and a 64-bit ciphertext modulus, one line
//! per security level λ to the output of the lattice estimator (Albrecht et al.): an LWE key of
//! dimension `n >= minimal_lwe_dimension` is λ-bit secure when its noise's standard deviation
//! `sigma`, relative to the torus (that is, normalized by q = 2^64), satisfies
//!
//! ```text
//! log2(sigma) >= max(slope_λ * n + bias_λ, 2 - 64)
//! ```
//!
//! The floor `2 - 64` keeps the noise over the two lowest bits of the 64-bit integers, below
//! which the noise would be rounded away. Below `minimal_lwe_dimension` the fit does not apply
//! and certifies nothing. The coefficients are those of
//! `concrete-security-curves-rust/src/curves.gen.rs` in github.com/zama-ai/concrete (the same
//! curves Concrete's optimizer uses to pick parameters), restated in [`CURVES`].
//!
//! A GLWE key of dimension k and polynomial size N is estimated as an LWE key of dimension
//! k·N, as Concrete and tfhe-rs do. A key set is as strong as its weakest key.
//!
//! # What is backed and what is not
//!
//! Only the levels 80, 112, 128 and 192 are fitted: [`SecurityEstimate::certified_bits`] (the
//! highest fitted level whose curve a key meets) is what the fit supports.
//! [`SecurityEstimate::approx_bits`] interpolates linearly in log2(sigma) between that curve and
//! the next one up; it is a reading aid ("about 140 bits"), not a security claim.
//!
//! # Noise distributions
//!
//! The curves are for Gaussian noise. A TUniform noise ([`NoiseSpec::TuniformBoundLog2`]) has the
//! same standard deviation as some Gaussian, but tfhe-rs 1.8.2's own 132-bit formulas
//! (`core_crypto/commons/noise_formulas/secure_noise.rs`) ask TUniform keys for about 0.65 more
//! bits of log2(sigma) than Gaussian ones at the same n: applying the Gaussian curves to a
//! TUniform's standard deviation would overstate its security by several bits. So a key with
//! TUniform noise gets no estimate here (certified 0), with that reason, rather than a
//! flattering one.

use crate::preset::NoiseSpec;
use serde::Serialize;
use std::fmt;

/// log2 of the ciphertext modulus the curves were fitted for (tfhe's native `u64` modulus).
pub const MODULUS_LOG2: f64 = 64.0;

/// The smallest secure log2(sigma) at any level: the noise must cover the two lowest bits of the
/// 2^64 modulus (Concrete's `epsilon_log2_std_modular = 2`).
pub const MIN_LOG2_STD: f64 = 2.0 - MODULUS_LOG2;

/// Tolerance, in log2(sigma), under which a noise counts as on a curve: presets copy their
/// standard deviations from tfhe-rs as decimal literals (e.g. 2^-62 written as
/// 2.168404344971009e-19), which round-trip through f64 a few ulps off.
pub const TOLERANCE_LOG2: f64 = 1e-9;

/// One fitted curve: at `security_bits`, the smallest secure log2(sigma) is
/// `slope * n + bias` for `n >= minimal_lwe_dimension`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Curve {
    pub security_bits: u32,
    pub slope: f64,
    pub bias: f64,
    pub minimal_lwe_dimension: usize,
}

/// Concrete's fitted curves (binary secrets, Gaussian noise, q = 2^64), by increasing level.
pub const CURVES: [Curve; 4] = [
    Curve {
        security_bits: 80,
        slope: -0.0404263311936459,
        bias: 1.660978864143658,
        minimal_lwe_dimension: 450,
    },
    Curve {
        security_bits: 112,
        slope: -0.02967013708113588,
        bias: 2.16246371408387,
        minimal_lwe_dimension: 450,
    },
    Curve {
        security_bits: 128,
        slope: -0.026405028765226296,
        bias: 2.482642269104389,
        minimal_lwe_dimension: 450,
    },
    Curve {
        security_bits: 192,
        slope: -0.018610403247590064,
        bias: 3.2996236848399008,
        minimal_lwe_dimension: 606,
    },
];

impl Curve {
    /// The smallest secure log2(sigma) at dimension `n`, floor included; `None` below the
    /// curve's minimal dimension, where the fit says nothing.
    pub fn secure_log2_std(&self, n: usize) -> Option<f64> {
        (n >= self.minimal_lwe_dimension)
            .then(|| (self.slope * n as f64 + self.bias).max(MIN_LOG2_STD))
    }

    /// Whether a key of dimension `n` and noise 2^`log2_std` meets this curve.
    fn is_met(&self, n: usize, log2_std: f64) -> bool {
        self.secure_log2_std(n)
            .is_some_and(|t| log2_std + TOLERANCE_LOG2 >= t)
    }
}

/// The fitted curve of a level, if that level is one of 80, 112, 128, 192.
pub fn curve(level_bits: u32) -> Option<&'static Curve> {
    CURVES.iter().find(|c| c.security_bits == level_bits)
}

/// The smallest secure log2(sigma) (sigma relative to the torus) for `level_bits` of security at
/// LWE dimension `n`; `None` when the level is not fitted or `n` is below its minimal dimension.
///
/// ```
/// use veilmoe_engine::security::secure_log2_std;
/// let t = secure_log2_std(128, 600).unwrap();
/// assert!((t - -13.36).abs() < 0.01);
/// assert!(secure_log2_std(192, 600).is_none()); // the 192-bit fit starts at n = 606
/// ```
pub fn secure_log2_std(level_bits: u32, n: usize) -> Option<f64> {
    curve(level_bits)?.secure_log2_std(n)
}

/// The highest fitted level at or below `claimed_bits` (0 below 80): a claim between two fitted
/// levels can only be checked against the lower one.
pub fn fitted_level_at_most(claimed_bits: u32) -> u32 {
    CURVES
        .iter()
        .rev()
        .map(|c| c.security_bits)
        .find(|&l| l <= claimed_bits)
        .unwrap_or(0)
}

/// The security of one key (or the weakest of several) according to the fitted curves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SecurityEstimate {
    /// The highest fitted level (0, 80, 112, 128 or 192) whose curve is met: backed by the fit.
    pub certified_bits: u32,
    /// Linear interpolation in log2(sigma) between the met curve and the next one up: a reading
    /// aid only. 0 below the 80-bit curve (the fit says nothing there), `certified_bits` when
    /// there is no next curve at this dimension (192, or 128 for n < 606).
    pub approx_bits: f64,
}

impl SecurityEstimate {
    /// Nothing certified.
    pub const NONE: SecurityEstimate = SecurityEstimate {
        certified_bits: 0,
        approx_bits: 0.0,
    };

    /// The weaker of two estimates (field by field; each has `approx_bits >= certified_bits`,
    /// and so does the result).
    pub fn weakest(self, other: SecurityEstimate) -> SecurityEstimate {
        SecurityEstimate {
            certified_bits: self.certified_bits.min(other.certified_bits),
            approx_bits: self.approx_bits.min(other.approx_bits),
        }
    }
}

impl fmt::Display for SecurityEstimate {
    /// `< 80 bits`, `>= 192 bits`, or `>= 128 bits (about 140)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.certified_bits {
            0 => write!(f, "< 80 bits"),
            c if self.approx_bits - c as f64 >= 0.5 => {
                write!(f, ">= {c} bits (about {:.0})", self.approx_bits)
            }
            c => write!(f, ">= {c} bits"),
        }
    }
}

/// Estimates an LWE key of dimension `n` (binary secret) with Gaussian noise of standard deviation
/// `std` relative to the torus. A non-positive or non-finite `std` certifies nothing.
///
/// ```
/// use veilmoe_engine::security::estimate;
/// // tfhe-rs's 2M128 set: n = 866, std 2.046e-6
/// let e = estimate(866, 2.046151696979124e-06);
/// assert_eq!(e.certified_bits, 128);
/// assert!(e.approx_bits > 128.0 && e.approx_bits < 192.0);
/// ```
pub fn estimate(n: usize, std: f64) -> SecurityEstimate {
    if !(std > 0.0 && std.is_finite()) {
        return SecurityEstimate::NONE;
    }
    estimate_log2(n, std.log2())
}

/// [`estimate`] from log2(std).
pub fn estimate_log2(n: usize, log2_std: f64) -> SecurityEstimate {
    if log2_std.is_nan() {
        return SecurityEstimate::NONE;
    }
    // Levels increase with the curves' thresholds; certify the highest level such that it and
    // every level below it are met (conservative should a fit ever cross a lower one).
    let met = CURVES.iter().take_while(|c| c.is_met(n, log2_std)).count();
    if met == 0 {
        return SecurityEstimate::NONE;
    }
    let lower = &CURVES[met - 1];
    let certified_bits = lower.security_bits;
    let approx_bits = match (CURVES.get(met), lower.secure_log2_std(n)) {
        (Some(upper), Some(t_lo)) => match upper.secure_log2_std(n) {
            Some(t_hi) if t_hi > t_lo => {
                let frac = ((log2_std - t_lo) / (t_hi - t_lo)).clamp(0.0, 1.0);
                certified_bits as f64 + frac * (upper.security_bits - certified_bits) as f64
            }
            _ => certified_bits as f64,
        },
        _ => certified_bits as f64,
    };
    SecurityEstimate {
        certified_bits,
        approx_bits,
    }
}

/// Which secret key of a key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SecretKeyKind {
    /// The small LWE key (keyswitch output, bootstrapping input).
    #[serde(rename = "LWE")]
    Lwe,
    /// The GLWE key (bootstrapping output, packed ciphertexts).
    #[serde(rename = "GLWE")]
    Glwe,
}

impl fmt::Display for SecretKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretKeyKind::Lwe => "LWE",
            SecretKeyKind::Glwe => "GLWE",
        })
    }
}

/// The estimate of one secret key with the figures it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KeySecurity {
    pub key: SecretKeyKind,
    /// The LWE dimension an attack sees: n for the LWE key, k·N for the GLWE key.
    pub dimension: usize,
    /// log2 of the noise's standard deviation relative to the torus (for TUniform noise, of the
    /// uniform distribution's standard deviation; shown only, not estimated).
    pub log2_std: f64,
    /// Whether the noise is Gaussian, the only kind the fitted curves cover (see the module doc).
    pub gaussian: bool,
    /// [`SecurityEstimate::NONE`] for non-Gaussian noise.
    pub estimate: SecurityEstimate,
}

impl KeySecurity {
    /// Estimates a key of LWE dimension `dimension` whose encryptions use `noise`.
    pub fn new(key: SecretKeyKind, dimension: usize, noise: &NoiseSpec) -> KeySecurity {
        let log2_std = 0.5 * noise.variance().log2();
        let gaussian = matches!(noise, NoiseSpec::GaussianStd(_));
        KeySecurity {
            key,
            dimension,
            log2_std,
            gaussian,
            estimate: if gaussian {
                estimate_log2(dimension, log2_std)
            } else {
                SecurityEstimate::NONE
            },
        }
    }

    /// `None` when this key supports a claim of `claimed_bits` (the highest fitted level at or
    /// below the claim is certified), otherwise a one-line reason naming the key, its dimension
    /// and noise, and what the curve asks for.
    pub fn shortfall(&self, claimed_bits: u32) -> Option<String> {
        let level = fitted_level_at_most(claimed_bits);
        if self.estimate.certified_bits >= level {
            return None;
        }
        let head = format!(
            "claims {claimed_bits}-bit security but the {} key (n = {}, std 2^{:.1})",
            self.key, self.dimension, self.log2_std
        );
        if !self.gaussian {
            return Some(format!(
                "{head} has TUniform noise, which Concrete's fitted curves (Gaussian noise) do not \
                 cover, so its security cannot be estimated; mark it insecure or use Gaussian noise"
            ));
        }
        let met = match self.estimate.certified_bits {
            0 => "meets none of the fitted curves".to_string(),
            c => format!("meets only the {c}-bit fitted curve"),
        };
        Some(match secure_log2_std(level, self.dimension) {
            Some(t) => format!(
                "{head} {met} ({level} bits needs std >= 2^{t:.1} at n = {}); mark it insecure or \
                 raise the noise",
                self.dimension
            ),
            None => format!(
                "{head} {met} (the {level}-bit curve starts at n = {}); mark it insecure or raise \
                 the dimension",
                curve(level).map_or(0, |c| c.minimal_lwe_dimension)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::{Preset, EMBEDDED_PRESETS};

    fn embedded(name: &str) -> Preset {
        let (_, text) = EMBEDDED_PRESETS.iter().find(|(n, _)| *n == name).unwrap();
        Preset::from_toml(name, text).unwrap()
    }

    #[test]
    fn curves_match_concrete_at_known_points() {
        // slope * n + bias by hand, and the brief's worked example (n = 600: 2^-13.4)
        assert!((secure_log2_std(128, 600).unwrap() - (-13.3603)).abs() < 1e-3);
        assert!((secure_log2_std(80, 450).unwrap() - (-16.5309)).abs() < 1e-3);
        assert!(secure_log2_std(192, 605).is_none());
        assert!(secure_log2_std(192, 606).is_some());
        assert!(secure_log2_std(128, 449).is_none());
        assert!(secure_log2_std(100, 1000).is_none());
        // the floor takes over for large dimensions
        assert_eq!(secure_log2_std(128, 8192), Some(MIN_LOG2_STD));
        assert_eq!(secure_log2_std(192, 8192), Some(MIN_LOG2_STD));
        // higher levels ask for more noise at every dimension where they apply
        for n in (450..=16384).step_by(7) {
            let ts: Vec<f64> = CURVES.iter().filter_map(|c| c.secure_log2_std(n)).collect();
            assert!(ts.windows(2).all(|w| w[0] <= w[1]), "n = {n}: {ts:?}");
        }
        assert_eq!(fitted_level_at_most(132), 128);
        assert_eq!(fitted_level_at_most(128), 128);
        assert_eq!(fitted_level_at_most(79), 0);
        assert_eq!(fitted_level_at_most(256), 192);
    }

    #[test]
    fn shipped_secure_presets_meet_the_128_bit_curves() {
        for name in ["default", "fine", "precise"] {
            let p = embedded(name);
            let keys = p.key_security();
            for k in keys {
                assert!(k.gaussian);
                assert!(
                    k.estimate.certified_bits >= 128,
                    "{name} {}: {:?}",
                    k.key,
                    k.estimate
                );
            }
            let e = p.estimated_security();
            assert!(e.certified_bits >= 128, "{name}: {e:?}");
            assert!(e.approx_bits >= e.certified_bits as f64 && e.approx_bits < 192.0);
            eprintln!("{name}: {e:?} {keys:?}");
        }
        // precise's GLWE noise sits exactly on the 2^-62 floor (n = 8192): it must count as met,
        // and at that dimension the floor is the binding constraint of every level.
        let precise = embedded("precise").key_security()[1];
        assert_eq!(precise.log2_std.round(), -62.0);
        assert_eq!(precise.estimate.certified_bits, 192);
    }

    #[test]
    fn the_test_preset_certifies_nothing() {
        let p = embedded("test");
        let [lwe, glwe] = p.key_security();
        assert_eq!(lwe.estimate, SecurityEstimate::NONE); // n = 256 < 450
        assert_eq!(glwe.estimate.certified_bits, 0); // N = 1024, std 2^-50: below the 80 curve
        assert_eq!(p.estimated_security(), SecurityEstimate::NONE);
        assert_eq!(p.estimated_security().to_string(), "< 80 bits");
    }

    #[test]
    fn a_pair_just_above_or_below_the_128_curve() {
        let n = 866;
        let t = secure_log2_std(128, n).unwrap();
        let above = estimate(n, (t + 1e-6).exp2());
        let on = estimate(n, t.exp2());
        let below = estimate(n, (t - 1e-6).exp2());
        assert_eq!(above.certified_bits, 128);
        assert_eq!(on.certified_bits, 128);
        assert_eq!(below.certified_bits, 112);
        assert!(below.approx_bits > 127.99 && below.approx_bits < 128.0);
        assert!(above.approx_bits >= 128.0 && above.approx_bits < 128.01);
        // just below the 128 curve at a dimension the 192 curve does not cover yet
        let n = 500;
        let t = secure_log2_std(128, n).unwrap();
        assert_eq!(estimate(n, (t + 1.0).exp2()).certified_bits, 128);
        assert_eq!(estimate(n, (t + 1.0).exp2()).approx_bits, 128.0);
        assert_eq!(estimate(n, (t - 1e-6).exp2()).certified_bits, 112);
    }

    #[test]
    fn small_dimensions_and_bad_noise_certify_nothing() {
        assert_eq!(estimate(449, 0.1), SecurityEstimate::NONE);
        assert_eq!(estimate(866, 0.0), SecurityEstimate::NONE);
        assert_eq!(estimate(866, f64::NAN), SecurityEstimate::NONE);
        assert_eq!(estimate(866, f64::INFINITY), SecurityEstimate::NONE);
        assert_eq!(estimate(866, 1e-30), SecurityEstimate::NONE);
        // at and above the 192 curve
        let t = secure_log2_std(192, 866).unwrap();
        assert_eq!(
            estimate(866, t.exp2()),
            SecurityEstimate {
                certified_bits: 192,
                approx_bits: 192.0
            }
        );
        assert_eq!(estimate(866, 0.4).certified_bits, 192);
    }

    #[test]
    fn interpolation_is_monotone_in_the_noise() {
        for n in [450, 600, 606, 866, 1006, 2048, 4096] {
            let mut last = SecurityEstimate::NONE;
            let mut x = -64.0;
            while x < -1.0 {
                let e = estimate_log2(n, x);
                assert!(e.certified_bits >= last.certified_bits, "n = {n}, x = {x}");
                assert!(e.approx_bits >= last.approx_bits, "n = {n}, x = {x}");
                assert!(e.approx_bits >= e.certified_bits as f64);
                assert!(e.approx_bits <= 192.0);
                if e.certified_bits > 0 {
                    let next = CURVES
                        .iter()
                        .find(|c| c.security_bits > e.certified_bits)
                        .map_or(192, |c| c.security_bits);
                    assert!(e.approx_bits <= next as f64);
                }
                last = e;
                x += 0.01;
            }
        }
        // halfway between the 128 and 192 curves in log2(std) reads as 160
        let (lo, hi) = (
            secure_log2_std(128, 1000).unwrap(),
            secure_log2_std(192, 1000).unwrap(),
        );
        let mid = estimate_log2(1000, 0.5 * (lo + hi));
        assert_eq!(mid.certified_bits, 128);
        assert!((mid.approx_bits - 160.0).abs() < 1e-6);
    }

    fn default_with_lwe_std(std: &str, insecure: bool) -> String {
        let (_, text) = EMBEDDED_PRESETS[0];
        let out = text
            .replace(
                "noise = { gaussian_std = 2.046151696979124e-06 }",
                &format!("noise = {{ gaussian_std = {std} }}"),
            )
            .replace(
                "insecure = false",
                if insecure {
                    "insecure = true"
                } else {
                    "insecure = false"
                },
            );
        assert_ne!(out, text, "the default preset's LWE noise line moved");
        out
    }

    #[test]
    fn validation_refuses_a_secure_claim_the_curves_do_not_back() {
        let text = default_with_lwe_std("1e-9", false);
        let err = Preset::from_toml("weak.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("LWE key (n = 866, std 2^-29.9)"), "{err}");
        assert!(err.contains("meets only the 80-bit fitted curve"), "{err}");
        assert!(err.contains("128 bits needs std >= 2^-20.4"), "{err}");
        assert!(err.contains("mark it insecure"), "{err}");
        assert_eq!(err.lines().count(), 1);

        // the same parameters marked insecure load and say what they are worth
        let p = Preset::from_toml("weak.toml", &default_with_lwe_std("1e-9", true)).unwrap();
        let e = p.estimated_security();
        assert!(e.certified_bits < 128, "{e:?}");
        assert_eq!(e.certified_bits, 80);
        assert!(e.approx_bits > 80.0 && e.approx_bits < 112.0);

        // a GLWE shortfall names the GLWE key
        let (_, text) = EMBEDDED_PRESETS[0];
        let text = text.replace(
            "noise = { gaussian_std = 2.845267479601915e-15 }",
            "noise = { gaussian_std = 1e-17 }",
        );
        let err = Preset::from_toml("weak-glwe.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("GLWE key (n = 2048"), "{err}");

        // a claim above what the curves certify is refused too (default is >= 128, < 192)
        let text = EMBEDDED_PRESETS[0]
            .1
            .replace("security_bits = 128", "security_bits = 192");
        let err = Preset::from_toml("boast.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("claims 192-bit security"), "{err}");
        // ... while a claim between two fitted levels is checked against the lower one
        let text = EMBEDDED_PRESETS[0]
            .1
            .replace("security_bits = 128", "security_bits = 132");
        Preset::from_toml("132.toml", &text).unwrap();
    }

    #[test]
    fn tuniform_noise_gets_no_estimate() {
        let (_, text) = EMBEDDED_PRESETS[0];
        let text = text.replace(
            "noise = { gaussian_std = 2.046151696979124e-06 }",
            "noise = { tuniform_bound_log2 = 46 }",
        );
        let err = Preset::from_toml("tu.toml", &text).unwrap_err().to_string();
        assert!(err.contains("LWE key") && err.contains("TUniform"), "{err}");
        let p = Preset::from_toml(
            "tu.toml",
            &text.replace("insecure = false", "insecure = true"),
        )
        .unwrap();
        let lwe = p.key_security()[0];
        assert!(!lwe.gaussian);
        assert_eq!(lwe.estimate, SecurityEstimate::NONE);
        // std of uniform integers on [-2^46, 2^46] is about 2^46 / sqrt(3), relative to 2^64
        assert!((lwe.log2_std - (46.0 - 64.0 - 0.5 * 3f64.log2())).abs() < 1e-6);
    }
}
