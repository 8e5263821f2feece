//! Encrypted routing over a pool of models for a batch with public per-model capacities: the
//! saving SecureRouter's per-input choice can give under FHE. The server routes every input,
//! dispatches the inputs obliviously into their chosen models' slots ([`crate::dispatch`]), then
//! the inputs that found their model full into the fallback model's extra slots (a second
//! dispatch on the refreshed overflow flags), and runs each model on its own slots only. It
//! learns the batch size and the capacities, nothing else (tested on the operation trace).
//!
//! Each model's first-stage products (router, W1, W3) are computed for every input, leveled,
//! and each slot CMUX-selects its input's products by the slot's source bits, so the CMUX noise
//! is not amplified by the weights ([`crate::MoeLayer::select_first_stage`]); the slot then runs
//! Select-Then-Compute from there.
//!
//! Cost per batch of `T` inputs with `C_m` slots per model and `F` fallback slots: the router on
//! every input; the dispatch rounds' PBS and circuit bootstraps ([`crate::dispatch`]) plus `T`
//! flag refreshes; per model, `T` first stages (leveled); per slot, its CMUX trees and the model's
//! layer after the first stage. So model `m` costs `C_m` (plus `F` for the fallback) layer
//! evaluations instead of `T`.
//!
//! **Covering fallback.** When the fallback's extra slots can hold every input that may
//! overflow ([`PoolCapacities::covers`]: nothing is ever dropped), every input not placed in
//! another model is answered by the fallback model. The server then runs the fallback model on
//! every input in place and dispatches only into the other models: no dispatch counts, source
//! bits or CMUX trees for the fallback, no overflow flags and no second round. With most inputs
//! routed to one model (a pool's medium model), this is most of the dispatch's cost gone.
//!
//! The client gets every slot's output terms and each input's slot ids (chosen round, fallback
//! round; with a covering fallback, only the other models' round); it decrypts its inputs' ids
//! and the terms of the slot that answered each. A batch is one client's inputs under one key.

use crate::dispatch::{decode_slot_id, dispatch, Dispatch, OverflowFlags};
use crate::error::{session, Result};
use crate::layer::{decrypt_terms, output_coefficients, FirstStage};
use crate::pool::{PoolInput, PoolLayer};
use veilmoe_engine::{ClientKey, Evaluator, Lut, LweVector};
use veilmoe_model::capacity::Capacities;
use veilmoe_model::pool::{place, Placement, PoolCapacities};
use veilmoe_model::pool_router::chain_winner;

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
    /// Per input: the bits of its fallback slot, plus 1 (0: not in the fallback). Empty when the
    /// fallback covers the batch.
    pub fallback_ids: Vec<LweVector>,
    pub capacities: PoolCapacities,
    /// The fallback model ran on every input in place ([`PoolCapacities::covers`]): `slots` are
    /// the other models' slots (in their order), then one per input; `chosen_ids` number the
    /// other models' slots.
    pub covered: bool,
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
        if caps.covers(inputs.len()) {
            return self.forward_covered(ev, inputs, caps, decisions, &onehots);
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
            let firsts = self.first_stages(ev, m, inputs)?;
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
            covered: false,
        })
    }

    /// Model `m`'s first-stage products on every input (leveled).
    fn first_stages(
        &self,
        ev: &Evaluator,
        m: usize,
        inputs: &[PoolInput],
    ) -> Result<Vec<FirstStage>> {
        ev.set_stage("pool-first-stage");
        inputs
            .iter()
            .map(|x| self.layers()[m].first_stage(ev, &x.models[m]))
            .collect()
    }

    /// The batch under a covering fallback: one dispatch into the other models' slots (on the
    /// one-hots without the fallback's column), then the fallback model on every input.
    fn forward_covered(
        &self,
        ev: &Evaluator,
        inputs: &[PoolInput],
        caps: &PoolCapacities,
        decisions: Vec<LweVector>,
        onehots: &[LweVector],
    ) -> Result<PoolBatchOutput> {
        let f = caps.fallback_model;
        let others = other_models(caps);
        let other_caps = other_capacities(caps)?;
        let columns = onehots
            .iter()
            .map(|o| {
                let parts = others
                    .iter()
                    .map(|&m| Ok(o.slice(m..m + 1)?))
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&LweVector> = parts.iter().collect();
                Ok(LweVector::concat(&refs)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let chosen = dispatch(ev, &columns, &other_caps, OverflowFlags::Skip)?;
        let mut slots = Vec::with_capacity(other_caps.total() + inputs.len());
        for (k, &m) in others.iter().enumerate() {
            let own = other_caps.per_destination()[k];
            if own == 0 {
                continue;
            }
            let layer = &self.layers()[m];
            let firsts = self.first_stages(ev, m, inputs)?;
            for s in 0..own {
                ev.set_stage("pool-select");
                let g = other_caps.slot(k, s);
                let fs = layer.select_first_stage(ev, &chosen.sources[g], &firsts)?;
                slots.push(layer.forward_first_stage(ev, &fs)?.y_terms);
            }
        }
        let layer = &self.layers()[f];
        for fs in self.first_stages(ev, f, inputs)? {
            ev.set_stage("pool-fallback");
            slots.push(layer.forward_first_stage(ev, &fs)?.y_terms);
        }
        Ok(PoolBatchOutput {
            decisions,
            slots,
            chosen_ids: chosen.slot_ids,
            fallback_ids: Vec::new(),
            capacities: caps.clone(),
            covered: true,
        })
    }
}

/// The models other than the fallback, in order.
fn other_models(caps: &PoolCapacities) -> Vec<usize> {
    (0..caps.per_model.destinations())
        .filter(|&m| m != caps.fallback_model)
        .collect()
}

/// Their capacities (the covering dispatch's destinations).
fn other_capacities(caps: &PoolCapacities) -> Result<Capacities> {
    let per = caps.per_model.per_destination();
    Ok(Capacities::new(
        other_models(caps).iter().map(|&m| per[m]).collect(),
    )?)
}

impl PoolBatchOutput {
    /// Client side: where each input was answered, as the batch rule ([`place`]) numbers it.
    pub fn decrypt_placements(&self, client: &ClientKey) -> Result<Vec<Placement>> {
        let caps = &self.capacities;
        if self.covered {
            return self.decrypt_covered_placements(client);
        }
        if self.chosen_ids.len() != self.fallback_ids.len() || self.slots.len() != caps.total() {
            return Err(session("a pool batch result does not match its capacities"));
        }
        let fallback_caps = Capacities::new(vec![caps.fallback_slots])?;
        self.chosen_ids
            .iter()
            .zip(&self.fallback_ids)
            .map(|(c, f)| {
                let chosen = decode_slot_id(&client.decrypt_lwe(c)?, &caps.per_model)?;
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

    /// Under a covering fallback the server computed slot ids for the other models only: the
    /// client places its batch by the rule on the choices its chain bits give, and refuses a
    /// result whose slot ids disagree with that placement.
    fn decrypt_covered_placements(&self, client: &ClientKey) -> Result<Vec<Placement>> {
        let caps = &self.capacities;
        let n = self.decisions.len();
        let other_caps = other_capacities(caps)?;
        if self.chosen_ids.len() != n || self.slots.len() != other_caps.total() + n {
            return Err(session("a pool batch result does not match its capacities"));
        }
        let choices = self
            .decisions
            .iter()
            .map(|d| {
                chain_winner(&client.decrypt_lwe(d)?)
                    .filter(|&m| m < caps.per_model.destinations())
                    .ok_or_else(|| session("a pool batch input's chain bits choose no model"))
            })
            .collect::<Result<Vec<_>>>()?;
        let placements = place(&choices, caps)?;
        for (i, (p, id)) in placements.iter().zip(&self.chosen_ids).enumerate() {
            let got = decode_slot_id(&client.decrypt_lwe(id)?, &other_caps)?;
            if got != self.other_slot(*p)? {
                return Err(session(format!(
                    "pool batch input {i}: its slot id {got:?} disagrees with its routing's \
                     placement {p:?}"
                )));
            }
        }
        Ok(placements)
    }

    /// Under a covering fallback: the other models' slot holding a placement (`None`: the
    /// fallback model answers it).
    fn other_slot(&self, p: Placement) -> Result<Option<usize>> {
        let caps = &self.capacities;
        let Placement::Chosen(g) = p else {
            return Ok(None);
        };
        let (m, s) = caps
            .per_model
            .locate(g)
            .ok_or_else(|| session("a slot outside the batch's capacities"))?;
        if m == caps.fallback_model {
            return Ok(None);
        }
        let k = other_models(caps)
            .iter()
            .position(|&o| o == m)
            .ok_or_else(|| session("a slot outside the batch's capacities"))?;
        Ok(Some(other_capacities(caps)?.slot(k, s)))
    }

    /// The output slot that answers input `input` placed at `p` (`None`: dropped).
    pub fn answer_slot(&self, input: usize, p: Placement) -> Result<Option<usize>> {
        if self.covered {
            return Ok(Some(match self.other_slot(p)? {
                Some(g) => g,
                None => other_capacities(&self.capacities)?.total() + input,
            }));
        }
        Ok(match p {
            Placement::Chosen(g) => Some(g),
            Placement::Fallback(s) => Some(self.capacities.per_model.total() + s),
            Placement::Dropped => None,
        })
    }

    /// The model serving an output slot.
    pub fn slot_model(&self, slot: usize) -> Option<usize> {
        let caps = &self.capacities;
        if !self.covered {
            return caps.model_of(slot);
        }
        let other_caps = other_capacities(caps).ok()?;
        match other_caps.locate(slot) {
            Some((k, _)) => other_models(caps).get(k).copied(),
            None => (slot < self.slots.len()).then_some(caps.fallback_model),
        }
    }

    /// Client side: per input, the model that answered it and its layer output `y` (`None`:
    /// dropped), after checking each answering slot's public term structure.
    pub fn decrypt(
        &self,
        client: &ClientKey,
        pool: &veilmoe_model::pool::Pool,
    ) -> Result<Vec<Option<PoolAnswer>>> {
        self.decrypt_placements(client)?
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let Some(slot) = self.answer_slot(i, p)? else {
                    return Ok(None);
                };
                let (m, terms) = self
                    .slot_model(slot)
                    .zip(self.slots.get(slot))
                    .ok_or_else(|| session("a slot outside the batch's capacities"))?;
                let model = pool.models.get(m).ok_or_else(|| {
                    session(format!("slot {slot}'s model {m} is not in the pool"))
                })?;
                if terms
                    .iter()
                    .map(|(c, _)| *c)
                    .ne(output_coefficients(&model.moe))
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
