//! NumPy `.npy` arrays: a 2-D C-order array of records x features, or one 1-D record.
//! Every size in the header is checked against the bytes that follow before anything is
//! allocated from it.

pub fn parse_npy(bytes: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (wrong magic)".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
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
        .get(start..start.saturating_add(header_len))
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
    if rows == 0 || cols == 0 {
        return Err(format!("shape {dims:?} holds no values"));
    }
    let data = &bytes[start + header_len..];
    let need = rows
        .checked_mul(cols)
        .and_then(|v| v.checked_mul(size))
        .ok_or_else(|| format!("shape {dims:?} is too large"))?;
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
        assert!(parse_npy(&npy("<f4", "(0,)", &[]))
            .unwrap_err()
            .contains("no values"));
        let huge = format!("({}, {})", usize::MAX / 2, 3);
        assert!(parse_npy(&npy("<f8", &huge, &[0; 8]))
            .unwrap_err()
            .contains("too large"));
    }
}
