//! Files: key files read with bounds from their preset, and record streams (batch and results
//! files as a header envelope followed by one envelope per record).

pub mod keys;
pub mod records;

pub use records::{encode_file, FileError, RecordReader, RecordWriter};
