//! Encrypted routing over a pool of models for a batch with public per-model capacities: the
//! saving SecureRouter's per-input choice can give under FHE. The server routes every input,
//! dispatches the inputs obliviously into their chosen models' slots ([`crate::dispatch`]), then
//! the inputs that found their model full into the fallback model's extra slots (a second
//! dispatch on the refreshed overflow flags), and runs each model on its own slots only. It
//! learns the batch size and the capacities, nothing else (tested on the operation trace).
//!
//! Each model's first-stage products (router, W1, W3) are computed for every input, leveled,
//! and each slot CMUX-selects its input's products by the slot's source bits, so the CMUX noise
//! is not amplified by the weights ([`MoeLayer::select_first_stage`]); the slot then runs
//! Select-Then-Compute from there.
//!
//! Cost per batch of `T` inputs with `C_m` slots per model and `F` fallback slots: the router on
//! every input; the dispatch rounds' PBS and circuit bootstraps ([`crate::dispatch`]) plus `T`
//! flag refreshes; per model, `T` first stages (leveled); per slot, its CMUX trees and the model's
//! layer after the first stage. So model `m` costs `C_m` (plus `F` for the fallback) layer
//! evaluations instead of `T`.
//!
//! The client gets every slot's output terms and each input's slot ids (chosen round, fallback
//! round); it decrypts its inputs' ids and the terms of the slot that answered each. A batch is
//! one client's inputs under one key.

use crate::dispatch::{decode_slot_id, dispatch, Dispatch, OverflowFlags};
use crate::error::{session, Result};
use crate::layer::{decrypt_terms, output_coefficients, FirstStage};
use crate::pool::{PoolInput, PoolLayer};
use veilmoe_engine::{ClientKey, Evaluator, Lut, LweVector};
use veilmoe_model::capacity::Capacities;
use veilmoe_model::pool::{Placement, PoolCapacities};

/// The client's answer for one input of a batch: the model that served it and its layer output
/// `y` (as [`crate::MoeOutput::decrypt_y`] gives it).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolAnswer {
    pub model: usize,
    pub y: Vec<i64>,
}

/// The encrypted result of a pool batch.
pub struct PoolBatchOutput {
    /// Per input: the router chain's bits (for the client's own inspection).
    pub decisions: Vec<LweVector>,
    /// Per global slot (each model's slots, then the fallback slots): the serving model's output
    /// terms `y = sum c * term`.
    pub slots: Vec<Vec<(i64, LweVector)>>,
    /// Per input: the bits of its slot in its chosen model, plus 1 (0: the model was full).
    pub chosen_ids: Vec<LweVector>,
    /// Per input: the bits of its fallback slot, plus 1 (0: not in the fallback).
    pub fallback_ids: Vec<LweVector>,
    pub capacities: PoolCapacities,
}

impl PoolLayer {
    /// Evaluates a batch of inputs under `caps`.
    pub fn forward_batch(
        &self,
        ev: &Evaluator,
        inputs: &[PoolInput],
        caps: &PoolCapacities,
    ) -> Result<PoolBatchOutput> {
        let m_count = self.pool().models.len();
        caps.validate(m_count, inputs.len())?;
        let mut decisions = Vec::with_capacity(inputs.len());
        let mut onehots = Vec::with_capacity(inputs.len());
        for x in inputs {
            let (l, o) = self.choose(ev, x)?;
            decisions.push(l);
            onehots.push(o);
        }
        let chosen = dispatch(ev, &onehots, &caps.per_model, OverflowFlags::Compute)?;
        ev.set_stage("dispatch-fallback");
        let bit = onehots[0].encoding();
        let refresh = Lut::univariate(ev.preset(), bit, bit, |v| v.clamp(0, 1))?;
        let flags = chosen
            .overflow
            .iter()
            .map(|o| Ok(ev.pbs(o, &refresh)?))
            .collect::<Result<Vec<_>>>()?;
        let fallback_caps = Capacities::new(vec![caps.fallback_slots])?;
        let fallback = dispatch(ev, &flags, &fallback_caps, OverflowFlags::Skip)?;

        let mut slots: Vec<Option<Vec<(i64, LweVector)>>> =
            (0..caps.total()).map(|_| None).collect();
        for m in 0..m_count {
            let own = caps.per_model.per_destination()[m];
            let extra = if m == caps.fallback_model {
                caps.fallback_slots
            } else {
                0
            };
            if own + extra == 0 {
                continue;
            }
            let layer = &self.layers()[m];
            ev.set_stage("pool-first-stage");
            let firsts = inputs
                .iter()
                .map(|x| layer.first_stage(ev, &x.models[m]))
                .collect::<Result<Vec<FirstStage>>>()?;
            let mut run = |d: &Dispatch, local: usize, global: usize| -> Result<()> {
                ev.set_stage("pool-select");
                let fs = layer.select_first_stage(ev, &d.sources[local], &firsts)?;
                slots[global] = Some(layer.forward_first_stage(ev, &fs)?.y_terms);
                Ok(())
            };
            for s in 0..own {
                let g = caps.per_model.slot(m, s);
                run(&chosen, g, g)?;
            }
            for s in 0..extra {
                run(&fallback, s, caps.per_model.total() + s)?;
            }
        }
        Ok(PoolBatchOutput {
            decisions,
            slots: slots.into_iter().flatten().collect(),
            chosen_ids: chosen.slot_ids,
            fallback_ids: fallback.slot_ids,
            capacities: caps.clone(),
        })
    }
}

impl PoolBatchOutput {
    /// Client side: where each input was answered.
    pub fn decrypt_placements(&self, client: &ClientKey) -> Result<Vec<Placement>> {
        if self.chosen_ids.len() != self.fallback_ids.len()
            || self.slots.len() != self.capacities.total()
        {
            return Err(session("a pool batch result does not match its capacities"));
        }
        let fallback_caps = Capacities::new(vec![self.capacities.fallback_slots])?;
        self.chosen_ids
            .iter()
            .zip(&self.fallback_ids)
            .map(|(c, f)| {
                let chosen = decode_slot_id(&client.decrypt_lwe(c)?, &self.capacities.per_model)?;
                let fallback = decode_slot_id(&client.decrypt_lwe(f)?, &fallback_caps)?;
                Ok(match (chosen, fallback) {
                    (Some(g), None) => Placement::Chosen(g),
                    (None, Some(s)) => Placement::Fallback(s),
                    (None, None) => Placement::Dropped,
                    (Some(_), Some(_)) => {
                        return Err(session("an input placed twice in a pool batch result"))
                    }
                })
            })
            .collect()
    }

    /// Client side: per input, the model that answered it and its layer output `y` (`None`:
    /// dropped), after checking each answering slot's public term structure.
    pub fn decrypt(
        &self,
        client: &ClientKey,
        pool: &veilmoe_model::pool::Pool,
    ) -> Result<Vec<Option<PoolAnswer>>> {
        let per_model = self.capacities.per_model.total();
        self.decrypt_placements(client)?
            .into_iter()
            .map(|p| {
                let slot = match p {
                    Placement::Chosen(g) => g,
                    Placement::Fallback(s) => per_model + s,
                    Placement::Dropped => return Ok(None),
                };
                let m = self
                    .capacities
                    .model_of(slot)
                    .ok_or_else(|| session("a slot outside the batch's capacities"))?;
                let terms = &self.slots[slot];
                if terms
                    .iter()
                    .map(|(c, _)| *c)
                    .ne(output_coefficients(&pool.models[m].moe))
                {
                    return Err(session(format!(
                        "pool batch slot {slot}'s terms differ from model {m}'s public structure"
                    )));
                }
                Ok(Some(PoolAnswer {
                    model: m,
                    y: decrypt_terms(client, terms)?,
                }))
            })
            .collect()
    }
}
