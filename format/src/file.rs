//! Whole-file reads bounded by what the caller expects, atomic writes, and secret-file writes.

use crate::error::{FormatError, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a whole file of at most `max_bytes` bytes (the size the expected object can have);
/// a larger file is refused before it is read.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let len = file.metadata().map_err(io_error(path))?.len();
    if len > max_bytes {
        return Err(FormatError::malformed(
            "veilmoe file",
            format!(
                "{}: {len} bytes, more than the {max_bytes} the expected object can take",
                path.display()
            ),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(io_error(path))?;
    if out.len() as u64 > max_bytes {
        return Err(FormatError::malformed(
            "veilmoe file",
            format!(
                "{}: grew beyond {max_bytes} bytes while read",
                path.display()
            ),
        ));
    }
    Ok(out)
}

/// A temporary name beside `path`, unique to this process and call.
fn temporary_beside(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!(
        ".{file_name}.tmp-{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `bytes` to `path` atomically: a new temporary file in the same directory (created
/// exclusively, so an existing file or symlink of that name is never followed), fsync, rename.
/// A crash or error never leaves a half-written `path` behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temporary(path, bytes, false)
}

/// As [`write_atomic`], for secret material: the file is created with mode 0600 (owner only)
/// from the start, so the secret is never readable by others, not even for a moment.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temporary(path, bytes, true)
}

fn write_via_temporary(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let tmp = temporary_beside(path);
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of this test's own: tests run in parallel threads of one process, and a
    /// shared directory let `reads_are_bounded_and_writes_atomic` count the temporary file of
    /// `secrets_are_owner_only`'s write as a leftover (a failure seen once in CI-like runs).
    fn dir(test: &str) -> TestDir {
        let d = std::env::temp_dir().join(format!("veilmoe-format-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TestDir(d)
    }

    /// A test's directory, removed when the test ends (passing or not).
    struct TestDir(PathBuf);

    impl std::ops::Deref for TestDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_are_bounded_and_writes_atomic() {
        let d = dir("bounded");
        let p = d.join("a.bin");
        write_atomic(&p, &[1, 2, 3]).unwrap();
        assert_eq!(read_file(&p, 3).unwrap(), vec![1, 2, 3]);
        assert!(read_file(&p, 2)
            .unwrap_err()
            .to_string()
            .contains("more than"));
        let leftovers = std::fs::read_dir(&*d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("secret");
        let p = d.join("secret.key");
        write_secret(&p, b"s").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
