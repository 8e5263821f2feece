//! Key files: read with a bound on their size, written atomically (the client key as a secret:
//! mode 0600, exclusive creation of a temporary file, no symlink following).

use std::path::Path;
use thiserror::Error;
use veilmoe_engine::format;
use veilmoe_engine::{ClientKey, EngineError, ServerKey};

/// Largest client key file read (two binary secret keys; the largest preset's are a few MiB).
pub const MAX_CLIENT_KEY_BYTES: u64 = 256 << 20;
/// Largest server key file read (the `precise` preset's is about 7.4 GiB).
pub const MAX_SERVER_KEY_BYTES: u64 = 32 << 30;

/// A key file that cannot be read or written, with its path.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct KeyFileError {
    pub path: String,
    #[source]
    pub source: EngineError,
}

fn at(path: &Path) -> impl FnOnce(EngineError) -> KeyFileError + '_ {
    move |source| KeyFileError {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a client key (an insecure preset is refused unless `allow_insecure`).
pub fn read_client_key(path: &Path, allow_insecure: bool) -> Result<ClientKey, KeyFileError> {
    let bytes = format::read_file(path, MAX_CLIENT_KEY_BYTES).map_err(at(path))?;
    ClientKey::from_bytes(&bytes, None, allow_insecure).map_err(at(path))
}

/// Reads a server key file (seeded form; checked against its preset before expansion).
pub fn read_server_key(path: &Path, allow_insecure: bool) -> Result<ServerKey, KeyFileError> {
    let bytes = format::read_file(path, MAX_SERVER_KEY_BYTES).map_err(at(path))?;
    ServerKey::from_bytes(&bytes, None, allow_insecure).map_err(at(path))
}

/// Writes a client key as a secret file (mode 0600).
pub fn write_client_key(path: &Path, key: &ClientKey) -> Result<(), KeyFileError> {
    let bytes = key.to_bytes().map_err(at(path))?;
    format::write_secret(path, &bytes).map_err(|e| at(path)(e.into()))
}
