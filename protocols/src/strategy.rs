//! Oblivious expert evaluation strategies behind one trait.
//!
//! | strategy | what the server runs per slot | PBS beyond the router |
//! |---|---|---|
//! | [`Select`] (default) | all E first-stage products (packed, leveled), CMUX-select the chosen expert's packed results by the GGSW index bits, ONE expert's activations, all E second-stage products (leveled), CMUX-select | h (4h gated, 3h with the linear factor in the product) |
//! | [`ComputeAll`] | every expert's FFN, outputs combined by the same CMUX tree | E h (4 E h gated) |
//! | [`PublicRouting`] | INSECURE: the chosen index is revealed to the server, which runs only that expert | h (4h gated, 3h with the linear factor in the product) |
//!
//! Every strategy returns the selected expert's output accumulators wide (no read: the
//! client decrypts them at full width).
//!
//! Select and compute-all issue the same operations, in the same order and sizes, for every
//! input (tested on the operation trace). Public routing does not: it leaks the routing and is a
//! lower-bound reference for benchmarks only.

use crate::error::{ProtocolError, Result};
use crate::ffn::FfnTables;
use crate::router::Routing;
use veilmoe_engine::{Evaluator, GgswBit, LweVector, PackedGlwe, PackedRows};

/// What a strategy gets for one token.
pub struct SlotInput<'a> {
    pub routing: &'a Routing,
    /// Per slot: the GGSW-encrypted index bits (empty for strategies that do not need them).
    pub index_ggsw: &'a [Vec<GgswBit>],
}

/// A way to evaluate the selected experts of each slot.
pub trait ExpertStrategy: Sync {
    fn name(&self) -> &'static str;
    /// True only for strategies that reveal the routing to the server.
    fn leaks_routing(&self) -> bool {
        false
    }
    /// Whether the layer should circuit-bootstrap the index bits for this strategy.
    fn needs_index_ggsw(&self) -> bool {
        true
    }
    /// The output accumulators (d values, wide) of each slot's selected expert.
    fn slot_outputs(
        &self,
        ev: &Evaluator,
        ffn: &FfnTables,
        x: &PackedGlwe,
        input: &SlotInput,
    ) -> Result<Vec<LweVector>>;
}

/// Select-Then-Compute (the default).
pub struct Select;

impl ExpertStrategy for Select {
    fn name(&self) -> &'static str {
        "select"
    }
    fn slot_outputs(
        &self,
        ev: &Evaluator,
        ffn: &FfnTables,
        x: &PackedGlwe,
        input: &SlotInput,
    ) -> Result<Vec<LweVector>> {
        ev.set_stage("expert-products");
        let firsts = (0..ffn.experts.len())
            .map(|i| ffn.first_stage(ev, i, x))
            .collect::<Result<Vec<_>>>()?;
        select_from_products(ev, ffn, &firsts, input.index_ggsw)
    }
}

/// Select-Then-Compute from every expert's packed first-stage products: per slot, CMUX-select
/// the chosen expert's products by its GGSW index bits, read ONE expert's activations, run every
/// expert's second stage (leveled) and CMUX-select the chosen output
/// ([`FfnTables::selected_second_stage`]).
pub(crate) fn select_from_products(
    ev: &Evaluator,
    ffn: &FfnTables,
    firsts: &[(PackedRows, Option<PackedRows>)],
    index_ggsw: &[Vec<GgswBit>],
) -> Result<Vec<LweVector>> {
    let u_all: Vec<_> = firsts.iter().map(|f| f.0.clone()).collect();
    let v_all: Option<Vec<_>> = firsts.iter().map(|f| f.1.clone()).collect();
    let mut outs = Vec::with_capacity(index_ggsw.len());
    for bits in index_ggsw {
        ev.set_stage("select");
        let u = ev.extract_rows(&ev.cmux_tree_rows(bits, &u_all)?)?;
        let v = match &v_all {
            Some(v_all) => Some(ev.extract_rows(&ev.cmux_tree_rows(bits, v_all)?)?),
            None => None,
        };
        ev.set_stage("expert");
        let a = ffn.hidden(ev, &u, v.as_ref())?;
        ev.set_stage("select");
        outs.push(ffn.selected_second_stage(ev, bits, &a)?);
    }
    Ok(outs)
}

/// Every expert evaluated, outputs combined obliviously (the naive baseline).
pub struct ComputeAll;

impl ExpertStrategy for ComputeAll {
    fn name(&self) -> &'static str {
        "compute-all"
    }
    fn slot_outputs(
        &self,
        ev: &Evaluator,
        ffn: &FfnTables,
        x: &PackedGlwe,
        input: &SlotInput,
    ) -> Result<Vec<LweVector>> {
        let e = ffn.experts.len();
        ev.set_stage("expert");
        let mut us = Vec::with_capacity(e);
        let mut vs = Vec::with_capacity(e);
        for i in 0..e {
            let (u, v) = ffn.first_stage(ev, i, x)?;
            us.push(ev.extract_rows(&u)?);
            if let Some(v) = v {
                vs.push(ev.extract_rows(&v)?);
            }
        }
        // One PBS batch over all experts' hidden units.
        let u_refs: Vec<&LweVector> = us.iter().collect();
        let u = LweVector::concat(&u_refs)?;
        let v = if vs.is_empty() {
            None
        } else {
            let v_refs: Vec<&LweVector> = vs.iter().collect();
            Some(LweVector::concat(&v_refs)?)
        };
        let a = ffn.hidden(ev, &u, v.as_ref())?;
        let h = us[0].len();
        let ys = (0..e)
            .map(|i| ffn.second_stage(ev, i, &a.slice(i * h..(i + 1) * h)?))
            .collect::<Result<Vec<_>>>()?;
        ev.set_stage("select");
        input
            .index_ggsw
            .iter()
            .map(|bits| Ok(ev.cmux_tree_lwe(bits, &ys)?))
            .collect()
    }
}

/// INSECURE reference: the routing decision is revealed to the server (here through a callback
/// that stands for a round trip to the client), which then runs only the chosen expert. It
/// leaks which expert every token uses; benchmarks only, never a default.
pub struct PublicRouting<'a> {
    /// Maps each slot's encrypted index bits to the revealed expert index.
    pub reveal: &'a (dyn Fn(&LweVector) -> Result<usize> + Sync),
}

impl ExpertStrategy for PublicRouting<'_> {
    fn name(&self) -> &'static str {
        "public-routing"
    }
    fn leaks_routing(&self) -> bool {
        true
    }
    fn needs_index_ggsw(&self) -> bool {
        false
    }
    fn slot_outputs(
        &self,
        ev: &Evaluator,
        ffn: &FfnTables,
        x: &PackedGlwe,
        input: &SlotInput,
    ) -> Result<Vec<LweVector>> {
        ev.set_stage("expert");
        input
            .routing
            .slots
            .iter()
            .map(|slot| {
                let e = (self.reveal)(&slot.index_bits)?;
                if e >= ffn.experts.len() {
                    return Err(ProtocolError::Strategy {
                        strategy: "public-routing",
                        reason: format!("revealed expert {e} out of range"),
                    });
                }
                ffn.evaluate(ev, e, x)
            })
            .collect()
    }
}

/// The strategy a job or benchmark names: parsed once (from the command line or a results
/// header), carried as this enum, and turned into an evaluator where the work happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Select-Then-Compute (the default).
    Select,
    /// Every expert computed, the chosen output selected.
    ComputeAll,
    /// INSECURE: reveals each token's expert to the server. Benchmarks only.
    PublicRouting,
}

impl Strategy {
    /// The strategies that hide the routing.
    pub const OBLIVIOUS: [Strategy; 2] = [Strategy::Select, Strategy::ComputeAll];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Select => "select",
            Strategy::ComputeAll => "compute-all",
            Strategy::PublicRouting => "public-routing",
        }
    }

    /// Whether the strategy reveals the routing to the server.
    pub fn leaks_routing(self) -> bool {
        self == Strategy::PublicRouting
    }

    /// The evaluator of an oblivious strategy. `public-routing` is refused: it needs the
    /// client online to reveal each token's routing (an INSECURE benchmark reference, built
    /// with [`PublicRouting`] by the benchmark itself).
    pub fn oblivious(self) -> Result<&'static dyn ExpertStrategy> {
        match self {
            Strategy::Select => Ok(&Select),
            Strategy::ComputeAll => Ok(&ComputeAll),
            Strategy::PublicRouting => Err(ProtocolError::Strategy {
                strategy: "public-routing",
                reason: "it reveals the routing to the server (INSECURE) and needs the client \
                         online; it exists only in `veilmoe bench moe`"
                    .into(),
            }),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Strategy, String> {
        [
            Strategy::Select,
            Strategy::ComputeAll,
            Strategy::PublicRouting,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("unknown strategy `{s}` (select, compute-all, public-routing)"))
    }
}
