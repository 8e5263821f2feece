//! The server's side: evaluate a batch's records with a strategy, under the evaluation key.

use super::wire::{BatchMeta, BatchRecord, ResultRecord, ResultsMeta, Shard};
use crate::error::{session, Result};
use crate::layer::MoeLayer;
use crate::strategy::{ExpertStrategy, Strategy};
use veilmoe_engine::{Evaluator, ServerKey, ValueRange};
use veilmoe_model::{ModelId, QuantizedClassifier};

/// A server key, a model laid out for it, and the strategy every record is evaluated with.
pub struct ServerSession<'a> {
    server: &'a ServerKey,
    layer: MoeLayer,
    model_id: ModelId,
    features: usize,
    strategy: Strategy,
    evaluator: &'static dyn ExpertStrategy,
}

impl<'a> ServerSession<'a> {
    /// Lays the model out for `server` (weights transformed, tables filled once). Refuses a
    /// strategy that would reveal the routing.
    pub fn new(
        server: &'a ServerKey,
        model: &QuantizedClassifier,
        strategy: Strategy,
    ) -> Result<ServerSession<'a>> {
        let evaluator = strategy.oblivious()?;
        model.validate()?;
        let layer = MoeLayer::new(&Evaluator::new(server), model.moe.clone())?;
        Ok(ServerSession {
            server,
            layer,
            model_id: model.id(),
            features: model.features(),
            strategy,
            evaluator,
        })
    }

    pub fn layer(&self) -> &MoeLayer {
        &self.layer
    }
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Checks a batch header: this model, its feature count and input width.
    pub fn check_batch(&self, meta: &BatchMeta) -> Result<()> {
        if meta.model_id != self.model_id {
            return Err(session(format!(
                "the batch was encrypted for model {}, this model is {}",
                meta.model_id, self.model_id
            )));
        }
        let width = self.layer.input_encoding().width;
        if meta.features != self.features as u64 || meta.input_width != width {
            return Err(session(format!(
                "the batch has {} features at input width {}, the model takes {} at width {width}",
                meta.features, meta.input_width, self.features
            )));
        }
        if meta.records > super::wire::MAX_RECORDS {
            return Err(session(format!(
                "the batch claims {} records",
                meta.records
            )));
        }
        Ok(())
    }

    /// The header of the results of `shard` of `batch`.
    pub fn results_meta(&self, batch: &BatchMeta, shard: Shard) -> ResultsMeta {
        ResultsMeta {
            batch_id: batch.batch_id,
            model_id: self.model_id,
            batch_records: batch.records,
            shard,
            strategy: self.strategy,
        }
    }

    /// Evaluates several records at once, results in input order. One small model's record
    /// leaves cores idle between its dependent stages (an argmax round is a handful of PBS);
    /// records are independent, so evaluating them side by side fills the cores.
    pub fn evaluate_many(&self, records: Vec<BatchRecord>) -> Vec<Result<ResultRecord>> {
        use rayon::prelude::*;
        records.into_par_iter().map(|r| self.evaluate(r)).collect()
    }

    /// Evaluates one record with a fresh evaluator.
    pub fn evaluate(&self, rec: BatchRecord) -> Result<ResultRecord> {
        self.evaluate_with(&Evaluator::new(self.server), rec)
    }

    /// Evaluates one record on `ev` (whose operation log then holds the record's trace). The
    /// ciphertext is checked against the preset, the key set and the model's input before use;
    /// the server declares the public input range itself (from the architecture).
    pub fn evaluate_with(&self, ev: &Evaluator, rec: BatchRecord) -> Result<ResultRecord> {
        let at = |what: String| session(format!("record {}: {what}", rec.index));
        rec.x
            .validate(self.server.preset())
            .map_err(|e| at(e.to_string()))?;
        if rec.x.key_set() != self.server.key_set() {
            return Err(at("encrypted under another key set".into()));
        }
        let encoding = self.layer.input_encoding();
        if rec.x.encoding() != encoding || rec.x.len() != self.features {
            return Err(at(format!(
                "not a {}-value input at width {}",
                self.features, encoding.width
            )));
        }
        let q = &self.layer.model().quant;
        let x = rec.x.decompress().with_range(ValueRange {
            min: q.input_min(),
            max: q.input_max(),
        })?;
        let y = self.layer.forward(ev, &x, self.evaluator)?;
        Ok(ResultRecord {
            index: rec.index,
            input: rec.x,
            input_tag: rec.tag,
            terms: y.y_terms,
        })
    }
}
