//! Reading input records: CSV (one record per line, an optional non-numeric header line) and
//! NumPy `.npy` (a 2-D C-order array of records x features, or one 1-D record), with a clear
//! error for anything else.

use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Bad { path: String, reason: String },
}

/// Reads records from `path` (by extension: `.csv` or `.npy`); every record must have
/// `features` values.
pub fn read_records(path: &Path, features: usize) -> Result<Vec<Vec<f32>>, InputError> {
    let bad = |reason: String| InputError::Bad {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| InputError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let records = match ext.as_str() {
        "csv" => parse_csv(&bytes).map_err(bad)?,
        "npy" => parse_npy(&bytes).map_err(bad)?,
        other => {
            return Err(bad(format!(
                "unsupported input type `.{other}` (use .csv or .npy)"
            )))
        }
    };
    if records.is_empty() {
        return Err(bad("no records".into()));
    }
    if let Some((i, r)) = records
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != features)
    {
        return Err(bad(format!(
            "record {i} has {} values, the model takes {features}",
            r.len()
        )));
    }
    Ok(records)
}

fn parse_csv(bytes: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<f32>, _> = fields.iter().map(|f| f.parse::<f32>()).collect();
        match parsed {
            Ok(v) => out.push(v),
            // A first line that is not numbers is a header.
            Err(_) if out.is_empty() && n == 0 => continue,
            Err(_) => {
                let bad = fields
                    .iter()
                    .find(|f| f.parse::<f32>().is_err())
                    .copied()
                    .unwrap_or("");
                return Err(format!("line {}: `{bad}` is not a number", n + 1));
            }
        }
    }
    Ok(out)
}

fn parse_npy(bytes: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (wrong magic)".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| ".npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("no `descr` in the .npy header")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-order arrays are not supported (save with C order)".into());
    }
    let shape = dict_value(header, "shape").ok_or("no `shape` in the .npy header")?;
    let dims: Vec<usize> = shape
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape `{shape}`"))
        })
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match dims.as_slice() {
        [d] => (1, *d),
        [r, c] => (*r, *c),
        _ => return Err(format!("expected a 1-D or 2-D array, got shape {dims:?}")),
    };
    let (size, read): (usize, fn(&[u8]) -> f32) = match descr {
        "<f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "<f8" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        "|u1" | "<u1" => (1, |b| b[0] as f32),
        "|i1" | "<i1" => (1, |b| b[0] as i8 as f32),
        "<i2" => (2, |b| i16::from_le_bytes([b[0], b[1]]) as f32),
        "<i4" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        "<i8" => (8, |b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        other => {
            return Err(format!(
                "unsupported dtype `{other}` (f4, f8, i1, i2, i4, i8, u1)"
            ))
        }
    };
    let data = &bytes[start + header_len..];
    let need = rows * cols * size;
    if data.len() != need {
        return Err(format!(
            "data has {} bytes, shape {dims:?} of {descr} needs {need}",
            data.len()
        ));
    }
    Ok(data
        .chunks_exact(cols * size)
        .map(|row| row.chunks_exact(size).map(read).collect())
        .collect())
}

/// The text after `'key':` in a Python dict literal, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    if rest.starts_with('(') {
        return rest.find(')').map(|e| &rest[..=e]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn csv_with_and_without_header() {
        assert_eq!(
            parse_csv(b"a,b\n1,2\n3.5,-4\n").unwrap(),
            vec![vec![1.0, 2.0], vec![3.5, -4.0]]
        );
        assert_eq!(parse_csv(b"1,2\n").unwrap(), vec![vec![1.0, 2.0]]);
        assert!(parse_csv(b"1,2\n3,x\n").unwrap_err().contains("line 2"));
    }

    #[test]
    fn npy_dtypes_and_shapes() {
        let f4: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse_npy(&npy("<f4", "(2, 2)", &f4)).unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        assert_eq!(
            parse_npy(&npy("|u1", "(3,)", &[7, 8, 9])).unwrap(),
            vec![vec![7.0, 8.0, 9.0]]
        );
        let i8s: Vec<u8> = [-5i64, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            parse_npy(&npy("<i8", "(1, 2)", &i8s)).unwrap(),
            vec![vec![-5.0, 6.0]]
        );
        assert!(parse_npy(&npy("<f4", "(2, 2)", &f4[..12]))
            .unwrap_err()
            .contains("needs 16"));
        assert!(parse_npy(&npy("<c8", "(1,)", &[0; 8]))
            .unwrap_err()
            .contains("unsupported dtype"));
        assert!(parse_npy(b"garbage").unwrap_err().contains("magic"));
    }
}
