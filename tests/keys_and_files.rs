//! Presets, key files and ciphertext envelopes: what belongs together is accepted, anything else
//! is refused with a clear error and no panic.

mod common;

use common::test_keys;
use tfhe::shortint::parameters::v1_4::V1_4_PARAM_MESSAGE_3_CARRY_2_KS_PBS_GAUSSIAN_2M128;
use tfhe::shortint::parameters::v1_8::{
    V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_GAUSSIAN_2M128,
    V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_GAUSSIAN_2M128,
};
use tfhe::shortint::parameters::DynamicDistribution;
use veilmoe::engine::format::{self, ObjectKind};
use veilmoe::engine::{ClientKey, Encoding, EngineError, Evaluator, LweVector, Preset, ServerKey};

fn std_dev(d: DynamicDistribution<u64>) -> f64 {
    match d {
        DynamicDistribution::Gaussian(g) => g.std,
        other => panic!("expected a Gaussian, got {other:?}"),
    }
}

#[test]
fn secure_presets_are_tfhe_vetted_sets() {
    for (name, tfhe) in [
        (
            "default",
            V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_GAUSSIAN_2M128,
        ),
        ("fine", V1_4_PARAM_MESSAGE_3_CARRY_2_KS_PBS_GAUSSIAN_2M128),
        (
            "precise",
            V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_GAUSSIAN_2M128,
        ),
    ] {
        let p = Preset::load(name, false).unwrap();
        assert!(!p.insecure && p.security_bits >= 128 && p.log2_p_fail <= -64.0);
        assert_eq!(p.lwe_dimension(), tfhe.lwe_dimension);
        assert_eq!(p.glwe_dimension(), tfhe.glwe_dimension);
        assert_eq!(p.polynomial_size(), tfhe.polynomial_size);
        assert_eq!(p.pbs.base_log(), tfhe.pbs_base_log);
        assert_eq!(p.pbs.level(), tfhe.pbs_level);
        assert_eq!(p.keyswitch.base_log(), tfhe.ks_base_log);
        assert_eq!(p.keyswitch.level(), tfhe.ks_level);
        assert_eq!(
            p.lwe.noise.distribution().gaussian_std_dev_or_zero(),
            std_dev(tfhe.lwe_noise_distribution)
        );
        assert_eq!(
            std_dev(p.glwe.noise.distribution()),
            std_dev(tfhe.glwe_noise_distribution)
        );
        assert_eq!(p.log2_p_fail, tfhe.log2_p_fail);
        assert_eq!(
            1u64 << p.message_bits,
            tfhe.message_modulus.0 * tfhe.carry_modulus.0
        );
    }
}

trait StdDev {
    fn gaussian_std_dev_or_zero(&self) -> f64;
}
impl StdDev for DynamicDistribution<u64> {
    fn gaussian_std_dev_or_zero(&self) -> f64 {
        std_dev(*self)
    }
}

#[test]
fn insecure_preset_needs_opt_in() {
    assert!(matches!(
        Preset::load("test", false),
        Err(EngineError::InsecurePreset(_))
    ));
    assert!(Preset::load("test", true).unwrap().insecure);
    assert!(matches!(
        Preset::load("no-such-preset", true),
        Err(EngineError::UnknownPreset(_))
    ));
}

#[test]
fn malformed_or_unsafe_preset_files_are_refused() {
    let good = veilmoe::engine::preset::EMBEDDED_PRESETS[0].1;
    for (what, text) in [
        ("not toml", "this is = = not toml".to_string()),
        (
            "missing section",
            good.replace("[pbs]\nbase_log = 23\nlevel = 1\n", ""),
        ),
        (
            "bad polynomial size",
            good.replace("polynomial_size = 2048", "polynomial_size = 2000"),
        ),
        (
            "negative noise",
            good.replace(
                "gaussian_std = 2.046151696979124e-06",
                "gaussian_std = -1.0",
            ),
        ),
        (
            "below 128 bits, not marked insecure",
            good.replace("security_bits = 128", "security_bits = 80"),
        ),
        (
            "p_fail above 2^-64",
            good.replace("log2_p_fail = -128.597", "log2_p_fail = -40.0"),
        ),
        ("unknown field", format!("{good}\nsurprise = 1\n")),
        (
            "zero levels",
            good.replace(
                "[keyswitch]\nbase_log = 3\nlevel = 5",
                "[keyswitch]\nbase_log = 3\nlevel = 0",
            ),
        ),
    ] {
        match Preset::from_toml("custom.toml", &text) {
            Err(EngineError::InvalidPreset { reason, .. }) => assert!(!reason.is_empty(), "{what}"),
            other => panic!("{what}: expected InvalidPreset, got {other:?}"),
        }
    }
    // fingerprints change with any cryptographic parameter, not with the description
    let a = Preset::from_toml("a", good).unwrap();
    let b = Preset::from_toml(
        "b",
        &good.replace("4-bit precision, 128-bit", "another description"),
    )
    .unwrap();
    let c = Preset::from_toml("c", &good.replace("dimension = 866", "dimension = 870")).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn keys_roundtrip_and_wrong_files_are_refused() {
    let k = test_keys();
    let preset = k.client.preset().clone();
    let default = Preset::load("default", false).unwrap();

    let ck_bytes = k.client.to_bytes().unwrap();
    let ck = ClientKey::from_bytes(&ck_bytes, Some(&preset), true).unwrap();
    assert_eq!(ck.key_set(), k.client.key_set());
    // an insecure key is refused without the opt-in, and under another preset
    assert!(matches!(
        ClientKey::from_bytes(&ck_bytes, None, false),
        Err(EngineError::InsecurePreset(_))
    ));
    assert!(matches!(
        ClientKey::from_bytes(&ck_bytes, Some(&default), true),
        Err(EngineError::PresetMismatch { .. })
    ));

    let sk_bytes = k.client.server_key_file().unwrap();
    let sk = ServerKey::from_bytes(&sk_bytes, Some(&preset), true).unwrap();
    assert_eq!(sk.key_set(), k.client.key_set());
    // a client key is not a server key
    assert!(matches!(
        ServerKey::from_bytes(&ck_bytes, None, true),
        Err(EngineError::Format { .. })
    ));
    // truncated anywhere: header or payload
    for cut in [4, 30, 60, sk_bytes.len() / 2, sk_bytes.len() - 1] {
        match ServerKey::from_bytes(&sk_bytes[..cut], None, true) {
            Err(EngineError::Format { reason, .. }) => assert!(!reason.contains('\n')),
            Err(e) => panic!("cut {cut}: unexpected error {e}"),
            Ok(_) => panic!("cut {cut}: accepted a truncated key"),
        }
    }
    // a flipped byte in the payload is caught by the checksum
    let mut bad = ck_bytes.clone();
    let last = bad.len() - 10;
    bad[last] ^= 0x40;
    match ClientKey::from_bytes(&bad, None, true) {
        Err(EngineError::Format { reason, .. }) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("expected a checksum error, got {other:?}"),
    }

    // the decoded server key computes with the original client key
    let ev = Evaluator::new(&sk);
    let ct = k
        .client
        .encrypt_lwe(&[5, 9], Encoding::unsigned(4))
        .unwrap();
    let lut = veilmoe::engine::Lut::univariate(
        &preset,
        Encoding::unsigned(4),
        Encoding::unsigned(4),
        |v| 15 - v,
    )
    .unwrap();
    assert_eq!(
        k.client.decrypt_lwe(&ev.pbs(&ct, &lut).unwrap()).unwrap(),
        vec![10, 6]
    );
}

#[test]
fn server_key_files_are_seeded_and_checked_before_expansion() {
    let k = test_keys();
    let preset = k.client.preset().clone();
    let bytes = k.client.server_key_file().unwrap();
    let sizes = veilmoe::engine::keys::KeySizes::of(&preset);
    assert!(
        (bytes.len() as u64) < sizes.server_key * 3 / 4,
        "{} vs {} in memory",
        bytes.len(),
        sizes.server_key
    );
    let sk = ServerKey::from_bytes(&bytes, Some(&preset), true).unwrap();
    let ev = Evaluator::new(&sk);
    let ct = k
        .client
        .encrypt_lwe(&[0, 3, 7], Encoding::unsigned(4))
        .unwrap();
    let lut = veilmoe::engine::Lut::univariate(
        &preset,
        Encoding::unsigned(4),
        Encoding::unsigned(4),
        |v| (v * 2) % 16,
    )
    .unwrap();
    assert_eq!(
        k.client.decrypt_lwe(&ev.pbs(&ct, &lut).unwrap()).unwrap(),
        vec![0, 6, 14]
    );
    // A full-form (Fourier) envelope is never decoded: its decoder allocates from the file.
    let full = format::encode(ObjectKind::ServerKey, &preset, k.client.key_set(), &0u64).unwrap();
    match ServerKey::from_bytes(&full, None, true) {
        Err(EngineError::Format { reason, .. }) => {
            assert!(reason.contains("full-form"), "{reason}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // A header claiming another preset than the key inside: refused.
    let default = Preset::load("default", false).unwrap();
    let (_, payload) = format::read_header(&bytes).unwrap();
    let forged = veilmoe::format::encode(
        ObjectKind::CompressedServerKey,
        &veilmoe::format::Binding {
            preset: default.fingerprint(),
            preset_name: default.name.clone(),
            key_set: k.client.key_set(),
        },
        &RawPayload(payload.to_vec()),
    )
    .unwrap();
    match ServerKey::from_bytes(&forged, None, true) {
        Err(EngineError::Format { reason, .. }) => assert!(reason.contains("disagree"), "{reason}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

/// Bytes serialized as themselves (bincode writes a byte tuple without a length).
struct RawPayload(Vec<u8>);

impl serde::Serialize for RawPayload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

#[test]
fn ciphertexts_of_another_key_set_are_refused() {
    let k = test_keys();
    let preset = k.client.preset().clone();
    let other = ClientKey::generate(&preset);
    let ct = other.encrypt_lwe(&[1, 2], Encoding::unsigned(4)).unwrap();
    // by the evaluator
    let ev = Evaluator::new(&k.server);
    let lut = veilmoe::engine::Lut::univariate(
        &preset,
        Encoding::unsigned(4),
        Encoding::unsigned(4),
        |v| v,
    )
    .unwrap();
    assert!(matches!(
        ev.pbs(&ct, &lut),
        Err(EngineError::KeySetMismatch { .. })
    ));
    // by the client
    assert!(matches!(
        k.client.decrypt_lwe(&ct),
        Err(EngineError::KeySetMismatch { .. })
    ));
    // and in files
    let bytes = format::encode(ObjectKind::LweVector, &preset, other.key_set(), &ct).unwrap();
    let r: Result<(_, LweVector), _> = format::decode(
        &bytes,
        ObjectKind::LweVector,
        &preset,
        Some(k.client.key_set()),
    );
    assert!(matches!(r, Err(EngineError::KeySetMismatch { .. })));
    let ok: (_, LweVector) = format::decode(
        &bytes,
        ObjectKind::LweVector,
        &preset,
        Some(other.key_set()),
    )
    .unwrap();
    assert_eq!(other.decrypt_lwe(&ok.1).unwrap(), vec![1, 2]);
}

#[test]
fn atomic_write_leaves_no_partial_file() {
    let dir = std::env::temp_dir().join(format!("veilmoe-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.bin");
    format::write_atomic(&path, b"hello").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    // writing into a missing directory fails and leaves nothing
    let bad = dir.join("missing").join("x.bin");
    assert!(matches!(
        format::write_atomic(&bad, b"x"),
        Err(format::FormatError::Io { .. })
    ));
    assert!(!bad.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
