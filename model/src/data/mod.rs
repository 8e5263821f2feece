//! Data: records as the client's files hold them and labelled data sets.
//!
//! - [`table`]: the one CSV reader (and gzip'd text) every format here builds on;
//! - [`npy`]: NumPy `.npy` arrays;
//! - [`records`]: unlabelled feature records from `.csv`, `.csv.gz` or `.npy` (what a client
//!   encrypts, and calibration sets);
//! - [`digits`]: labelled data sets, the embedded UCI digits and their fixed split.

pub mod digits;
pub mod npy;
pub mod records;
pub mod table;

pub use digits::{digits_split, embedded_digits, load_labelled, split, Dataset};
pub use records::read_records;

use crate::error::ModelError;

/// A data error naming its origin.
pub(crate) fn bad(origin: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Data {
        origin: origin.to_string(),
        reason: reason.into(),
    }
}
