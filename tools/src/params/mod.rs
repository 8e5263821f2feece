//! The `params` tool's preset report: security, precision, failure probability, key sizes and
//! the PBS time measured on this machine (cached after a quick calibration).
//!
//! Key sizes follow from the parameters (checked against real keys in the tests). The PBS time
//! is measured with tfhe's `core_crypto` keyswitch + PBS on a bootstrapping key generated for
//! the preset alone (not the whole server key: circuit-bootstrapping keys make that slow), and
//! cached per preset fingerprint and machine in `$XDG_CACHE_HOME/veilmoe/pbs-times.json`
//! (or `~/.cache/...`).

pub mod check;
pub mod estimate;
pub mod probe;
pub mod sweep;

use crate::bench::timing::{machine_name, median_ms};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tfhe::core_crypto::prelude::*;
use veilmoe_engine::keys::KeySizes;
use veilmoe_engine::security::{KeySecurity, SecurityEstimate};
use veilmoe_engine::{noise, ClientKey, Preset};

/// Everything `params show` says about a preset.
#[derive(Debug, Clone, Serialize)]
pub struct PresetReport {
    pub name: String,
    pub description: String,
    pub insecure: bool,
    pub security_bits: u32,
    pub provenance: String,
    /// Security certified by Concrete's lattice-estimator-fitted curves for the weaker key
    /// (0, 80, 112, 128 or 192): what the fit backs, unlike the claimed `security_bits`.
    pub estimated_security_bits: u32,
    /// Interpolation between the fitted curves (a reading aid, not backed by the fit).
    pub estimated_security_approx: f64,
    /// The figures behind the estimate, per secret key (LWE, then GLWE as dimension k·N).
    pub key_security: Vec<KeySecurity>,
    pub fingerprint: String,
    /// Bits a PBS reads exactly, not counting the padding bit.
    pub message_bits: u32,
    pub lwe_dimension: usize,
    pub glwe_dimension: usize,
    pub polynomial_size: usize,
    /// The preset's declared per-PBS failure probability (log2) at its noise budget.
    pub log2_p_fail_declared: f64,
    /// The same from veilmoe's noise model, at the budget.
    pub log2_p_fail_model: f64,
    /// Largest input variance (big key) a PBS accepts: `max_norm2^2` x PBS output variance.
    pub pbs_input_budget: f64,
    pub pbs_output_variance: f64,
    /// Variance one CMUX (external product with a circuit-bootstrapped GGSW) adds.
    pub cmux_variance: f64,
    /// How many CMUX levels fit the budget on top of one PBS output (E up to 2^levels).
    pub cmux_levels_in_budget: u32,
    pub key_sizes: KeySizes,
    /// Keyswitch + PBS, single thread, median ms on this machine (None: not calibrated).
    pub pbs_ms: Option<f64>,
}

/// Builds the report (`pbs_ms` from the cache only).
pub fn report(p: &Preset) -> PresetReport {
    let budget = noise::pbs_input_budget(p);
    let out = noise::pbs_output_variance(p);
    let ggsw = noise::cbs_pbs_output_variance(p) + noise::pfks_variance(p);
    let cmux = noise::external_product_variance(p, ggsw);
    let levels = ((budget - out) / cmux).floor().clamp(0.0, 64.0) as u32;
    let estimate = p.estimated_security();
    PresetReport {
        name: p.name.clone(),
        description: p.description.clone(),
        insecure: p.insecure,
        security_bits: p.security_bits,
        provenance: p.provenance.clone(),
        estimated_security_bits: estimate.certified_bits,
        estimated_security_approx: estimate.approx_bits,
        key_security: p.key_security().to_vec(),
        fingerprint: p.fingerprint().to_string(),
        message_bits: p.message_bits,
        lwe_dimension: p.lwe.dimension,
        glwe_dimension: p.glwe.dimension,
        polynomial_size: p.glwe.polynomial_size,
        log2_p_fail_declared: p.log2_p_fail,
        log2_p_fail_model: noise::log2_p_fail(p, budget, p.pbs_read_bits()),
        pbs_input_budget: budget,
        pbs_output_variance: out,
        cmux_variance: cmux,
        cmux_levels_in_budget: levels,
        key_sizes: KeySizes::of(p),
        pbs_ms: cached_pbs_ms(p),
    }
}

fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("veilmoe").join("pbs-times.json"))
}

fn cache_key(p: &Preset) -> String {
    format!("{} @ {}", p.fingerprint(), machine_name())
}

fn read_cache() -> BTreeMap<String, f64> {
    cache_path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The cached PBS time of `p` on this machine, if calibrated.
pub fn cached_pbs_ms(p: &Preset) -> Option<f64> {
    read_cache().get(&cache_key(p)).copied()
}

/// Measures keyswitch + PBS (single thread, median of `runs`) on a bootstrapping key made for
/// `p` alone, stores it in the cache (best effort) and returns it.
pub fn calibrate_pbs_ms(p: &Preset, runs: usize) -> veilmoe_engine::Result<f64> {
    let client = ClientKey::generate(p);
    let (fourier, ksk) = client.pbs_keys();
    let modulus = CiphertextModulus::new_native();
    let encrypted = client.encrypt_lwe(&[0], veilmoe_engine::Encoding::signed(p.message_bits))?;
    let input = encrypted.as_list().get(0);
    let big = p.big_lwe_dimension();
    let acc = GlweCiphertext::new(
        0u64,
        p.glwe_dimension().to_glwe_size(),
        p.polynomial_size(),
        modulus,
    );
    let fft = Fft::new(p.polynomial_size());
    let fft = fft.as_view();
    let mut buffers = ComputationBuffers::new();
    buffers.resize(
        programmable_bootstrap_lwe_ciphertext_mem_optimized_requirement::<u64>(
            fourier.glwe_size(),
            fourier.polynomial_size(),
            fft,
        )
        .unaligned_bytes_required(),
    );
    let buffers = std::cell::RefCell::new(buffers);
    let ms = median_ms(runs, &|| {
        let mut ks = LweCiphertext::new(0u64, p.lwe_dimension().to_lwe_size(), modulus);
        keyswitch_lwe_ciphertext(&ksk, &input, &mut ks);
        let mut out = LweCiphertext::new(0u64, big.to_lwe_size(), modulus);
        programmable_bootstrap_lwe_ciphertext_mem_optimized(
            &ks,
            &mut out,
            &acc,
            &fourier,
            fft,
            buffers.borrow_mut().stack(),
        );
        std::hint::black_box(&out);
    });
    if let Some(path) = cache_path() {
        let mut cache = read_cache();
        cache.insert(cache_key(p), ms);
        if let (Some(dir), Ok(bytes)) = (path.parent(), serde_json::to_vec_pretty(&cache)) {
            let _ = std::fs::create_dir_all(dir);
            let _ = veilmoe_engine::format::write_atomic(&path, &bytes);
        }
    }
    Ok(ms)
}

/// Human size: KiB, MiB or GiB.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

impl std::fmt::Display for PresetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "preset {} — {}", self.name, self.description)?;
        let estimated = SecurityEstimate {
            certified_bits: self.estimated_security_bits,
            approx_bits: self.estimated_security_approx,
        };
        if self.insecure {
            writeln!(
                f,
                "  security        NONE: INSECURE, tests only; estimated {estimated} from Concrete's lattice-estimator curves"
            )?;
        } else {
            writeln!(
                f,
                "  security        {} bits (claimed: {}); estimated {estimated} from Concrete's lattice-estimator curves",
                self.security_bits, self.provenance
            )?;
        }
        let keys: Vec<String> = self
            .key_security
            .iter()
            .map(|k| {
                let verdict = if k.gaussian {
                    k.estimate.to_string()
                } else {
                    "no estimate (TUniform noise; the curves are for Gaussian noise)".to_string()
                };
                format!(
                    "{} n = {}, std 2^{:.2}: {verdict}",
                    k.key, k.dimension, k.log2_std
                )
            })
            .collect();
        writeln!(f, "  per key         {}", keys.join("; "))?;
        writeln!(f, "  fingerprint     {}", self.fingerprint)?;
        writeln!(
            f,
            "  precision       {} bits per PBS (+1 padding bit)",
            self.message_bits
        )?;
        writeln!(
            f,
            "  parameters      n = {}, k = {}, N = {}",
            self.lwe_dimension, self.glwe_dimension, self.polynomial_size
        )?;
        writeln!(
            f,
            "  p_fail per PBS  2^{:.1} declared, 2^{:.1} noise model (at the input budget {:.2e})",
            self.log2_p_fail_declared, self.log2_p_fail_model, self.pbs_input_budget
        )?;
        writeln!(
            f,
            "  CMUX            adds {:.2e} per level; {} levels fit the budget (up to {} experts)",
            self.cmux_variance,
            self.cmux_levels_in_budget,
            if self.cmux_levels_in_budget >= 20 {
                "2^20+".to_string()
            } else {
                (1u64 << self.cmux_levels_in_budget).to_string()
            }
        )?;
        let k = &self.key_sizes;
        writeln!(
            f,
            "  keys            server {} (bsk {}, ksk {}, packing {}, cbs bsk {}, cbs pfks {}), client {}",
            human_bytes(k.server_key),
            human_bytes(k.bootstrap_key),
            human_bytes(k.keyswitch_key),
            human_bytes(k.packing_keyswitch_key),
            human_bytes(k.cbs_bootstrap_key),
            human_bytes(k.cbs_pfks_keys),
            human_bytes(k.client_key)
        )?;
        match self.pbs_ms {
            Some(ms) => write!(
                f,
                "  PBS             {ms:.2} ms (keyswitch + PBS, 1 thread, this machine)"
            ),
            None => write!(
                f,
                "  PBS             not calibrated on this machine (`params list --calibrate`)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sizes_match_generated_keys() {
        let p = Preset::load("test", true).unwrap();
        let server = ClientKey::generate(&p).server_key();
        assert_eq!(KeySizes::of(&p).server_key, server.size_bytes() as u64);
    }

    #[test]
    fn report_flags_insecure_presets_and_orders_failure_probabilities() {
        let test = report(&Preset::load("test", true).unwrap());
        let default = report(&Preset::load("default", false).unwrap());
        assert!(test.insecure && !default.insecure);
        // the claim is backed by the fitted curves for default, and nothing is for test
        assert!(default.estimated_security_bits >= 128);
        assert_eq!(test.estimated_security_bits, 0);
        assert_eq!(default.key_security.len(), 2);
        // veilmoe's model lands within a few bits of tfhe's published 2^-128.6 at the budget.
        assert!((default.log2_p_fail_model - default.log2_p_fail_declared).abs() < 5.0);
        assert!(test.log2_p_fail_model > default.log2_p_fail_model);
        // 128 experts (7 CMUX levels) must fit the default budget.
        assert!(default.cmux_levels_in_budget >= 7);
    }
}
