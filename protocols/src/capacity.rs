//! The MoE layer over a batch with expert capacities (the `capacity` strategy, after Switch
//! Transformers' capacity factor and CryptoMoE's fixed per-expert token counts): every token is
//! routed as under Select-Then-Compute, its (token, choice) entries are dispatched obliviously
//! into each expert's public slots ([`crate::dispatch`]), and each expert runs on its own slots
//! only, with its own weights. Entries past an expert's capacity are dropped, as in Switch
//! Transformers: that choice contributes nothing to the token's output.
//!
//! Per token the server runs the router and the top-k tournament (as `select`) and nothing that
//! grows with E afterwards: no index-bit circuit bootstraps, no E-fold first- and second-stage
//! products, no CMUX over experts. Per batch it runs the dispatch (PBS, circuit bootstraps and
//! CMUX trees counted in [`crate::dispatch`]) and, per slot, one expert FFN. So it pays off where
//! select's E-fold leveled work outweighs the dispatch: large d, h and E, and batches whose slots
//! are well used.
//!
//! The client receives every slot's output (wide, as under select), each entry's slot id and
//! each token's routing; it decrypts its tokens' gates and slot ids and adds the gated outputs
//! of the slots its entries hold. A batch is one client's records under one key, so no other
//! party's result is disclosed.
//!
//! A shared expert (Qwen2-MoE) is routed by nobody: it runs on every token
//! ([`crate::shared`]), and the client decrypts its gate bits and wide output and adds
//! `g * o` itself, so the capacity path spends no circuit bootstrap on the shared gate.

use crate::dispatch::{decode_slot_id, dispatch, Dispatch, OverflowFlags};
use crate::error::{config, Result};
use crate::layer::MoeLayer;
use crate::router::Routing;
use crate::shared::SharedOutput;
use veilmoe_engine::{ClientKey, Evaluator, LweVector, PackedGlwe};
use veilmoe_model::capacity::{entries, entry, Capacities};

/// The encrypted result of a batch under expert capacities.
pub struct CapacityOutput {
    /// Per token, its routing (the client decrypts its gates).
    pub routings: Vec<Routing>,
    /// Per entry (token `t`'s `k`-th choice is entry `k * tokens + t`): its slot-id bits.
    pub slot_ids: Vec<LweVector>,
    /// Per global slot: the output accumulators of the slot's expert (wide: d values, or 2d
    /// with W2 in two digits).
    pub slot_outputs: Vec<LweVector>,
    /// Per token: the shared expert's gate bits and wide output (empty without one).
    pub shared: Vec<SharedOutput>,
    pub capacities: Capacities,
}

impl MoeLayer {
    /// Evaluates the layer on a batch of packed tokens with `caps` slots per expert.
    pub fn forward_capacity(
        &self,
        ev: &Evaluator,
        tokens: &[PackedGlwe],
        caps: &Capacities,
    ) -> Result<CapacityOutput> {
        let model = self.model();
        let experts = model.config.experts.0;
        if caps.destinations() != experts {
            return Err(config(format!(
                "capacities for {} experts, the model has {experts}",
                caps.destinations()
            )));
        }
        if tokens.is_empty() {
            return Err(config("a capacity batch needs at least one token"));
        }
        let routings = tokens
            .iter()
            .map(|x| self.router.route(ev, x))
            .collect::<Result<Vec<_>>>()?;
        let n = entries(tokens.len(), model.config.top_k);
        let mut choices = Vec::with_capacity(n);
        for k in 0..model.config.top_k.0 {
            for (t, routing) in routings.iter().enumerate() {
                debug_assert_eq!(choices.len(), entry(tokens.len(), t, k));
                let onehot = routing.slots[k].onehot.clone().ok_or_else(|| {
                    config("capacity dispatch needs the one-hot routing (a protocol bug)")
                })?;
                choices.push(onehot);
            }
        }
        let d = dispatch(ev, &choices, caps, OverflowFlags::Skip)?;
        let slot_outputs = self.run_slots(ev, tokens, &d, caps)?;
        self.check_output_noise(ev, &slot_outputs)?;
        let shared = match &self.shared {
            Some(t) => tokens
                .iter()
                .map(|x| {
                    ev.set_stage("shared-expert");
                    let out = t.evaluate(ev, &self.ffn, &t.products(ev, x)?)?;
                    self.check_output_noise(ev, std::slice::from_ref(&out.output))?;
                    Ok(out)
                })
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok(CapacityOutput {
            routings,
            slot_ids: d.slot_ids,
            slot_outputs,
            shared,
            capacities: caps.clone(),
        })
    }

    /// Each expert's FFN on its own slots: its first-stage products of every token (leveled),
    /// per slot a CMUX tree over the entries' products by the slot's source bits, one batch of
    /// hidden reads per expert (its slots together), second stages per slot.
    fn run_slots(
        &self,
        ev: &Evaluator,
        tokens: &[PackedGlwe],
        d: &Dispatch,
        caps: &Capacities,
    ) -> Result<Vec<LweVector>> {
        let h = self.model().config.h.0;
        let entries = d.slot_ids.len();
        let mut outputs = Vec::with_capacity(caps.total());
        for (e, &c) in caps.per_destination().iter().enumerate() {
            if c == 0 {
                continue;
            }
            ev.set_stage("expert-products");
            let firsts = tokens
                .iter()
                .map(|x| self.ffn.first_stage(ev, e, x))
                .collect::<Result<Vec<_>>>()?;
            // entry i is token i % T's (the products are the same for each of its choices)
            let u_all: Vec<_> = (0..entries)
                .map(|i| firsts[i % tokens.len()].0.clone())
                .collect();
            let v_all: Option<Vec<_>> = (0..entries)
                .map(|i| firsts[i % tokens.len()].1.clone())
                .collect();
            ev.set_stage("dispatch-select");
            let mut us = Vec::with_capacity(c);
            let mut vs = Vec::with_capacity(c);
            for s in 0..c {
                let bits = &d.sources[caps.slot(e, s)];
                us.push(ev.extract_rows(&ev.cmux_tree_rows(bits, &u_all)?)?);
                if let Some(v_all) = &v_all {
                    vs.push(ev.extract_rows(&ev.cmux_tree_rows(bits, v_all)?)?);
                }
            }
            ev.set_stage("expert");
            let u = LweVector::concat(&us.iter().collect::<Vec<_>>())?;
            let v = if vs.is_empty() {
                None
            } else {
                Some(LweVector::concat(&vs.iter().collect::<Vec<_>>())?)
            };
            let a = self.ffn.hidden(ev, &u, v.as_ref())?;
            for s in 0..c {
                outputs.push(
                    self.ffn
                        .second_stage(ev, e, &a.slice(s * h..(s + 1) * h)?)?,
                );
            }
        }
        Ok(outputs)
    }
}

impl CapacityOutput {
    /// Client side: each entry's global slot (`None`: dropped past its expert's capacity), in
    /// entry order.
    pub fn decrypt_slots(&self, client: &ClientKey) -> Result<Vec<Option<usize>>> {
        self.slot_ids
            .iter()
            .map(|ct| decode_slot_id(&client.decrypt_lwe(ct)?, &self.capacities))
            .collect()
    }

    /// Client side: every token's layer output `y` (as [`crate::MoeOutput::decrypt_y`] gives
    /// it): the gated sum of the outputs of the slots its entries hold, zero for a dropped
    /// entry, plus the gated shared expert's output.
    pub fn decrypt_y(
        &self,
        client: &ClientKey,
        model: &veilmoe_model::QuantizedMoe,
    ) -> Result<Vec<Vec<i64>>> {
        let tokens = self.routings.len();
        let d = model.config.d.0;
        let slots = self.decrypt_slots(client)?;
        let outs = self
            .slot_outputs
            .iter()
            .map(|o| Ok(model.fold_output_digits(&client.decrypt_lwe(o)?)))
            .collect::<Result<Vec<_>>>()?;
        (0..tokens)
            .map(|t| {
                let gates = self.routings[t].decrypt_gates(client, model.quant.gate_max())?;
                let chosen: Vec<Vec<i64>> = (0..model.config.top_k.0)
                    .map(|k| match slots[entry(tokens, t, k)] {
                        Some(g) => outs[g].clone(),
                        None => vec![0; d],
                    })
                    .collect();
                let mut y = model.combine(&gates, &chosen);
                if model.shared.is_some() {
                    let s = self.shared.get(t).ok_or_else(|| {
                        crate::error::session("the response lacks a token's shared expert")
                    })?;
                    let g = s.decrypt_gate(client)?;
                    let o = model.fold_output_digits(&client.decrypt_lwe(&s.output)?);
                    for (yi, oi) in y.iter_mut().zip(o) {
                        *yi += g * oi;
                    }
                }
                Ok(y)
            })
            .collect()
    }
}
