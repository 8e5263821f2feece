//! Pairwise routing under encryption (see `veilmoe_model::pairwise` for the rule).
//!
//! Cost for E experts and k slots, in PBS: `E (E - 1) / 2` comparisons of the router
//! accumulators ([`Evaluator::greater_than`], one keyswitch each); E rank reads of the wins
//! (one two-function many-LUT reads both ranks of a top-2); when the gates need the slot
//! logits, E mask reads (sharing the rank reads' keyswitch) and `k E` products
//! `max(logit + mask, 0)` whose sum is the slot's logit. The logits themselves are read as for
//! the tournament (E PBS). E = 8, top-2 (Mixtral gating): 28 + 8 + 8 + 16 = 60 PBS besides the
//! logit and gate reads; top-1 with a constant gate: 36. The bracket of pairs is public.

use crate::error::{config, Result};
use veilmoe_engine::{Cols, Encoding, Evaluator, Lut, LweVector, Preset, Rows, WeightMatrix};
use veilmoe_model::pairwise::{pairs, win_weights, MAX_EXPERTS};
use veilmoe_model::quantized::RouterSpec;
use veilmoe_model::Gating;

/// Tables of pairwise routing.
pub(crate) struct PairwiseTables {
    experts: usize,
    top_k: usize,
    /// The wins' encoding (unsigned, read by many-LUTs).
    wins_encoding: Encoding,
    /// `[wins = E - 1 - r]` for each rank r < k: the slots' one-hots.
    ranks: Lut,
    /// `0` at rank r, `-(logit_max + 1)` elsewhere, for each rank (when the gates need the
    /// slot logits): added to a logit, only the ranked expert's stays non-negative.
    masks: Option<Lut>,
    /// `max(u, 0)`: a logit if its mask is 0, else 0.
    select: Option<Lut>,
}

/// What pairwise routing decided.
pub(crate) struct PairwiseDecision {
    /// `[acc_j > acc_i]` per pair, in `veilmoe_model::pairwise::pairs` order.
    pub(crate) comparisons: LweVector,
    /// Per slot: its one-hot and, when the gates need it, its logit.
    pub(crate) slots: Vec<(LweVector, Option<LweVector>)>,
}

impl PairwiseTables {
    /// The tables of `spec`'s router on preset `p`: one-hots in `bit`; slot logits (in the
    /// logits' signed `message_bits` encoding) where the gates need them.
    pub(crate) fn new(p: &Preset, spec: &RouterSpec, bit: Encoding) -> Result<PairwiseTables> {
        let (experts, top_k) = (spec.experts, spec.top_k);
        let m = spec.quant.message_bits;
        let small = Encoding::signed(m);
        let logit_max = spec.quant.logit_max();
        let slot_logits = top_k > 1 || spec.gating == Gating::SoftmaxThenTopK;
        veilmoe_model::pairwise::check_supported(experts, top_k)?;
        let wins_encoding = Encoding::unsigned(m);
        let fns = top_k.next_power_of_two() as i64;
        if (experts as i64 - 1) * fns >= 1i64 << m || experts > MAX_EXPERTS {
            return Err(config(format!(
                "pairwise routing of {experts} experts, top-{top_k}, needs wider reads than {m} bits"
            )));
        }
        let e = experts as i64;
        let rank_fns: Vec<Box<dyn Fn(i64) -> i64>> = (0..top_k as i64)
            .map(|r| Box::new(move |w: i64| (w == e - 1 - r) as i64) as Box<dyn Fn(i64) -> i64>)
            .collect();
        let refs: Vec<&dyn Fn(i64) -> i64> = rank_fns.iter().map(|f| f.as_ref()).collect();
        let ranks = Lut::many(p, wins_encoding, bit, &refs)?;
        let (masks, select) = if slot_logits {
            let off = -(logit_max + 1);
            let mask_fns: Vec<Box<dyn Fn(i64) -> i64>> = (0..top_k as i64)
                .map(|r| {
                    Box::new(move |w: i64| if w == e - 1 - r { 0 } else { off })
                        as Box<dyn Fn(i64) -> i64>
                })
                .collect();
            let refs: Vec<&dyn Fn(i64) -> i64> = mask_fns.iter().map(|f| f.as_ref()).collect();
            (
                Some(Lut::many(p, wins_encoding, small, &refs)?),
                Some(Lut::univariate(p, small, small, move |u| {
                    u.clamp(0, logit_max)
                })?),
            )
        } else {
            (None, None)
        };
        Ok(PairwiseTables {
            experts,
            top_k,
            wins_encoding,
            ranks,
            masks,
            select,
        })
    }

    /// Compares the router accumulators `acc` pairwise and ranks the experts by their wins;
    /// `logits` (read from `acc`) give the slot logits where the gates need them.
    pub(crate) fn decide(
        &self,
        ev: &Evaluator,
        acc: &LweVector,
        logits: &LweVector,
        bit: Encoding,
    ) -> Result<PairwiseDecision> {
        let e = self.experts;
        if acc.len() != e || logits.len() != e {
            return Err(config(format!(
                "pairwise routing of {e} experts given {} accumulators and {} logits",
                acc.len(),
                logits.len()
            )));
        }
        let ps = pairs(e);
        let take = |idx: &mut dyn Iterator<Item = usize>| -> Result<LweVector> {
            let parts: Vec<LweVector> = idx
                .map(|i| acc.slice(i..i + 1))
                .collect::<veilmoe_engine::Result<_>>()?;
            let refs: Vec<&LweVector> = parts.iter().collect();
            Ok(LweVector::concat(&refs)?)
        };
        let later = take(&mut ps.iter().map(|&(_, j)| j))?;
        let earlier = take(&mut ps.iter().map(|&(i, _)| i))?;
        let comparisons = ev.greater_than(&later, &earlier, bit)?;
        let (w, bias) = win_weights(e);
        let wins = ev
            .lwe_matvec(
                &WeightMatrix::new(Rows(e), Cols(ps.len()), w)?,
                Some(&bias),
                &comparisons,
            )?
            .with_encoding(self.wins_encoding)?;
        let mut tables = vec![&self.ranks];
        if let Some(m) = &self.masks {
            tables.push(m);
        }
        let mut read = ev.pbs_tables(&wins, &tables)?;
        let onehots = read.remove(0);
        let masks = read.pop();
        let mut slots = Vec::with_capacity(self.top_k);
        for (r, onehot) in onehots.into_iter().enumerate() {
            let logit = match (&masks, &self.select) {
                (Some(masks), Some(select)) => {
                    let u =
                        ev.linear_combination(&[logits, &masks[r]], &[1, 1], logits.encoding())?;
                    let terms = ev.pbs(&u, select)?;
                    let parts: Vec<LweVector> = (0..e)
                        .map(|i| terms.slice(i..i + 1))
                        .collect::<veilmoe_engine::Result<_>>()?;
                    let refs: Vec<&LweVector> = parts.iter().collect();
                    // one expert holds the rank, so the sum is its logit (a near-tie cycle
                    // breaks this; see veilmoe_model::pairwise)
                    Some(ev.linear_combination_within(
                        &refs,
                        &vec![1; e],
                        logits.encoding(),
                        terms.range(),
                    )?)
                }
                _ => None,
            };
            slots.push((onehot, logit));
        }
        Ok(PairwiseDecision { comparisons, slots })
    }
}
