//! Key sizes from a preset's parameters.

use crate::preset::Preset;

/// Sizes in bytes of each key of a preset.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct KeySizes {
    /// Fourier bootstrapping key.
    pub bootstrap_key: u64,
    pub keyswitch_key: u64,
    /// LWE -> GLWE packing keyswitch key.
    pub packing_keyswitch_key: u64,
    /// Circuit bootstrapping's own Fourier bootstrapping key.
    pub cbs_bootstrap_key: u64,
    /// Circuit bootstrapping's private functional packing keyswitch keys.
    pub cbs_pfks_keys: u64,
    /// Everything the server holds.
    pub server_key: u64,
    /// The client's two secret keys.
    pub client_key: u64,
}

impl KeySizes {
    /// Key sizes from the parameters (checked against generated keys in the tests).
    pub fn of(p: &Preset) -> KeySizes {
        let n = p.lwe.dimension as u64;
        let k = p.glwe.dimension as u64;
        let big_n = p.glwe.polynomial_size as u64;
        let big = k * big_n;
        // A Fourier polynomial is N/2 complex f64 = 8N bytes.
        let bsk = |levels: usize| n * (k + 1) * (k + 1) * levels as u64 * big_n * 8;
        let bootstrap_key = bsk(p.pbs.level);
        let cbs_bootstrap_key = bsk(p.circuit_bootstrap.pbs_level);
        let keyswitch_key = big * p.keyswitch.level as u64 * (n + 1) * 8;
        let packing_keyswitch_key = big * p.packing_keyswitch.level as u64 * (k + 1) * big_n * 8;
        let cbs_pfks_keys =
            (k + 1) * (big + 1) * p.circuit_bootstrap.pfks_level as u64 * (k + 1) * big_n * 8;
        KeySizes {
            bootstrap_key,
            keyswitch_key,
            packing_keyswitch_key,
            cbs_bootstrap_key,
            cbs_pfks_keys,
            server_key: bootstrap_key
                + keyswitch_key
                + packing_keyswitch_key
                + cbs_bootstrap_key
                + cbs_pfks_keys,
            client_key: (n + big) * 8,
        }
    }
}
