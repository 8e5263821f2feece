//! One encrypted MoE layer: route, select, compute, combine.

use crate::error::{config, Result};
use crate::ffn::FfnTables;
use crate::router::{Gates, RouterTables, Routing, Selection};
use crate::shared::{SharedOutput, SharedProducts, SharedTables};
use crate::strategy::{select_from_products, ExpertStrategy, SlotInput};
use veilmoe_engine::{
    ClientKey, Encoding, EngineError, Evaluator, GgswBit, LweVector, PackedGlwe, PackedRows,
    ValueRange,
};
use veilmoe_model::QuantizedMoe;

/// Largest noise standard deviation of a wide slot output, as a factor on the standard
/// deviation of a PBS input at the preset's budget, at the expert output's own encoding width
/// (each extra bit of the slot encoding divides the allowance by 2). The quantizer keeps W2
/// rows within 8 by default and at most 16 (`QuantizeOptions::wide_output_noise`,
/// `MAX_WIDE_OUTPUT_NOISE`); the margin (1.25) covers the CMUX tree. On `default` this is
/// 0.10 read step: below the read's rounding (0.29 step) the output used to get.
pub const WIDE_OUTPUT_NOISE: f64 = 1.25 * veilmoe_model::quantize::options::MAX_WIDE_OUTPUT_NOISE;

/// A model prepared for one server key: weights laid out and tables filled once.
pub struct MoeLayer {
    model: QuantizedMoe,
    pub(crate) router: RouterTables,
    pub(crate) ffn: FfnTables,
    pub(crate) shared: Option<SharedTables>,
}

/// A token's first-stage products, still packed: the router's accumulators and, per expert,
/// `(W1 x + b1, W3 x + b3)` (W3 for gated FFNs only), and the shared expert's products.
pub struct FirstStage {
    pub router: PackedRows,
    pub experts: Vec<(PackedRows, Option<PackedRows>)>,
    pub shared: Option<SharedProducts>,
}

/// The encrypted result of one token. Everything is under the client's key; the client
/// decrypts `y` (and may inspect the routing of its own token).
pub struct MoeOutput {
    pub routing: Routing,
    /// Each slot's expert output accumulators (d values, wide, at [`output_encoding`]).
    pub slot_outputs: Vec<LweVector>,
    /// The shared expert's gate bits and wide output (Qwen2-MoE; `None` for other families).
    pub shared: Option<SharedOutput>,
    /// The layer output as weighted terms `y = sum c * term` (see [`MoeOutput::decrypt_y`]).
    pub y_terms: Vec<(i64, LweVector)>,
}

impl MoeLayer {
    pub fn new(ev: &Evaluator, model: QuantizedMoe) -> Result<MoeLayer> {
        model.validate()?;
        let router = RouterTables::new(ev, &model)?;
        let ffn = FfnTables::new(ev, &model)?;
        let shared = SharedTables::new(ev, &model)?;
        Ok(MoeLayer {
            model,
            router,
            ffn,
            shared,
        })
    }

    pub fn model(&self) -> &QuantizedMoe {
        &self.model
    }

    /// How the client must encrypt a token (signed values of `message_bits`, packed).
    pub fn input_encoding(&self) -> Encoding {
        Encoding::signed(self.model.input_width())
    }

    /// Client side: quantized token (d values in the signed m-bit range) -> packed ciphertext
    /// with the public value range declared, so the server's range tracking stays tight.
    pub fn encrypt(&self, client: &ClientKey, x: &[i64]) -> Result<PackedGlwe> {
        let d = self.model.config.d.0;
        if x.len() != d {
            return Err(config(format!("a token has {d} values, got {}", x.len())));
        }
        let (lo, hi) = (self.model.quant.input_min(), self.model.quant.input_max());
        if let Some(v) = x.iter().find(|v| **v < lo || **v > hi) {
            return Err(config(format!(
                "token value {v} outside the quantized range [{lo}, {hi}]"
            )));
        }
        let ct = client.encrypt_packed(x, self.input_encoding())?;
        Ok(ct.with_range(ValueRange { min: lo, max: hi })?)
    }

    /// Evaluates the layer on one packed token.
    pub fn forward(
        &self,
        ev: &Evaluator,
        x: &PackedGlwe,
        strategy: &dyn ExpertStrategy,
    ) -> Result<MoeOutput> {
        let needed = strategy.needs_index_ggsw();
        let selection = if needed {
            Selection::IndexGgsw
        } else {
            Selection::OneHot
        };
        let mut routing = self.router.route_selecting(ev, x, selection)?;
        let index_ggsw = self.index_ggsw(ev, &mut routing, needed)?;
        let slot_outputs = strategy.slot_outputs(
            ev,
            &self.ffn,
            x,
            &SlotInput {
                routing: &routing,
                index_ggsw: &index_ggsw,
            },
        )?;
        let shared = match &self.shared {
            Some(t) => {
                ev.set_stage("shared-expert");
                Some(t.products(ev, x)?)
            }
            None => None,
        };
        self.finish(ev, routing, slot_outputs, shared.as_ref())
    }

    /// Every first-stage product of a token (router, each expert's W1 and W3), still packed:
    /// what a CMUX tree chooses among when a batch's tokens are dispatched to slots
    /// ([`MoeLayer::select_first_stage`]). Choosing after the products keeps the CMUX noise
    /// out of the weights' amplification.
    pub fn first_stage(&self, ev: &Evaluator, x: &PackedGlwe) -> Result<FirstStage> {
        let router = self.router.products(ev, x)?;
        ev.set_stage("expert-products");
        let experts = (0..self.model.config.experts.0)
            .map(|e| self.ffn.first_stage(ev, e, x))
            .collect::<Result<Vec<_>>>()?;
        let shared = self
            .shared
            .as_ref()
            .map(|t| t.products(ev, x))
            .transpose()?;
        Ok(FirstStage {
            router,
            experts,
            shared,
        })
    }

    /// The first stage of `candidates[index]`, `index` given by GGSW bits (least significant
    /// first): one CMUX tree per packed product.
    pub fn select_first_stage(
        &self,
        ev: &Evaluator,
        index: &[GgswBit],
        candidates: &[FirstStage],
    ) -> Result<FirstStage> {
        let experts = self.model.config.experts.0;
        let shared = self.shared.is_some();
        if candidates.is_empty()
            || candidates
                .iter()
                .any(|c| c.experts.len() != experts || c.shared.is_some() != shared)
        {
            return Err(config(format!(
                "first stages to choose from must each have {experts} experts' products{}",
                if shared {
                    " and the shared expert's"
                } else {
                    ""
                }
            )));
        }
        let tree =
            |all: Vec<PackedRows>| -> Result<PackedRows> { Ok(ev.cmux_tree_rows(index, &all)?) };
        let router = tree(candidates.iter().map(|c| c.router.clone()).collect())?;
        let experts = (0..experts)
            .map(|e| {
                let u = tree(candidates.iter().map(|c| c.experts[e].0.clone()).collect())?;
                let v: Option<Vec<PackedRows>> =
                    candidates.iter().map(|c| c.experts[e].1.clone()).collect();
                Ok((u, v.map(tree).transpose()?))
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = if shared {
            let all: Vec<&SharedProducts> = candidates.iter().flat_map(|c| &c.shared).collect();
            let u = tree(all.iter().map(|s| s.u.clone()).collect())?;
            let v: Option<Vec<PackedRows>> = all.iter().map(|s| s.v.clone()).collect();
            let gate = tree(all.iter().map(|s| s.gate.clone()).collect())?;
            Some(SharedProducts {
                u,
                v: v.map(tree).transpose()?,
                gate,
            })
        } else {
            None
        };
        Ok(FirstStage {
            router,
            experts,
            shared,
        })
    }

    /// Evaluates the layer, Select-Then-Compute, from a token's first-stage products.
    pub fn forward_first_stage(&self, ev: &Evaluator, fs: &FirstStage) -> Result<MoeOutput> {
        let mut routing = self
            .router
            .route_products(ev, &fs.router, Selection::IndexGgsw)?;
        let index_ggsw = self.index_ggsw(ev, &mut routing, true)?;
        let slot_outputs = select_from_products(ev, &self.ffn, &fs.experts, &index_ggsw)?;
        self.finish(ev, routing, slot_outputs, fs.shared.as_ref())
    }

    /// Each slot's GGSW index bits: those the routing chained, the others circuit-bootstrapped
    /// here (none when the strategy does not need them; empty lists for a single expert).
    fn index_ggsw(
        &self,
        ev: &Evaluator,
        routing: &mut Routing,
        needed: bool,
    ) -> Result<Vec<Vec<GgswBit>>> {
        ev.set_stage("index-ggsw");
        if !needed {
            return Ok(Vec::new());
        }
        if self.router.index_bits() == 0 {
            return Ok(routing.slots.iter().map(|_| Vec::new()).collect());
        }
        routing
            .slots
            .iter_mut()
            .map(|s| match s.index_ggsw.take() {
                Some(chained) => Ok(chained),
                None => Ok(ev.circuit_bootstrap(&s.index_bits)?),
            })
            .collect()
    }

    /// Evaluates the shared expert from its products (when the model has one), checks the
    /// outputs' noise, combines them by the gates and checks the result's public structure.
    fn finish(
        &self,
        ev: &Evaluator,
        routing: Routing,
        slot_outputs: Vec<LweVector>,
        shared_products: Option<&SharedProducts>,
    ) -> Result<MoeOutput> {
        let shared = match (&self.shared, shared_products) {
            (Some(t), Some(p)) => {
                ev.set_stage("shared-expert");
                Some(t.evaluate(ev, &self.ffn, p)?)
            }
            (None, None) => None,
            _ => {
                return Err(config(
                    "the shared expert's products do not match the model (a protocol bug)",
                ))
            }
        };
        self.check_output_noise(ev, &slot_outputs)?;
        if let Some(s) = &shared {
            self.check_output_noise(ev, std::slice::from_ref(&s.output))?;
        }
        ev.set_stage("combine");
        let mut y_terms = self.combine(ev, &routing.gates, &slot_outputs)?;
        if let (Some(t), Some(s)) = (&self.shared, &shared) {
            y_terms.extend(t.terms(ev, s)?);
        }
        let y_terms = split_digits(&self.model, y_terms)?;
        // The client checks responses against the public structure: the layer must produce it.
        if y_terms
            .iter()
            .map(|(c, _)| *c)
            .ne(output_coefficients(&self.model))
        {
            return Err(config(
                "the layer's output terms differ from output_coefficients (a protocol bug)",
            ));
        }
        Ok(MoeOutput {
            routing,
            slot_outputs,
            shared,
            y_terms,
        })
    }

    /// Refuses slot outputs whose tracked noise exceeds [`WIDE_OUTPUT_NOISE`] times the PBS
    /// budget's standard deviation (at the expert output's width). The bound follows from the
    /// public architecture and weights, never from the token.
    pub(crate) fn check_output_noise(&self, ev: &Evaluator, outs: &[LweVector]) -> Result<()> {
        let budget = veilmoe_engine::noise::pbs_input_budget(ev.preset());
        for o in outs {
            let extra = o
                .encoding()
                .width
                .saturating_sub(self.model.encrypted_output_width());
            let allowed = budget * WIDE_OUTPUT_NOISE.powi(2) / 4f64.powi(extra as i32);
            if o.variance() > allowed {
                return Err(EngineError::NoiseBudget {
                    context: "wide expert output (what the client decrypts; W2 rows too large \
                              for this preset)",
                    variance: o.variance(),
                    budget: allowed,
                }
                .into());
            }
        }
        Ok(())
    }

    /// `y = sum_slots g * o` as weighted terms: gate bits are circuit-bootstrapped and multiply
    /// the wide slot outputs by external products (exact, no PBS on the outputs). The client
    /// adds the terms after decryption, which keeps every term at the slot outputs' encoding.
    fn combine(
        &self,
        ev: &Evaluator,
        gates: &Gates,
        outs: &[LweVector],
    ) -> Result<Vec<(i64, LweVector)>> {
        match gates {
            // the slot output itself, or at the gate's full scale G beside a shared expert
            Gates::Constant(_) if self.model.output_is_slot() => Ok(vec![(1, outs[0].clone())]),
            Gates::Constant(_) => Ok(vec![(self.model.quant.gate_max(), outs[0].clone())]),
            Gates::Complementary { g1_bits } => {
                // y = G * o2 + sum_b 2^b * (g1_b ? o1 - o2 : 0)
                let (o1, o2) = (&outs[0], &outs[1]);
                let diff = ev.linear_combination(&[o1, o2], &[1, -1], o1.encoding())?;
                let mut terms = vec![(self.model.quant.gate_max(), o2.clone())];
                for (b, g) in ev.circuit_bootstrap(g1_bits)?.iter().enumerate() {
                    terms.push((1 << b, ev.external_product_lwe(g, &diff)?));
                }
                Ok(terms)
            }
            Gates::PerSlot(all_bits) => {
                let mut terms = Vec::new();
                for (o, bits) in outs.iter().zip(all_bits) {
                    for (b, g) in ev.circuit_bootstrap(bits)?.iter().enumerate() {
                        terms.push((1 << b, ev.external_product_lwe(g, o)?));
                    }
                }
                Ok(terms)
            }
        }
    }
}

/// The public encoding of every output term (and slot output): signed, at the model's
/// [`QuantizedMoe::slot_output_width`]. The client refuses terms at any other encoding.
pub fn output_encoding(model: &QuantizedMoe) -> Encoding {
    Encoding::signed(model.slot_output_width())
}

/// The public coefficients `c` of the layer output's terms `y = sum c * term`, in the order
/// [`MoeLayer::forward`] returns them: they follow from the model alone, so the client checks a
/// response against them before it decrypts anything.
pub fn output_coefficients(model: &QuantizedMoe) -> Vec<i64> {
    let digits = model.output_digit_coefficients();
    whole_output_coefficients(model)
        .into_iter()
        .flat_map(|c| digits.iter().map(move |&f| c * f))
        .collect()
}

/// Each term `(c, [t_hi; t_lo])` of a model with W2 in two digits becomes `(2^k c, t_hi)` and
/// `(c, t_lo)`: every term the client decrypts has d values (terms unchanged without digits).
fn split_digits(
    model: &QuantizedMoe,
    terms: Vec<(i64, LweVector)>,
) -> Result<Vec<(i64, LweVector)>> {
    let digits = model.output_digit_coefficients();
    if digits.len() == 1 {
        return Ok(terms);
    }
    let d = model.config.d.0;
    let mut out = Vec::with_capacity(terms.len() * digits.len());
    for (c, t) in terms {
        for (i, f) in digits.iter().enumerate() {
            out.push((c * f, t.slice(i * d..(i + 1) * d)?));
        }
    }
    Ok(out)
}

/// The coefficients of the layer output's terms before W2's digits are split
/// ([`output_coefficients`]).
fn whole_output_coefficients(model: &QuantizedMoe) -> Vec<i64> {
    let bits = model.quant.gate_bits;
    let powers = (0..bits).map(|b| 1i64 << b);
    let g = model.quant.gate_max();
    let mut c: Vec<i64> = if model.output_is_slot() {
        vec![1]
    } else if model.constant_gates() {
        vec![g]
    } else if model.config.gating == veilmoe_model::Gating::SoftmaxSelected {
        std::iter::once(g).chain(powers.clone()).collect()
    } else {
        (0..model.config.top_k.0)
            .flat_map(|_| powers.clone())
            .collect()
    };
    if model.shared.is_some() {
        c.extend(powers);
    }
    c
}

impl MoeOutput {
    /// Client side: decrypts the layer output `y = sum_terms c * term`.
    pub fn decrypt_y(&self, client: &ClientKey) -> Result<Vec<i64>> {
        decrypt_terms(client, &self.y_terms)
    }
}

/// Client side: decrypts weighted terms `y = sum c * term` (the one place the sum is done).
pub fn decrypt_terms(client: &ClientKey, terms: &[(i64, LweVector)]) -> Result<Vec<i64>> {
    let mut y: Vec<i64> = Vec::new();
    for (c, term) in terms {
        let v = client.decrypt_lwe(term)?;
        if y.is_empty() {
            y = vec![0; v.len()];
        }
        if v.len() != y.len() {
            return Err(config(format!(
                "output terms of {} and {} values",
                y.len(),
                v.len()
            )));
        }
        for (a, b) in y.iter_mut().zip(v) {
            *a = a.saturating_add(c.saturating_mul(b));
        }
    }
    Ok(y)
}
