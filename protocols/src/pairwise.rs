//! Pairwise routing under encryption (see `veilmoe_model::pairwise` for the rule).
//!
//! Cost for E experts and k slots, in PBS: `E (E - 1) / 2` comparisons of the router
//! accumulators ([`Evaluator::greater_than`], refined: three PBS and three keyswitches each,
//! two blind rotations and the majority of their three signs); E rank reads of the wins
//! (one two-function many-LUT reads both ranks of a top-2); when the gates need the slot
//! logits, E mask reads (sharing the rank reads' keyswitch), `k E` products
//! `max(logit + mask, 0)` and a maximum over them (`k (E - 1)`), which is the slot's logit;
//! per slot, `log2 E` reads clamp the index bits to bits (see `veilmoe_model::pairwise` for
//! why a near-tie cycle needs both). The logits themselves are read as for the tournament
//! (E PBS) where the gates need them; a constant gate (top-1) needs none. E = 8, top-2
//! (Mixtral gating): 84 + 8 + 8 + 16 + 14 + 6 = 136 PBS besides the logit and gate reads;
//! top-1 with a constant gate: 84 + 8 + 3 = 95 in all. The bracket of pairs is public.

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
    /// `max(v, 0)` (within the logits' range): a masked logit if its mask is 0, else 0; and
    /// `max(b - a, 0)` for the maximum `a + max(b - a, 0)` of the slot logit's tree.
    relu: Option<Lut>,
}

/// One function per rank `r < k` of an expert's wins `w` (out of `E - 1`), as a many-LUT's
/// functions: `f(is_rank_r)`.
fn per_rank(
    experts: usize,
    top_k: usize,
    f: impl Fn(bool) -> i64 + Copy + 'static,
) -> Vec<Box<dyn Fn(i64) -> i64>> {
    let e = experts as i64;
    (0..top_k as i64)
        .map(|r| Box::new(move |w: i64| f(w == e - 1 - r)) as Box<dyn Fn(i64) -> i64>)
        .collect()
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
        let many = |fs: Vec<Box<dyn Fn(i64) -> i64>>, out: Encoding| {
            let refs: Vec<&dyn Fn(i64) -> i64> = fs.iter().map(|f| f.as_ref()).collect();
            Lut::many(p, wins_encoding, out, &refs)
        };
        let ranks = many(per_rank(experts, top_k, |is| is as i64), bit)?;
        // off its rank a masked logit falls to [-(logit_max + 1), -1], below every logit
        let (masks, relu) = if slot_logits {
            let off = -(logit_max + 1);
            let masks = many(
                per_rank(experts, top_k, move |is| if is { 0 } else { off }),
                small,
            )?;
            let relu = Lut::univariate(p, small, small, move |v| v.clamp(0, logit_max))?;
            (Some(masks), Some(relu))
        } else {
            (None, None)
        };
        Ok(PairwiseTables {
            experts,
            top_k,
            wins_encoding,
            ranks,
            masks,
            relu,
        })
    }

    /// Compares the router accumulators `acc` pairwise and ranks the experts by their wins;
    /// `logits` (read from `acc`) give the slot logits where the gates need them.
    pub(crate) fn decide(
        &self,
        ev: &Evaluator,
        acc: &LweVector,
        logits: Option<&LweVector>,
        bit: Encoding,
    ) -> Result<PairwiseDecision> {
        let e = self.experts;
        let given = logits.map_or(e, |l| l.len());
        if acc.len() != e || given != e || logits.is_none() != self.masks.is_none() {
            return Err(config(format!(
                "pairwise routing of {e} experts given {} accumulators and {} logits{}",
                acc.len(),
                logits.map_or(0, |l| l.len()),
                if self.masks.is_some() {
                    " (its gates read them)"
                } else {
                    ""
                }
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
        let logits_of = match (&masks, &self.relu, logits) {
            (Some(masks), Some(relu), Some(logits)) => {
                // per slot: the logits of its rank's experts, 0 elsewhere; their maximum is
                // the slot's logit (one expert's, or the largest after a near-tie cycle)
                let mut terms = Vec::with_capacity(self.top_k);
                for mask in masks.iter() {
                    let u = ev.linear_combination(&[logits, mask], &[1, 1], logits.encoding())?;
                    terms.push(u);
                }
                let refs: Vec<&LweVector> = terms.iter().collect();
                let all = ev.pbs(&LweVector::concat(&refs)?, relu)?;
                max_of_groups(ev, &all, e, relu)?
                    .into_iter()
                    .map(Some)
                    .collect()
            }
            _ => vec![None; self.top_k],
        };
        let slots = onehots.into_iter().zip(logits_of).collect();
        Ok(PairwiseDecision { comparisons, slots })
    }
}

/// The maximum of each group of `group` consecutive values of `values` (in `[0, logit_max]`),
/// all groups' trees level by level together: `max(a, b) = a + relu(b - a)`, one PBS per node.
fn max_of_groups(
    ev: &Evaluator,
    values: &LweVector,
    group: usize,
    relu: &Lut,
) -> Result<Vec<LweVector>> {
    let enc = values.encoding();
    let range = values.range();
    let mut levels: Vec<Vec<LweVector>> = (0..values.len() / group)
        .map(|g| {
            (0..group)
                .map(|i| values.slice(g * group + i..g * group + i + 1))
                .collect::<veilmoe_engine::Result<Vec<_>>>()
        })
        .collect::<veilmoe_engine::Result<_>>()?;
    while levels[0].len() > 1 {
        let (mut lefts, mut rights) = (Vec::new(), Vec::new());
        for level in &levels {
            for pair in level.chunks_exact(2) {
                lefts.push(&pair[0]);
                rights.push(&pair[1]);
            }
        }
        let a = LweVector::concat(&lefts)?;
        let b = LweVector::concat(&rights)?;
        let diff = ev.linear_combination(&[&b, &a], &[1, -1], enc)?;
        let r = ev.pbs(&diff, relu)?;
        let maxes = ev.linear_combination_within(&[&a, &r], &[1, 1], enc, range)?;
        let mut at = 0;
        for level in levels.iter_mut() {
            let pairs = level.len() / 2;
            let mut next: Vec<LweVector> = (at..at + pairs)
                .map(|i| maxes.slice(i..i + 1))
                .collect::<veilmoe_engine::Result<_>>()?;
            at += pairs;
            if level.len() % 2 == 1 {
                next.push(level.pop().expect("a bye"));
            }
            *level = next;
        }
    }
    Ok(levels.into_iter().map(|mut l| l.remove(0)).collect())
}
