//! The client's side: encrypt records into a batch, check and decrypt the server's results.

use super::tag::{hmac, tags_equal};
use super::wire::{BatchId, BatchMeta, BatchRecord, RecordTag, ResultRecord, ResultsMeta};
use crate::error::{session, Result};
use crate::layer::{decrypt_terms, output_coefficients, output_encoding};
use veilmoe_engine::{ClientKey, Encoding, LweKeyKind, SeededPackedGlwe};
use veilmoe_model::{argmax, ModelId, QuantizedClassifier};

/// Purpose label of the key that tags the client's uploads.
const TAG_PURPOSE: &str = "record-tags";

/// One decrypted record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub index: u64,
    /// The quantized input the client encrypted.
    pub input: Vec<i64>,
    /// The decrypted block output `y`, wide: in accumulator steps
    /// ([`veilmoe_model::QuantizedClassifier::y_step`] each).
    pub y: Vec<i64>,
    /// Class logits (or the block output in real units without a head).
    pub outputs: Vec<f64>,
    pub class: usize,
}

/// A client key and the model it encrypts for.
pub struct ClientSession<'a> {
    key: &'a ClientKey,
    model: &'a QuantizedClassifier,
    model_id: ModelId,
    tag_key: [u8; 32],
    input_encoding: Encoding,
}

impl Drop for ClientSession<'_> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.tag_key);
    }
}

impl<'a> ClientSession<'a> {
    /// Checks that `model` can run on the key's preset (it reads at most the preset's bits).
    pub fn new(key: &'a ClientKey, model: &'a QuantizedClassifier) -> Result<ClientSession<'a>> {
        model.validate()?;
        let (bits, preset) = (model.moe.quant.message_bits, key.preset());
        if bits > preset.message_bits {
            return Err(session(format!(
                "the model is quantized for {bits}-bit reads, preset `{}` reads {}",
                preset.name, preset.message_bits
            )));
        }
        Ok(ClientSession {
            key,
            model,
            model_id: model.id(),
            tag_key: key.derive_secret(TAG_PURPOSE),
            input_encoding: Encoding::signed(model.moe.input_width()),
        })
    }

    pub fn model_id(&self) -> ModelId {
        self.model_id
    }
    pub fn key(&self) -> &ClientKey {
        self.key
    }
    pub fn model(&self) -> &QuantizedClassifier {
        self.model
    }

    /// The header of a new batch of `records` records (a fresh random batch id).
    pub fn new_batch(&self, records: u64) -> BatchMeta {
        BatchMeta {
            batch_id: BatchId(veilmoe_engine::random::random_bytes()),
            model_id: self.model_id,
            records,
            features: self.model.features() as u64,
            input_width: self.input_encoding.width,
        }
    }

    fn tag(&self, batch: BatchId, index: u64, x: &SeededPackedGlwe) -> Result<RecordTag> {
        let bytes = bincode::serialize(x)
            .map_err(|e| session(format!("cannot serialize a ciphertext: {e}")))?;
        Ok(RecordTag(hmac(
            &self.tag_key,
            &[&batch.0, &index.to_le_bytes(), &bytes],
        )))
    }

    /// Quantizes and encrypts record `index` of `batch` (raw features as the data file holds
    /// them).
    pub fn encrypt_record(
        &self,
        batch: &BatchMeta,
        index: u64,
        raw: &[f32],
    ) -> Result<BatchRecord> {
        let x_q = self
            .model
            .quantize_input(raw)
            .map_err(|e| session(format!("record {index}: {e}")))?;
        let x = self.key.encrypt_packed_seeded(&x_q, self.input_encoding)?;
        let tag = self.tag(batch.batch_id, index, &x)?;
        Ok(BatchRecord { index, x, tag })
    }

    /// Checks a results header against this model.
    pub fn check_results(&self, meta: &ResultsMeta) -> Result<()> {
        if meta.model_id != self.model_id {
            return Err(session(format!(
                "these results come from model {}, this model is {}",
                meta.model_id, self.model_id
            )));
        }
        meta.shard.validate().map_err(session)?;
        if meta.batch_records > super::wire::MAX_RECORDS {
            return Err(session(format!(
                "the results claim a batch of {} records",
                meta.batch_records
            )));
        }
        Ok(())
    }

    /// Checks one result record against everything the model and the client's own batch
    /// determine, then decrypts it. Refused before any decryption: an echo whose tag does not
    /// verify (not the ciphertext the client made for this batch and index), output terms whose
    /// number or coefficients are not the model's, or ciphertexts of the wrong key kind, width,
    /// length or shape.
    pub fn decrypt_record(&self, meta: &ResultsMeta, rec: &ResultRecord) -> Result<Prediction> {
        let at = |what: String| session(format!("record {}: {what}", rec.index));
        if rec.index >= meta.batch_records || !meta.shard.contains(rec.index) {
            return Err(at(format!(
                "not a record of shard {} of a {}-record batch",
                meta.shard, meta.batch_records
            )));
        }
        let expected = self.tag(meta.batch_id, rec.index, &rec.input)?;
        if !tags_equal(&expected.0, &rec.input_tag.0) {
            return Err(at(
                "the echoed input is not the ciphertext this client encrypted for this batch and \
                 record (tag mismatch)"
                    .into(),
            ));
        }
        let coefficients = output_coefficients(&self.model.moe);
        let got: Vec<i64> = rec.terms.iter().map(|(c, _)| *c).collect();
        if got != coefficients {
            return Err(at(format!(
                "output terms with coefficients {got:?}, the model's are {coefficients:?}"
            )));
        }
        let preset = self.key.preset();
        let d = self.model.features();
        let output_encoding = output_encoding(&self.model.moe);
        for (_, t) in &rec.terms {
            t.validate(preset).map_err(|e| at(e.to_string()))?;
            if t.key_kind() != LweKeyKind::Big || t.len() != d || t.encoding() != output_encoding {
                return Err(at(format!(
                    "an output term is {} {:?}-key values at {:?}; the model's are {d} big-key \
                     values at {output_encoding:?}",
                    t.len(),
                    t.key_kind(),
                    t.encoding()
                )));
            }
        }
        rec.input.validate(preset).map_err(|e| at(e.to_string()))?;
        if rec.input.len() != d || rec.input.encoding() != self.input_encoding {
            return Err(at("the echoed input does not have the model's shape".into()));
        }
        let y = decrypt_terms(self.key, &rec.terms)?;
        let mut x = self.key.decrypt_packed(&rec.input.decompress())?;
        x.truncate(d);
        let outputs = self.model.outputs_from(&x, &y);
        Ok(Prediction {
            index: rec.index,
            class: argmax(&outputs),
            input: x,
            y,
            outputs,
        })
    }
}
