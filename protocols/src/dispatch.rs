//! Oblivious capacity dispatch: the rule of [`veilmoe_model::capacity`] evaluated on encrypted
//! choices, so that each destination (an expert, later a pool model) runs on its public number
//! of slots only and the server learns neither which entry went where nor which overflowed.
//!
//! Entry `t` (of `N`, in the rule's priority order) chooses destination `e` when its one-hot
//! `r_t` has `r_te = 1`. With the running count `Q_te = r_0e + ... + r_te` and the thresholds
//! `th_tej = [Q_te >= j]`, entry `t` holds slot `s` of `e` exactly when its choice made the count
//! cross `s + 1`:
//!
//! ```text
//! a_tes = th_te(s+1) - th_(t-1)e(s+1)        (th_(-1) = 0)
//! ```
//!
//! Everything else is leveled arithmetic on the thresholds:
//! - slot `(e, s)`'s source entry, bit `b`: `sum_t bit_b(t) a_tes
//!   = sum_t (bit_b(t) - bit_b(t+1)) th_te(s+1)`, circuit-bootstrapped: the index of a CMUX
//!   tree over the `N` entries' first-stage products (selecting after the destination's first
//!   linear layer, as Select-Then-Compute does, keeps the CMUX noise out of the weights'
//!   amplification); an empty slot selects entry 0, whose result nobody claims;
//! - entry `t`'s slot id (global slot + 1; 0 when it overflowed), bit `b`:
//!   `sum_(e,s) bit_b(slot(e,s) + 1) a_tes`, returned to the client, which holds the key and
//!   picks its entries' results among the slots' outputs (a batch is one client's records).
//!
//! Cost per batch (`C` = total slots, `L = ceil(log2 N)`), all public:
//! - PBS: one per threshold that can be non-zero, `sum_e sum_(j=1..C_e) max(0, N - j + 1)`, plus
//!   one clamp `min(Q, C_e)` per destination each time a running count would outgrow the
//!   `m`-bit read (never for `N < 2^m`), plus, when the overflow flags are asked for, one AND
//!   per entry and destination that can overflow, `sum_(e: C_e > 0) max(0, N - C_e)`;
//! - circuit bootstraps: `C * L` (the sources' bits);
//! - CMUX: `C * (2^L - 1)` per GLWE of a destination's packed first-stage products;
//! - the counts, sources and slot ids are leveled sums of PBS outputs.
//!
//! The operations depend only on `N` and the capacities (tested on the operation trace).

use crate::error::{config, Result};
use veilmoe_engine::{Encoding, Evaluator, GgswBit, Lut, LweVector, ValueRange};
use veilmoe_model::capacity::Capacities;
use veilmoe_model::index_bits;

/// The encrypted assignment of a batch's entries to slots.
pub struct Dispatch {
    /// Per global slot: the GGSW bits of the entry it holds (least significant first).
    pub sources: Vec<Vec<GgswBit>>,
    /// Per entry: the bits of its global slot + 1 (least significant first; all 0 when the
    /// entry overflowed), for the client.
    pub slot_ids: Vec<LweVector>,
    /// Per entry: 1 when it chose a destination and found no free slot (a sum of at most one
    /// AND per destination; a fallback round reads it again). Empty unless asked for.
    pub overflow: Vec<LweVector>,
}

/// Whether a dispatch computes its entries' overflow flags (one PBS per entry and destination
/// that can overflow: only a caller with a fallback round needs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowFlags {
    Compute,
    Skip,
}

/// Bits of an entry's slot id (values `0..=total slots`; at least one bit, which stays 0 when
/// there is no slot at all).
pub fn slot_id_bits(caps: &Capacities) -> usize {
    index_bits(caps.total() + 1).max(1)
}

/// Client side: an entry's global slot from its decrypted slot-id bits (`None`: it overflowed).
pub fn decode_slot_id(bits: &[i64], caps: &Capacities) -> Result<Option<usize>> {
    if bits.len() != slot_id_bits(caps) || bits.iter().any(|b| !(0..=1).contains(b)) {
        return Err(crate::error::session(format!(
            "a slot id must be {} bits, got {bits:?}",
            slot_id_bits(caps)
        )));
    }
    let id: usize = bits
        .iter()
        .enumerate()
        .map(|(b, &v)| (v as usize) << b)
        .sum();
    match id {
        0 => Ok(None),
        i if i <= caps.total() => Ok(Some(i - 1)),
        i => Err(crate::error::session(format!(
            "slot id {i} is beyond the batch's {} slots",
            caps.total()
        ))),
    }
}

/// Assigns `choices` (one one-hot per entry, in priority order, each with one value per
/// destination, bits in their encoding) to the slots of `caps`.
pub fn dispatch(
    ev: &Evaluator,
    choices: &[LweVector],
    caps: &Capacities,
    flags: OverflowFlags,
) -> Result<Dispatch> {
    let first = choices
        .first()
        .ok_or_else(|| config("a dispatch needs at least one entry"))?;
    let bit = first.encoding();
    for c in choices {
        if c.len() != caps.destinations() {
            return Err(config(format!(
                "an entry's choice has {} values, the capacities name {} destinations",
                c.len(),
                caps.destinations()
            )));
        }
        let r = c.range();
        if r.min < 0 || r.max > 1 || c.encoding() != bit {
            return Err(config(
                "a dispatch's choices must be one-hot bits in one encoding",
            ));
        }
    }
    let p = ev.preset();
    let count = Encoding::unsigned(p.message_bits);
    if let Some(c) = caps
        .per_destination()
        .iter()
        .find(|&&c| c as i64 >= count.max())
    {
        return Err(config(format!(
            "capacity {c} does not fit the {}-bit counts of preset `{}`",
            p.message_bits, p.name
        )));
    }
    let n = choices.len();
    ev.set_stage("dispatch-count");
    let thresholds = caps
        .per_destination()
        .iter()
        .enumerate()
        .map(|(e, &c)| destination_thresholds(ev, choices, e, c, count, bit))
        .collect::<Result<Vec<_>>>()?;
    let th = |e: usize, s: usize, t: usize| thresholds[e][s].slice(t..t + 1);

    // Sources: per slot, the bits of the entry it holds.
    let l = index_bits(n);
    let bit_of = |v: usize, b: usize| ((v >> b) & 1) as i64;
    let zero = ev.trivial(&[0], bit)?;
    let within = ValueRange::new(0, 1)?;
    let mut source_bits = Vec::with_capacity(caps.total() * l);
    for (e, &c) in caps.per_destination().iter().enumerate() {
        for s in 0..c {
            for b in 0..l {
                let mut parts = vec![zero.clone()];
                let mut coeffs = vec![0];
                for t in 0..n {
                    let k = bit_of(t, b) - if t + 1 < n { bit_of(t + 1, b) } else { 0 };
                    if k != 0 {
                        parts.push(th(e, s, t)?);
                        coeffs.push(k);
                    }
                }
                let refs: Vec<&LweVector> = parts.iter().collect();
                source_bits.push(ev.linear_combination_within(&refs, &coeffs, bit, within)?);
            }
        }
    }
    ev.set_stage("dispatch-ggsw");
    let sources = if source_bits.is_empty() {
        // One entry (nothing to choose) or no slot at all.
        (0..caps.total()).map(|_| Vec::new()).collect()
    } else {
        let refs: Vec<&LweVector> = source_bits.iter().collect();
        let mut ggsw = ev
            .circuit_bootstrap(&LweVector::concat(&refs)?)?
            .into_iter();
        (0..caps.total())
            .map(|_| ggsw.by_ref().take(l).collect())
            .collect()
    };

    // Slot ids: per entry, the bits of (its global slot + 1).
    ev.set_stage("dispatch-ids");
    let id_bits = slot_id_bits(caps);
    let mut slot_ids = Vec::with_capacity(n);
    for t in 0..n {
        let mut bits = Vec::with_capacity(id_bits);
        for b in 0..id_bits {
            let mut parts = vec![zero.clone()];
            let mut coeffs = vec![0];
            for (e, &c) in caps.per_destination().iter().enumerate() {
                for s in 0..c {
                    if bit_of(caps.slot(e, s) + 1, b) == 1 {
                        parts.push(th(e, s, t)?);
                        coeffs.push(1);
                        if t > 0 {
                            parts.push(th(e, s, t - 1)?);
                            coeffs.push(-1);
                        }
                    }
                }
            }
            let refs: Vec<&LweVector> = parts.iter().collect();
            bits.push(ev.linear_combination_within(&refs, &coeffs, bit, within)?);
        }
        let refs: Vec<&LweVector> = bits.iter().collect();
        slot_ids.push(LweVector::concat(&refs)?);
    }

    // Overflow flags: entry t overflows at e when it chose e and the count had already reached
    // C_e before it (r_te AND th_(t-1)e(C_e), one PBS); at a destination without slots, when it
    // chose it. A sum of at most E bits, so its noise does not grow with the capacities.
    ev.set_stage("dispatch-overflow");
    let and = Lut::univariate(p, bit, bit, |u| (u >= 2) as i64)?;
    let mut overflow = Vec::with_capacity(n);
    let wanted = if flags == OverflowFlags::Compute {
        n
    } else {
        0
    };
    for (t, choice) in choices.iter().enumerate().take(wanted) {
        let mut parts = vec![zero.clone()];
        for (e, &c) in caps.per_destination().iter().enumerate() {
            let r = choice.slice(e..e + 1)?;
            if c == 0 {
                parts.push(r);
            } else if t >= c {
                // th_(t-1)e(c) can be 1 only when t - 1 >= c - 1
                let u = ev.linear_combination(&[&r, &th(e, c - 1, t - 1)?], &[1, 1], bit)?;
                parts.push(ev.pbs(&u, &and)?);
            }
        }
        let refs: Vec<&LweVector> = parts.iter().collect();
        let ones = vec![1; refs.len()];
        overflow.push(ev.linear_combination_within(&refs, &ones, bit, within)?);
    }
    Ok(Dispatch {
        sources,
        slot_ids,
        overflow,
    })
}

/// `[Q_te >= j]` for `j = 1..=c` (index `j - 1`), each a vector over the `N` entries: zero (a
/// trivial ciphertext, no PBS) where `j > t + 1`, since `Q_te <= t + 1`.
fn destination_thresholds(
    ev: &Evaluator,
    choices: &[LweVector],
    e: usize,
    c: usize,
    count: Encoding,
    bit: Encoding,
) -> Result<Vec<LweVector>> {
    let p = ev.preset();
    let clamp = Lut::univariate(p, count, count, |q| q.min(c as i64))?;
    let budget = veilmoe_engine::noise::pbs_input_budget(p);
    let mut running: Vec<LweVector> = Vec::with_capacity(choices.len());
    for r in choices {
        let r = r.slice(e..e + 1)?;
        let q = match running.last() {
            None => ev.linear_combination(&[&r], &[1], count)?,
            Some(prev) => {
                // A count that would outgrow the m-bit read, or its noise budget, is read back
                // as min(Q, c) first: counts above c never change a threshold j <= c. Both
                // conditions follow from t, c and the preset alone, never from the choices.
                let prev =
                    if prev.range().max >= count.max() || prev.variance() + r.variance() > budget {
                        ev.pbs(prev, &clamp)?
                    } else {
                        prev.clone()
                    };
                ev.linear_combination(&[&prev, &r], &[1, 1], count)?
            }
        };
        running.push(q);
    }
    let refs: Vec<&LweVector> = running.iter().collect();
    let q = LweVector::concat(&refs)?;
    let n = choices.len();
    (1..=c)
        .map(|j| {
            let at_least = Lut::univariate(p, count, bit, |v| (v >= j as i64) as i64)?;
            if j > n {
                return Ok(ev.trivial(&vec![0; n], bit)?);
            }
            let read = ev.pbs(&q.slice(j - 1..n)?, &at_least)?;
            if j == 1 {
                return Ok(read);
            }
            let zeros = ev.trivial(&vec![0; j - 1], bit)?;
            Ok(LweVector::concat(&[&zeros, &read])?)
        })
        .collect()
}
