//! Encrypted routing: router logits, tournament argmax, top-k and gates, all with the preset's
//! small exact PBS reads.
//!
//! Cost for E experts (L = ceil(log2 E) tournament levels), in PBS:
//! - logits: E (one requantizing read per router accumulator);
//! - argmax: E - 1 comparisons `[b > a]` and E - 2 maxima `a + relu(b - a)` (one more when the
//!   winning value is needed), then the one-hot reads: E, or for E a power of two E / 2 up to
//!   16 experts and E / 2 + E / 8 beyond (see `onehot.rs`). Each leaf's one-hot input is
//!   the leveled sum of the comparison bits on its path: `t_i = sum(won_node - 1)`, zero iff it
//!   won every match; ties go to the left (lower index) because the comparison is strict. Index
//!   bits are leveled sums of the one-hot (above 16 experts, the bits above the groups of 8 sum
//!   the group bits), plus one refresh PBS per 24 terms beyond the noise budget's 25 on
//!   `default` (3 at E = 64, 6 at E = 128). No data-dependent choice anywhere: the bracket is
//!   public. Where only GGSW index bits are needed ([`Selection::IndexGgsw`]) and E >= 32 is a
//!   power of two, no one-hot is read: the chain of `index_chain.rs` circuit-bootstraps the
//!   final's bit and selects each lower bit by a CMUX tree over its round (L bootstraps in
//!   sequence, no PBS).
//! - top-2: E masking reads (the winner drops below every logit) and a second tournament.
//! - gates: `gate_bits` reads per slot (Mixtral k = 2: once, the second gate is the bitwise
//!   complement), plus E term reads per slot for Switch gating.
//!
//! Keyswitches: one per PBS input value, not per PBS: a comparison and the maximum below it
//! read the same difference, and a gate's bits the same value, through one keyswitch
//! ([`Evaluator::pbs_each`]).

mod tournament;

use crate::error::{config, Result};
use crate::index_bits::index_bits_of;
use crate::index_chain::{chain_fits, CHAIN_MIN_EXPERTS};
use crate::onehot::PairedOnehot;
use crate::pairwise::PairwiseTables;
use veilmoe_engine::{
    ClientKey, Cols, Encoding, Evaluator, GgswBit, Lut, LweVector, PackedGlwe, PackedRows,
    PackedWeights, Rows, WeightMatrix,
};
use veilmoe_model::quant;
use veilmoe_model::quantized::RouterSpec;
use veilmoe_model::{index_bits, Gating, QuantizedMoe};

/// Lookup tables and weights of the router, built once per model and preset.
pub struct RouterTables {
    router: PackedWeights,
    bias: Option<Vec<i64>>,
    logit: Lut,
    cmp: Lut,
    relu_neg: Lut,
    onehot: Lut,
    /// Identity on a bit: refreshes a partial sum of one-hot values (a bit) to one PBS's noise.
    bit_refresh: Lut,
    /// For E a power of two: the one-hot of both leaves of a first-round pair from one blind
    /// rotation (a two-function many-LUT), about halving the one-hot's PBS.
    onehot_pairs: Option<PairedOnehot>,
    /// Pairwise routing's tables (`None`: the tournament).
    pairwise: Option<PairwiseTables>,
    /// Whether GGSW index bits come from a chain of circuit bootstraps rather than the one-hot
    /// (a power-of-two tournament of at least `CHAIN_MIN_EXPERTS`; see `index_chain.rs`).
    chain: bool,
    loser: Lut,
    mask: Lut,
    gate_bits: Vec<Lut>,
    switch_terms: Option<Lut>,
    switch_gate_bits: Vec<Lut>,
    experts: usize,
    top_k: usize,
    gating: Gating,
    /// Encoding of the one-hot and index bits.
    index_encoding: Encoding,
    gate_max: i64,
    switch_encoding: Encoding,
}

/// What a routing must deliver besides each slot's index bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Each slot's one-hot (capacity dispatch, public routing, a client inspecting its routing).
    OneHot,
    /// Each slot's index bits as GGSWs for CMUX trees (Select-Then-Compute, compute-all). A
    /// large tournament then chains circuit bootstraps and reads no one-hot.
    IndexGgsw,
}

/// One selected slot of a token, all encrypted. With a single expert there is nothing to
/// choose: the one-hot is the public constant 1 and there are no index bits.
pub struct SlotRouting {
    /// E values, 1 at the selected expert; `None` where [`Selection::IndexGgsw`] was asked of a
    /// tournament that chains its index bits instead.
    pub onehot: Option<LweVector>,
    /// ceil(log2 E) bits of the selected index, least significant first (one zero bit when E = 1).
    pub index_bits: LweVector,
    /// The selected logit.
    pub logit: LweVector,
    /// Switch gating: the slot's partition sum.
    pub partition_sum: Option<LweVector>,
    /// The index bits already circuit-bootstrapped (by the chain), least significant first.
    pub index_ggsw: Option<Vec<GgswBit>>,
}

/// How the slots' outputs are weighted.
pub enum Gates {
    /// Public constant gates (Mixtral with k = 1: the single gate is 1.0 = G).
    Constant(Vec<i64>),
    /// Mixtral k = 2: bits of g1 (least significant first); g2 = G - g1 is their complement.
    Complementary { g1_bits: LweVector },
    /// Switch gating: the bits of each slot's gate.
    PerSlot(Vec<LweVector>),
}

/// The encrypted routing of one token.
pub struct Routing {
    /// Router logits (E values in [0, logit_max]); `None` where nothing reads them (pairwise
    /// routing with a constant gate, which compares the accumulators themselves).
    pub logits: Option<LweVector>,
    /// Pairwise routing's comparison bits `[acc_j > acc_i]` (in
    /// `veilmoe_model::pairwise::pairs` order); `None` for the tournament.
    pub comparisons: Option<LweVector>,
    pub slots: Vec<SlotRouting>,
    pub gates: Gates,
}

/// Client side: the value of encrypted bits, least significant first (a gate from its bits).
pub fn decrypt_bits_value(client: &ClientKey, bits: &LweVector) -> Result<i64> {
    Ok(client
        .decrypt_lwe(bits)?
        .iter()
        .enumerate()
        .map(|(b, &v)| v << b)
        .sum())
}

/// One PBS per table on a single value (keyswitched once for all of them); the bits come back
/// as one vector (a gate's bits).
pub(crate) fn read_bits(ev: &Evaluator, x: &LweVector, tables: &[Lut]) -> Result<LweVector> {
    let tables: Vec<&Lut> = tables.iter().collect();
    let bits = ev.pbs_each(x, &tables)?;
    let refs: Vec<&LweVector> = bits.iter().collect();
    Ok(LweVector::concat(&refs)?)
}

impl Routing {
    /// Client side: the gate value of each slot (in `[0, g_max]`), decrypted from the gate
    /// bits, for a client inspecting its own token's routing.
    pub fn decrypt_gates(&self, client: &ClientKey, g_max: i64) -> Result<Vec<i64>> {
        let value = |bits: &LweVector| decrypt_bits_value(client, bits);
        match &self.gates {
            Gates::Constant(g) => Ok(g.clone()),
            Gates::Complementary { g1_bits } => {
                let g1 = value(g1_bits)?;
                Ok(vec![g1, g_max - g1])
            }
            Gates::PerSlot(bits) => bits.iter().map(value).collect(),
        }
    }
}

impl RouterTables {
    /// The tables of an MoE layer's router (the model is validated first).
    pub fn new(ev: &Evaluator, model: &QuantizedMoe) -> Result<RouterTables> {
        model.validate()?;
        Self::from_spec(ev, &model.router_spec())
    }

    /// The tables of any router (an MoE layer's, a model pool's): weights laid out, logit,
    /// tournament and gate tables filled. The owner has validated the spec's shapes.
    pub fn from_spec(ev: &Evaluator, spec: &RouterSpec) -> Result<RouterTables> {
        let p = ev.preset();
        let q = spec.quant;
        let m = q.message_bits;
        // A model quantized for fewer bits than the preset reads runs on it unchanged: its
        // tables have fewer, wider boxes, so every read has more noise margin than the preset's
        // budget (which the engine still enforces) assumes.
        if m > p.message_bits {
            return Err(config(format!(
                "the model is quantized for {m}-bit PBS reads, the preset `{}` reads only {}",
                p.name, p.message_bits
            )));
        }
        let (e, d) = (spec.experts, spec.d);
        let small = Encoding::signed(m);
        let width = spec.input_width;
        let shift = width.checked_sub(m).ok_or_else(|| {
            config(format!(
                "the router's input width {width} is below its {m}-bit reads"
            ))
        })?;
        let router = crate::ffn::first_stage_weights(p, spec.weights, e, d, spec.declared)?;
        let logit = Lut::requantize(p, Encoding::signed(width), shift, small, |v| q.logit(v))?;
        let cmp = Lut::univariate(p, small, small, |dv| (dv < 0) as i64)?;
        let relu_neg = Lut::univariate(p, small, small, |dv| (-dv).clamp(0, small.max()))?;
        let index_encoding = small;
        let onehot = Lut::univariate(p, small, index_encoding, |t| (t == 0) as i64)?;
        let bit_refresh = Lut::univariate(p, index_encoding, index_encoding, |v| v.clamp(0, 1))?;
        let onehot_pairs = PairedOnehot::new(p, e, m, index_encoding)?;
        let pairwise = if spec.pairwise {
            Some(PairwiseTables::new(p, spec, index_encoding)?)
        } else {
            None
        };
        let chain = pairwise.is_none()
            && e.is_power_of_two()
            && e >= CHAIN_MIN_EXPERTS
            && chain_fits(p, e.trailing_zeros() as usize);
        let loser = Lut::univariate(p, small, small, |t| {
            if t == 0 {
                -(q.logit_max() + 1)
            } else {
                0
            }
        })?;
        let mask = Lut::univariate(p, small, small, |u| {
            if u >= 0 {
                u.min(q.logit_max())
            } else {
                -1
            }
        })?;
        // Gate bits are circuit-bootstrapped: they take the index bits' m-bit encoding, whose
        // margin is the one the circuit bootstrap's noise budget assumes (a wider encoding
        // would halve it per bit of width).
        let gate_encoding = index_encoding;
        let g = q.gate_max();
        let gate_bits = (0..q.gate_bits)
            .map(|b| {
                // the tournament's first slot never has the lower logit, but pairwise routing's
                // can (a near-tie cycle, or two near-equal accumulators read a box apart): the
                // gate is the softmax of the difference either way, as the reference's
                Lut::univariate(p, small, gate_encoding, |dv| {
                    (quant::mixtral_gate(dv, q.logit_scale, g) >> b) & 1
                })
            })
            .collect::<veilmoe_engine::Result<Vec<_>>>()?;
        let zhi = q.switch_cap() as i128 * e as i128;
        let switch_encoding = Encoding::signed(quant::read_width(0, zhi, m));
        let (switch_terms, switch_gate_bits) = if spec.gating == Gating::SoftmaxThenTopK {
            let terms = Lut::univariate(p, small, switch_encoding, |dv| {
                quant::switch_term(dv, q.logit_scale, q.switch_numerator, q.switch_cap())
            })?;
            let zs = spec.partition_shift;
            let bits = (0..q.gate_bits)
                .map(|b| {
                    Lut::requantize(p, switch_encoding, zs, gate_encoding, |zq| {
                        (quant::switch_gate(zq, zs, q.switch_numerator, g) >> b) & 1
                    })
                })
                .collect::<veilmoe_engine::Result<Vec<_>>>()?;
            (Some(terms), bits)
        } else {
            (None, Vec::new())
        };
        Ok(RouterTables {
            router,
            bias: spec.bias.map(<[i64]>::to_vec),
            logit,
            cmp,
            relu_neg,
            onehot,
            bit_refresh,
            onehot_pairs,
            pairwise,
            chain,
            loser,
            mask,
            gate_bits,
            switch_terms,
            switch_gate_bits,
            experts: e,
            top_k: spec.top_k,
            gating: spec.gating,
            index_encoding,
            gate_max: q.gate_max(),
            switch_encoding,
        })
    }

    /// Number of index bits.
    pub fn index_bits(&self) -> usize {
        index_bits(self.experts)
    }

    /// Router logits of a packed token.
    pub fn logits(&self, ev: &Evaluator, x: &PackedGlwe) -> Result<LweVector> {
        ev.set_stage("router");
        let acc = ev.packed_matvec(&self.router, self.bias.as_deref(), x)?;
        Ok(ev.pbs(&acc, &self.logit)?)
    }

    /// The router's accumulators `Wr x + br`, still packed (for a CMUX tree to choose among
    /// several tokens' before they are read).
    pub fn products(&self, ev: &Evaluator, x: &PackedGlwe) -> Result<PackedRows> {
        ev.set_stage("router");
        Ok(ev.packed_products(&self.router, self.bias.as_deref(), x)?)
    }

    /// The full routing of one token, with each slot's one-hot.
    pub fn route(&self, ev: &Evaluator, x: &PackedGlwe) -> Result<Routing> {
        self.route_selecting(ev, x, Selection::OneHot)
    }

    /// The full routing of one token, delivering what `selection` asks.
    pub fn route_selecting(
        &self,
        ev: &Evaluator,
        x: &PackedGlwe,
        selection: Selection,
    ) -> Result<Routing> {
        ev.set_stage("router");
        let acc = ev.packed_matvec(&self.router, self.bias.as_deref(), x)?;
        self.route_accumulators(ev, acc, selection)
    }

    /// The full routing from packed router accumulators ([`RouterTables::products`]).
    pub fn route_products(
        &self,
        ev: &Evaluator,
        acc: &PackedRows,
        selection: Selection,
    ) -> Result<Routing> {
        ev.set_stage("router");
        self.route_accumulators(ev, ev.extract_rows(acc)?, selection)
    }

    /// Logits read from the accumulators, then the tournament or pairwise routing.
    fn route_accumulators(
        &self,
        ev: &Evaluator,
        acc: LweVector,
        selection: Selection,
    ) -> Result<Routing> {
        match &self.pairwise {
            None => self.route_logits(ev, ev.pbs(&acc, &self.logit)?, selection),
            Some(pw) => {
                // the gates of top-2 and Switch gating read the logits; a constant gate does not
                let logits = if self.gates_read_logits() {
                    Some(ev.pbs(&acc, &self.logit)?)
                } else {
                    None
                };
                ev.set_stage("top-k");
                let decision = pw.decide(ev, &acc, logits.as_ref(), self.index_encoding)?;
                let mut slots = Vec::with_capacity(decision.slots.len());
                for (onehot, logit) in decision.slots {
                    // a near-tie cycle may put several experts in a rank: the sums are clamped
                    // to bits (the OR of their indices) so that circuit bootstrapping reads bits
                    let sums =
                        index_bits_of(ev, &onehot, None, self.index_bits(), &self.bit_refresh)?;
                    slots.push(SlotRouting {
                        index_bits: ev.pbs(&sums, &self.bit_refresh)?,
                        onehot: Some(onehot),
                        index_ggsw: None,
                        // a placeholder of the right shape where the gates need no logit
                        logit: match logit {
                            Some(l) => l,
                            None => ev.trivial(&[0], self.index_encoding)?,
                        },
                        partition_sum: None,
                    });
                }
                ev.set_stage("gates");
                let gates = self.gates(ev, logits.as_ref(), &mut slots)?;
                Ok(Routing {
                    logits,
                    comparisons: Some(decision.comparisons),
                    slots,
                    gates,
                })
            }
        }
    }

    /// Top-k and gates from the logits.
    fn route_logits(
        &self,
        ev: &Evaluator,
        logits: LweVector,
        selection: Selection,
    ) -> Result<Routing> {
        ev.set_stage("top-k");
        let need_value = self.top_k > 1 || self.gating == Gating::SoftmaxThenTopK;
        let first = self.argmax(ev, &logits, need_value, selection)?;
        let mut slots = vec![first.slot];
        if self.top_k == 2 {
            // The winner drops to [-logit_max - 1, -1], below every remaining logit.
            let drop = ev.pbs(&first.path_sums, &self.loser)?;
            let u = ev.linear_combination(&[&logits, &drop], &[1, 1], logits.encoding())?;
            let masked = ev.pbs(&u, &self.mask)?;
            slots.push(self.argmax(ev, &masked, true, selection)?.slot);
        }
        ev.set_stage("gates");
        let gates = self.gates(ev, Some(&logits), &mut slots)?;
        Ok(Routing {
            logits: Some(logits),
            comparisons: None,
            slots,
            gates,
        })
    }

    /// Whether the gates read the logits (Mixtral top-2: the slots' logits; Switch: all).
    fn gates_read_logits(&self) -> bool {
        self.top_k > 1 || self.gating == Gating::SoftmaxThenTopK
    }

    /// The slots' gates; `logits` where [`RouterTables::gates_read_logits`].
    fn gates(
        &self,
        ev: &Evaluator,
        logits: Option<&LweVector>,
        slots: &mut [SlotRouting],
    ) -> Result<Gates> {
        match (self.gating, slots.len()) {
            (Gating::SoftmaxSelected, 1) => Ok(Gates::Constant(vec![self.gate_max()])),
            (Gating::SoftmaxSelected, _) => {
                let delta = ev.linear_combination(
                    &[&slots[0].logit, &slots[1].logit],
                    &[1, -1],
                    slots[0].logit.encoding(),
                )?;
                let bits = read_bits(ev, &delta, &self.gate_bits)?;
                Ok(Gates::Complementary { g1_bits: bits })
            }
            (Gating::SoftmaxThenTopK, _) => {
                let terms_lut = self
                    .switch_terms
                    .as_ref()
                    .ok_or_else(|| config("Switch tables missing"))?;
                let logits = logits.ok_or_else(|| config("Switch gating reads the logits"))?;
                let mut all = Vec::with_capacity(slots.len());
                for slot in slots.iter_mut() {
                    let v: Vec<&LweVector> =
                        std::iter::repeat_n(&slot.logit, self.experts).collect();
                    let v = LweVector::concat(&v)?;
                    let diff = ev.linear_combination(&[logits, &v], &[1, -1], logits.encoding())?;
                    let terms = ev.pbs(&diff, terms_lut)?;
                    let ones =
                        WeightMatrix::new(Rows(1), Cols(self.experts), vec![1; self.experts])?;
                    let z = ev.lwe_matvec(&ones, None, &terms)?;
                    let z = z.with_encoding(self.switch_encoding)?;
                    all.push(read_bits(ev, &z, &self.switch_gate_bits)?);
                    slot.partition_sum = Some(z);
                }
                Ok(Gates::PerSlot(all))
            }
        }
    }

    pub fn gate_max(&self) -> i64 {
        self.gate_max
    }

    /// Encrypted argmax of E logits (signed m-bit encoding, values in [0, logit_max]): the
    /// one-hot, index bits and winning value of the tournament.
    pub fn argmax_logits(&self, ev: &Evaluator, values: &LweVector) -> Result<SlotRouting> {
        if values.len() != self.experts {
            return Err(config(format!(
                "argmax over {} values, the router has {}",
                values.len(),
                self.experts
            )));
        }
        Ok(self.argmax(ev, values, false, Selection::OneHot)?.slot)
    }
}
