//! The tournament argmax: comparisons and maxima up a public bracket, then the winner's one-hot
//! and index bits, or (for [`Selection::IndexGgsw`] from 32 experts) the GGSW index bits of the
//! chain in `index_chain.rs`.

use super::{RouterTables, Selection, SlotRouting};
use crate::error::Result;
use crate::index_bits::index_bits_of;
use crate::index_chain::chained_index_bits;
use veilmoe_engine::{Cols, Evaluator, LweVector, Rows, WeightMatrix};

impl RouterTables {
    /// Tournament argmax over `values` (E values in a signed m-bit encoding whose pairwise
    /// differences stay in range).
    pub(super) fn argmax(
        &self,
        ev: &Evaluator,
        values: &LweVector,
        want_value: bool,
        selection: Selection,
    ) -> Result<Tournament> {
        let e = values.len();
        if e == 1 {
            let onehot = ev.trivial(&[1], self.index_encoding)?;
            let zero = ev.trivial(&[0], values.encoding())?;
            return Ok(Tournament {
                slot: SlotRouting {
                    index_bits: ev.trivial(&[0], self.index_encoding)?,
                    onehot: Some(onehot),
                    logit: values.clone(),
                    partition_sum: None,
                    index_ggsw: None,
                },
                path_sums: zero,
            });
        }
        // Public bracket: contenders of the current level, each a list of leaves and its value.
        let mut groups: Vec<(Vec<usize>, LweVector)> = (0..e)
            .map(|i| Ok((vec![i], values.slice(i..i + 1)?)))
            .collect::<Result<_>>()?;
        let mut cmp_bits: Vec<LweVector> = Vec::new();
        // For each comparison node: leaves on its left and on its right.
        let mut nodes: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        let mut winner_value = None;
        while groups.len() > 1 {
            let pairs = groups.len() / 2;
            let lefts: Vec<&LweVector> = (0..pairs).map(|i| &groups[2 * i].1).collect();
            let rights: Vec<&LweVector> = (0..pairs).map(|i| &groups[2 * i + 1].1).collect();
            let a = LweVector::concat(&lefts)?;
            let b = LweVector::concat(&rights)?;
            let diff = ev.linear_combination(&[&a, &b], &[1, -1], values.encoding())?;
            let last = groups.len() == 2;
            // the comparison and, below the final, the maximum read the same difference: one
            // keyswitch for both
            let mut reads = if !last || want_value {
                ev.pbs_each(&diff, &[&self.cmp, &self.relu_neg])?
            } else {
                vec![ev.pbs(&diff, &self.cmp)?]
            };
            let c = reads.remove(0);
            let maxes = if let Some(r) = reads.pop() {
                // max(a, b) = a + relu(b - a) stays within the values' range
                Some(ev.linear_combination_within(
                    &[&a, &r],
                    &[1, 1],
                    values.encoding(),
                    values.range(),
                )?)
            } else {
                None
            };
            let mut next = Vec::with_capacity(pairs + 1);
            let mut drained = std::mem::take(&mut groups).into_iter();
            for i in 0..pairs {
                let (l, _) = drained.next().expect("left");
                let (r, _) = drained.next().expect("right");
                nodes.push((l.clone(), r.clone()));
                let mut leaves = l;
                leaves.extend(r);
                let value = match &maxes {
                    Some(mx) => mx.slice(i..i + 1)?,
                    None => c.slice(i..i + 1)?, // unused: final match without value
                };
                next.push((leaves, value));
            }
            next.extend(drained); // a bye passes up unchanged
            if last {
                winner_value = maxes.map(|m| m.slice(0..1)).transpose()?;
            }
            cmp_bits.push(c);
            groups = next;
        }
        let cmp_refs: Vec<&LweVector> = cmp_bits.iter().collect();
        let c_all = LweVector::concat(&cmp_refs)?;
        // t_i = sum over i's matches of (won - 1): right side won iff c = 1, left iff c = 0.
        let n = nodes.len();
        let mut w = vec![0i64; e * n];
        let mut bias = vec![0i64; e];
        for (j, (l, r)) in nodes.iter().enumerate() {
            for &i in l {
                w[i * n + j] = -1;
            }
            for &i in r {
                w[i * n + j] = 1;
                bias[i] -= 1;
            }
        }
        let t = ev.lwe_matvec(
            &WeightMatrix::new(Rows(e), Cols(n), w.clone())?,
            Some(&bias),
            &c_all,
        )?;
        let (onehot, index_bits, index_ggsw) = if self.chain && selection == Selection::IndexGgsw {
            ev.set_stage("index-ggsw");
            let (bits, ggsw) = chained_index_bits(ev, &cmp_bits)?;
            ev.set_stage("top-k");
            (None, bits, Some(ggsw))
        } else {
            let (onehot, groups) = match &self.onehot_pairs {
                Some(pairs) => {
                    let read = pairs.read(ev, &c_all, &w, &self.onehot)?;
                    (read.onehot, read.groups)
                }
                None => (ev.pbs(&t, &self.onehot)?, None),
            };
            let bits = index_bits_of(
                ev,
                &onehot,
                groups.as_ref(),
                self.index_bits(),
                &self.bit_refresh,
            )?;
            (Some(onehot), bits, None)
        };
        // without a winner value the caller needs no logit: a placeholder of the right shape
        let logit = match winner_value {
            Some(v) => v,
            None => values.slice(0..1)?,
        };
        Ok(Tournament {
            slot: SlotRouting {
                onehot,
                index_bits,
                logit,
                partition_sum: None,
                index_ggsw,
            },
            path_sums: t,
        })
    }
}

pub(super) struct Tournament {
    pub(super) slot: SlotRouting,
    /// Each leaf's path sum (0 for the winner); the input of the top-2 mask.
    pub(super) path_sums: LweVector,
}
