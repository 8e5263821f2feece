//! The UCI optical handwritten digits (Alpaydin & Kaynak 1998) as scikit-learn distributes
//! them: 1,797 records of 64 pixels (8x8 blocks, values 0..16) and a label 0..9 in the last
//! column. A copy ships in `model/data/digits.csv.gz` (CC BY 4.0, see `model/data/README.md`) and is
//! embedded here, so that the demo needs no file.
//!
//! The split every veilmoe tool and test uses is fixed by [`digits_split`]: a seeded
//! Fisher–Yates shuffle (see [`split`]), 360 test and 1,437 training records.

use super::{bad, table};
use crate::error::Result;
use crate::random::SplitMix;
use std::path::Path;

/// Records with integer labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Where the records came from (errors and reports name it).
    pub origin: String,
    /// One feature vector per record, all of the same length.
    pub features: Vec<Vec<f32>>,
    /// One label per record, in `0..classes`.
    pub labels: Vec<usize>,
    /// Number of classes (largest label + 1).
    pub classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Number of features of a record.
    pub fn feature_count(&self) -> usize {
        self.features.first().map_or(0, |f| f.len())
    }
    /// The records at `indices`, in that order.
    pub fn subset(&self, indices: &[usize], origin: String) -> Dataset {
        Dataset {
            origin,
            features: indices.iter().map(|&i| self.features[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
        }
    }
}

/// Labelled records from CSV text (the one CSV reader, [`super::table`]): numeric features,
/// then an integer label, one record per line.
pub fn parse_labelled_csv(origin: &str, text: &str) -> Result<Dataset> {
    let rows = table::parse_rows(origin, text)?;
    let mut features = Vec::with_capacity(rows.len());
    let mut labels = Vec::with_capacity(rows.len());
    for (n, row) in rows.into_iter().enumerate() {
        let Some((&label, feats)) = row.split_last().filter(|(_, f)| !f.is_empty()) else {
            return Err(bad(
                origin,
                format!("record {}: fewer than two columns", n + 1),
            ));
        };
        if label < 0.0 || label.fract() != 0.0 || label > 1e6 {
            return Err(bad(
                origin,
                format!("record {}: label {label} is not a class index", n + 1),
            ));
        }
        features.push(feats.iter().map(|&v| v as f32).collect());
        labels.push(label as usize);
    }
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    Ok(Dataset {
        origin: origin.to_string(),
        features,
        labels,
        classes,
    })
}

/// Reads a labelled CSV file (features, then an integer label per line), gunzipped when the
/// name ends in `.gz`: the digits file, or any test set.
pub fn load_labelled(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    parse_labelled_csv(&path.display().to_string(), &table::read_text(path)?)
}

const EMBEDDED: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// The embedded copy of `model/data/digits.csv.gz` (1,797 records).
pub fn embedded_digits() -> Result<Dataset> {
    let origin = "embedded:digits.csv.gz";
    parse_labelled_csv(origin, &table::gunzip(origin, EMBEDDED)?)
}

/// Seed of the fixed digits split.
pub const DIGITS_SPLIT_SEED: u64 = 1998;
/// Test records of the fixed digits split (the other 1,437 train).
pub const DIGITS_TEST_RECORDS: usize = 360;

/// Splits `data` into (train, test): a Fisher–Yates shuffle of the record indices driven by
/// SplitMix64 seeded with `seed` (for `i` from `n - 1` down to 1, swap `i` with
/// `next_u64() % (i + 1)`); the first `test_records` shuffled indices are the test set, the
/// rest the training set, each kept in file order.
pub fn split(data: &Dataset, test_records: usize, seed: u64) -> (Dataset, Dataset) {
    let n = data.len();
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        idx.swap(i, j);
    }
    let t = test_records.min(n);
    let mut test = idx[..t].to_vec();
    let mut train = idx[t..].to_vec();
    test.sort_unstable();
    train.sort_unstable();
    (
        data.subset(&train, format!("{} (train)", data.origin)),
        data.subset(&test, format!("{} (test)", data.origin)),
    )
}

/// The fixed digits split: (1,437 train, 360 test) with [`DIGITS_SPLIT_SEED`].
pub fn digits_split(data: &Dataset) -> (Dataset, Dataset) {
    split(data, DIGITS_TEST_RECORDS, DIGITS_SPLIT_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_parse_and_split() {
        let d = embedded_digits().unwrap();
        assert_eq!((d.len(), d.feature_count(), d.classes), (1797, 64, 10));
        let (train, test) = digits_split(&d);
        assert_eq!((train.len(), test.len()), (1437, 360));
        assert!(d
            .features
            .iter()
            .flatten()
            .all(|&v| (0.0..=16.0).contains(&v)));
    }

    #[test]
    fn malformed_csv_is_refused() {
        assert!(parse_labelled_csv("t", "1,2,x\n").is_err());
        assert!(parse_labelled_csv("t", "1,2,3\n1,2\n").is_err());
        assert!(parse_labelled_csv("t", "1,2,-1\n").is_err());
        assert!(parse_labelled_csv("t", "").is_err());
    }
}
