//! The one CSV reader: comma-separated numbers, one row per line.
//!
//! Rules, for every CSV veilmoe reads (records, calibration sets, labelled test sets): cells are
//! trimmed; blank lines and lines starting with `#` are skipped; a first line that is not all
//! numbers is a header and skipped; every value must be a finite number; every row must have
//! the width of the first. A file whose name ends in `.gz` is gunzipped first.

use super::bad;
use crate::error::Result;
use std::io::Read;
use std::path::Path;

/// Largest text a table file may expand to (a gzip bomb is refused, not unpacked).
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Parses CSV text into rows of numbers.
pub fn parse_rows(origin: &str, text: &str) -> Result<Vec<Vec<f64>>> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut seen_line = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first_line = !seen_line;
        seen_line = true;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Vec<Option<f64>> = cells
            .iter()
            .map(|c| c.parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect();
        if let Some(at) = parsed.iter().position(Option::is_none) {
            if first_line && parsed.iter().all(Option::is_none) {
                continue; // a header line
            }
            return Err(bad(
                origin,
                format!("line {}: `{}` is not a finite number", n + 1, cells[at]),
            ));
        }
        let row: Vec<f64> = parsed.into_iter().flatten().collect();
        if let Some(width) = rows.first().map(Vec::len) {
            if row.len() != width {
                return Err(bad(
                    origin,
                    format!(
                        "line {}: {} values, earlier lines have {width}",
                        n + 1,
                        row.len()
                    ),
                ));
            }
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(bad(origin, "no records"));
    }
    Ok(rows)
}

/// Gunzips `bytes` into text, refusing more than [`MAX_TEXT_BYTES`].
pub fn gunzip(origin: &str, bytes: &[u8]) -> Result<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_TEXT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(origin, format!("not a valid gzip'd text file: {e}")))?;
    if text.len() as u64 > MAX_TEXT_BYTES {
        return Err(bad(origin, "unpacks to more than 1 GiB of text"));
    }
    Ok(text)
}

/// Reads a file's bytes, refusing one larger than [`MAX_TEXT_BYTES`].
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| bad(&origin, e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_TEXT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(&origin, e.to_string()))?;
    if bytes.len() as u64 > MAX_TEXT_BYTES {
        return Err(bad(&origin, "larger than 1 GiB"));
    }
    Ok(bytes)
}

/// Whether `path` names a gzip'd file.
pub fn is_gzip(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// The text of a CSV file, gunzipped when its name ends in `.gz`.
pub fn read_text(path: &Path) -> Result<String> {
    let origin = path.display().to_string();
    let bytes = read_bytes(path)?;
    if is_gzip(path) {
        gunzip(&origin, &bytes)
    } else {
        String::from_utf8(bytes).map_err(|_| bad(&origin, "not UTF-8 text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_comments_and_widths() {
        assert_eq!(
            parse_rows("t", "a,b\n1,2\n# note\n\n3.5,-4\n").unwrap(),
            vec![vec![1.0, 2.0], vec![3.5, -4.0]]
        );
        assert_eq!(parse_rows("t", "1,2\n").unwrap(), vec![vec![1.0, 2.0]]);
        let e = parse_rows("t", "1,2\n3,x\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_rows("t", "1,2\n1\n").is_err());
        assert!(parse_rows("t", "1,nan\n").is_err());
        assert!(
            parse_rows("t", "x,1\n").is_err(),
            "a mixed first line is no header"
        );
        assert!(parse_rows("t", "a,b\n").is_err());
        assert!(parse_rows("t", "").is_err());
    }
}
