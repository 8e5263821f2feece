//! Every message between client and server, and the largest size each may have.
//!
//! ```text
//! batch file   = envelope(Batch: BatchMeta)     envelope(BatchRecord) x records
//! results file = envelope(Results: ResultsMeta) envelope(ResultRecord) x records of the shard
//! ```
//!
//! Each envelope carries the preset fingerprint and key-set id (veilmoe-format), so a file made
//! for another key or preset is refused before its payload is decoded. The `max_*` functions
//! give the largest payload a reader accepts, from the preset and the model: never a length
//! taken from the file.

use serde::{Deserialize, Serialize};
use veilmoe_engine::{LweVector, Preset, SeededPackedGlwe};
use veilmoe_model::{ModelId, QuantizedMoe};

/// Identifies one batch (ties its shards and their merge together): random, drawn by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchId(pub [u8; 16]);

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The client's authentication tag on one uploaded record (HMAC-SHA256, see the session docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordTag(pub [u8; 32]);

/// The batch header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub batch_id: BatchId,
    pub model_id: ModelId,
    pub records: u64,
    pub features: u64,
    /// Width of the input encoding the records were encrypted with.
    pub input_width: u32,
}

/// One encrypted record: its position in the batch, the packed quantized input, and the
/// client's tag over both.
#[derive(Clone, Serialize, Deserialize)]
pub struct BatchRecord {
    pub index: u64,
    pub x: SeededPackedGlwe,
    pub tag: RecordTag,
}

/// Which part of a batch a job runs: records with `index % count == part`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    part: u32,
    count: u32,
}

impl Shard {
    pub const WHOLE: Shard = Shard { part: 0, count: 1 };

    /// Shard `part` of `count` (0 <= part < count).
    pub fn new(part: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || part >= count {
            return Err(format!("shard {part}/{count}: need 0 <= i < n"));
        }
        Ok(Shard { part, count })
    }

    /// Parses `i/n` (0 <= i < n).
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (a, b) = s
            .split_once('/')
            .ok_or_else(|| format!("shard `{s}` is not of the form i/n"))?;
        let part: u32 = a
            .trim()
            .parse()
            .map_err(|_| format!("shard index `{a}` is not a number"))?;
        let count: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("shard count `{b}` is not a number"))?;
        Shard::new(part, count)
    }

    /// Re-checks a shard decoded from a file (serde bypasses [`Shard::new`]).
    pub fn validate(&self) -> Result<(), String> {
        Shard::new(self.part, self.count).map(|_| ())
    }

    pub fn part(&self) -> u32 {
        self.part
    }
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn contains(&self, index: u64) -> bool {
        index % self.count.max(1) as u64 == self.part as u64
    }

    /// How many of `records` records fall in this shard (closed form).
    pub fn size(&self, records: u64) -> u64 {
        let count = self.count.max(1) as u64;
        let part = self.part as u64;
        if records <= part {
            0
        } else {
            (records - part).div_ceil(count)
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.part, self.count)
    }
}

/// The results header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsMeta {
    pub batch_id: BatchId,
    pub model_id: ModelId,
    /// Records in the whole batch.
    pub batch_records: u64,
    /// The shard's records are the ones this file holds.
    pub shard: Shard,
    pub strategy: crate::Strategy,
}

/// One encrypted result: the block output as weighted terms `y = sum c * term`, and the
/// record's input echoed back with the client's tag (the client needs the input for the
/// residual and the head, and checks the tag before decrypting it).
#[derive(Clone, Serialize, Deserialize)]
pub struct ResultRecord {
    pub index: u64,
    pub input: SeededPackedGlwe,
    pub input_tag: RecordTag,
    pub terms: Vec<(i64, LweVector)>,
}

/// Most records a batch may declare.
pub const MAX_RECORDS: u64 = 1 << 32;
/// Largest header payload (batch or results).
pub const MAX_META_BYTES: u64 = 4096;
/// Serialization overhead allowed per ciphertext on top of its coefficients.
const CIPHERTEXT_OVERHEAD: u64 = 1024;

/// Largest payload of a seeded packed input of `model` on `preset`.
fn max_seeded_input_bytes(preset: &Preset, model: &QuantizedMoe) -> u64 {
    let n = preset.glwe.polynomial_size as u64;
    let glwes = (model.config.d.0 as u64).div_ceil(n.max(1));
    glwes * n * 8 + CIPHERTEXT_OVERHEAD
}

/// Largest payload of one batch record of `model` on `preset`.
pub fn max_batch_record_bytes(preset: &Preset, model: &QuantizedMoe) -> u64 {
    max_seeded_input_bytes(preset, model) + 64
}

/// Largest payload of one result record of `model` on `preset`: the echo and the model's
/// output terms, each `d` big-key LWE ciphertexts.
pub fn max_result_record_bytes(preset: &Preset, model: &QuantizedMoe) -> u64 {
    let big = (preset.glwe.dimension * preset.glwe.polynomial_size) as u64 + 1;
    let terms = crate::layer::output_coefficients(model).len() as u64;
    let per_term = model.config.d.0 as u64 * big * 8 + CIPHERTEXT_OVERHEAD;
    max_seeded_input_bytes(preset, model) + 64 + terms * per_term
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sizes_in_closed_form() {
        for count in 1..5u32 {
            for part in 0..count {
                let s = Shard::new(part, count).unwrap();
                for records in 0..12u64 {
                    let n = (0..records).filter(|i| s.contains(*i)).count() as u64;
                    assert_eq!(s.size(records), n);
                }
            }
        }
        assert_eq!(Shard::new(0, 1).unwrap().size(u64::MAX), u64::MAX);
        assert!(Shard::parse("2/2").is_err());
        assert!(Shard::parse("0/0").is_err());
    }
}
