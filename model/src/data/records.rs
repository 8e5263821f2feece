//! Unlabelled feature records, one per row: what a client encrypts and what calibrates a
//! quantization. `.csv` (optionally `.csv.gz`) through the one CSV reader ([`super::table`]),
//! or `.npy` ([`super::npy`]).

use super::{bad, npy, table};
use crate::error::Result;
use std::path::Path;

/// Reads records from `path` (by extension: `.csv`, `.csv.gz` or `.npy`); every record must have
/// `features` values.
pub fn read_records(path: &Path, features: usize) -> Result<Vec<Vec<f32>>> {
    let origin = path.display().to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let records: Vec<Vec<f32>> = if name.ends_with(".csv") || name.ends_with(".csv.gz") {
        table::parse_rows(&origin, &table::read_text(path)?)?
            .into_iter()
            .map(|r| r.into_iter().map(|v| v as f32).collect())
            .collect()
    } else if name.ends_with(".npy") {
        npy::parse_npy(&table::read_bytes(path)?).map_err(|r| bad(&origin, r))?
    } else {
        return Err(bad(
            &origin,
            "unsupported input type (use .csv, .csv.gz or .npy)",
        ));
    };
    if let Some((i, r)) = records
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != features)
    {
        return Err(bad(
            &origin,
            format!(
                "record {i} has {} values, the model takes {features}",
                r.len()
            ),
        ));
    }
    if let Some(i) = records
        .iter()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        return Err(bad(
            &origin,
            format!("record {i} has a value that is not finite"),
        ));
    }
    Ok(records)
}
