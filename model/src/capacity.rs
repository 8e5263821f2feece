//! Capacity dispatch: the public rule that sends each entry of a batch into a fixed slot of its
//! chosen destination (an expert of an MoE layer, later a model of a pool), as Switch
//! Transformers and GShard do with an expert capacity. The encrypted dispatch
//! (`veilmoe_protocols::dispatch`) computes exactly this rule obliviously; this module is its
//! plaintext reference and the one owner of the slot numbering both sides use.
//!
//! The rule: entries are taken in order (for a top-k MoE layer every token's first choice, then
//! every token's second choice, as GShard gives first choices priority); an entry takes the next
//! free slot of its destination, slot `s` for the `s`-th entry choosing it; once a destination's
//! `C_e` slots are taken, later entries choosing it overflow and are dropped (their
//! destination's output is zero for them: in an MoE layer the token keeps only its residual).
//!
//! Slots are numbered globally, destination by destination: destination `e`'s slot `s` is
//! `C_0 + ... + C_(e-1) + s`. The server runs destination `e` on its `C_e` slots only, whatever
//! the batch holds, so it learns the batch size and the capacities and nothing else.

use crate::arch::TopK;
use crate::error::{config, Result};
use serde::{Deserialize, Serialize};

/// Most slots one destination may have: the encrypted dispatch counts choices through PBS
/// reads of `m`-bit values, and `C + 1` must stay readable on the narrowest preset (4 bits).
pub const MAX_CAPACITY: usize = 14;

/// Public slots per destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacities(Vec<usize>);

impl Capacities {
    /// One capacity per destination, each at most [`MAX_CAPACITY`].
    pub fn new(caps: Vec<usize>) -> Result<Capacities> {
        if caps.is_empty() {
            return Err(config("capacities: at least one destination is needed"));
        }
        if let Some(c) = caps.iter().find(|&&c| c > MAX_CAPACITY) {
            return Err(config(format!(
                "capacity {c} is above the dispatch's limit of {MAX_CAPACITY} slots per destination"
            )));
        }
        Ok(Capacities(caps))
    }

    /// Switch Transformers' expert capacity: `ceil(factor * entries / destinations)` slots for
    /// each destination, where `entries = tokens * top_k`.
    pub fn from_factor(destinations: usize, entries: usize, factor: f64) -> Result<Capacities> {
        if destinations == 0 || !(factor.is_finite() && factor > 0.0) {
            return Err(config(format!(
                "capacity factor must be positive and finite with at least one destination, got \
                 {factor} for {destinations}"
            )));
        }
        let c = (factor * entries as f64 / destinations as f64).ceil() as usize;
        Capacities::new(vec![c; destinations])
    }

    /// Slots of each destination.
    pub fn per_destination(&self) -> &[usize] {
        &self.0
    }

    pub fn destinations(&self) -> usize {
        self.0.len()
    }

    /// Slots in all.
    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }

    /// Global number of destination `e`'s slot `s`.
    pub fn slot(&self, e: usize, s: usize) -> usize {
        self.0[..e].iter().sum::<usize>() + s
    }

    /// Destination and local slot of a global slot number.
    pub fn locate(&self, global: usize) -> Option<(usize, usize)> {
        let mut base = 0;
        for (e, &c) in self.0.iter().enumerate() {
            if global < base + c {
                return Some((e, global - base));
            }
            base += c;
        }
        None
    }
}

/// The dispatch order of a top-k MoE batch: entry `k * tokens + t` is token `t`'s `k`-th choice.
pub fn entry(tokens: usize, t: usize, k: usize) -> usize {
    k * tokens + t
}

/// Number of entries a batch of `tokens` tokens dispatches under top-k routing.
pub fn entries(tokens: usize, top_k: TopK) -> usize {
    tokens * top_k.0
}

/// The global slot of every entry (`None`: it overflowed), `choices[i]` being entry `i`'s
/// destination.
pub fn assign(choices: &[usize], caps: &Capacities) -> Result<Vec<Option<usize>>> {
    let mut taken = vec![0usize; caps.destinations()];
    choices
        .iter()
        .map(|&e| {
            let c = *caps.0.get(e).ok_or_else(|| {
                config(format!(
                    "an entry chooses destination {e}, there are {}",
                    caps.destinations()
                ))
            })?;
            let s = taken[e];
            taken[e] += 1;
            Ok((s < c).then(|| caps.slot(e, s)))
        })
        .collect()
}

/// For each global slot, the entry it holds (`None`: the slot stayed empty).
pub fn slot_entries(assigned: &[Option<usize>], caps: &Capacities) -> Vec<Option<usize>> {
    let mut slots = vec![None; caps.total()];
    for (i, g) in assigned.iter().enumerate() {
        if let Some(g) = g {
            slots[*g] = Some(i);
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fill_slots_in_order_and_overflow_past_capacity() {
        let caps = Capacities::new(vec![2, 1, 0]).unwrap();
        assert_eq!(caps.total(), 3);
        assert_eq!(caps.slot(1, 0), 2);
        assert_eq!(caps.locate(2), Some((1, 0)));
        assert_eq!(caps.locate(3), None);
        let got = assign(&[0, 1, 0, 0, 1, 2], &caps).unwrap();
        assert_eq!(got, vec![Some(0), Some(2), Some(1), None, None, None]);
        assert_eq!(slot_entries(&got, &caps), vec![Some(0), Some(2), Some(1)]);
        assert!(assign(&[3], &caps).is_err());
    }

    #[test]
    fn capacity_factor_and_limits() {
        let caps = Capacities::from_factor(4, 8, 1.25).unwrap();
        assert_eq!(caps.per_destination(), &[3, 3, 3, 3]);
        assert!(Capacities::from_factor(2, 40, 1.0).is_err());
        assert!(Capacities::from_factor(2, 4, f64::NAN).is_err());
        assert!(Capacities::new(Vec::new()).is_err());
        assert_eq!(entry(5, 2, 1), 7);
        assert_eq!(entries(5, TopK(2)), 10);
    }
}
