//! The index bits of a one-hot: leveled sums over the indices with each bit set, refreshed in
//! chunks where a sum would exceed the PBS noise budget (so that circuit bootstrapping reads
//! every bit within it). Shared by the tournament and pairwise routing.

use crate::error::{config, Result};
use crate::onehot::GroupBits;
use veilmoe_engine::{Evaluator, Lut, LweVector, ValueRange};

/// The `bits` index bits of a one-hot (leveled sums, see [`sum_of_bits`]); `refresh` is the
/// identity on a bit.
pub(crate) fn index_bits_of(
    ev: &Evaluator,
    onehot: &LweVector,
    groups: Option<&GroupBits>,
    bits: usize,
    refresh: &Lut,
) -> Result<LweVector> {
    // Index bit b = sum of the one-hot over the indices with bit b set: exactly one term is
    // 1, so the sum stays a bit (a public fact the interval bound cannot see) and can stay
    // in the small encoding. Bits above a grouped bracket's groups sum the group bits (E / 16
    // terms) instead of E / 2 leaves. A sum of more values than the PBS noise budget covers
    // (E / 2 > 25 on `default`, i.e. E > 50) has chunks refreshed by one PBS each until it
    // fits, so that circuit bootstrapping reads every bit within the budget.
    let e = onehot.len();
    let leaves: Vec<LweVector> = (0..e)
        .map(|i| onehot.slice(i..i + 1))
        .collect::<veilmoe_engine::Result<_>>()?;
    let group_leaves: Vec<LweVector> = match groups {
        Some(g) => (0..g.bits.len())
            .map(|q| g.bits.slice(q..q + 1))
            .collect::<veilmoe_engine::Result<_>>()?,
        None => Vec::new(),
    };
    let budget = veilmoe_engine::noise::pbs_input_budget(ev.preset());
    let chunk = ((budget / onehot.variance().max(f64::MIN_POSITIVE)).floor() as usize).max(1);
    let mut out = Vec::with_capacity(bits);
    for b in 0..bits {
        let (values, bit) = match groups {
            Some(g) if b >= g.levels => (&group_leaves, b - g.levels),
            _ => (&leaves, b),
        };
        let parts: Vec<&LweVector> = values
            .iter()
            .enumerate()
            .filter(|(i, _)| (i >> bit) & 1 == 1)
            .map(|(_, v)| v)
            .collect();
        out.push(sum_of_bits(ev, &parts, chunk, refresh)?);
    }
    let bit_refs: Vec<&LweVector> = out.iter().collect();
    Ok(LweVector::concat(&bit_refs)?)
}

/// The sum of one-hot values known to be at most one 1 (so the sum is a bit), keeping its
/// variance within `chunk` PBS outputs: the fewest chunks of `chunk` values are summed and
/// refreshed by one PBS each (a refreshed chunk counts as one output) so that the refreshed
/// bits and the values left over fit `chunk` (32 values and a chunk of 25: one refresh).
fn sum_of_bits(
    ev: &Evaluator,
    parts: &[&LweVector],
    chunk: usize,
    refresh: &Lut,
) -> Result<LweVector> {
    let bit = ValueRange { min: 0, max: 1 };
    let sum = |ps: &[&LweVector]| -> Result<LweVector> {
        let ones = vec![1i64; ps.len()];
        Ok(ev.linear_combination_within(ps, &ones, ps[0].encoding(), bit)?)
    };
    if parts.len() <= chunk {
        return sum(parts);
    }
    if chunk < 2 {
        return Err(config(format!(
            "the PBS noise budget of `{}` covers fewer than two PBS outputs: one-hot values \
             cannot be summed into index bits",
            ev.preset().name
        )));
    }
    // r refreshed chunks leave r + (len - r chunk) terms, at most `chunk`
    let refreshed_chunks = (parts.len() - chunk).div_ceil(chunk - 1);
    let split = (refreshed_chunks * chunk).min(parts.len());
    let partial: Vec<LweVector> = parts[..split]
        .chunks(chunk)
        .map(sum)
        .collect::<Result<_>>()?;
    let refs: Vec<&LweVector> = partial.iter().collect();
    let refreshed = ev.pbs(&LweVector::concat(&refs)?, refresh)?;
    let singles: Vec<LweVector> = (0..refreshed.len())
        .map(|i| refreshed.slice(i..i + 1))
        .collect::<veilmoe_engine::Result<_>>()?;
    let mut rest: Vec<&LweVector> = singles.iter().collect();
    rest.extend_from_slice(&parts[split..]);
    sum_of_bits(ev, &rest, chunk, refresh)
}
