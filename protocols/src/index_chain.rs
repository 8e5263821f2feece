//! GGSW index bits of a tournament's winner straight from its comparison bits, by a chain of
//! circuit bootstraps, without reading the one-hot.
//!
//! In a power-of-two bracket, node `j` of round `r` (`E / 2^(r+1)` nodes, `c = 1` iff its right
//! side won) is on the winner's path iff `j = winner >> (r + 1)`, and bit `r` of the winner's
//! index is that node's comparison bit. So the top bit is the final's bit as it is, and each
//! lower bit is a CMUX tree over its round's bits, driven by the GGSWs of the bits above it:
//! `L` circuit bootstraps (L = log2 E), one after the other, and `E - 1 - L` external products.
//!
//! Against the one-hot route (`onehot.rs`: E / 2 + E / 8 PBS beyond 16 experts, the index bits'
//! refreshes, then the L circuit bootstraps side by side) the chain saves every one-hot PBS and
//! costs only the parallelism of the circuit bootstraps: less work from 16 experts on, but one
//! token's latency on 2 cores is a wash at 32 experts and a gain from 64 (BENCHMARKS.md). On
//! many cores the one-hot's PBS spread out and the chain's sequence does not, so a single
//! token's latency can be longer there, while a batch (records side by side) gains from the
//! smaller work. [`CHAIN_MIN_EXPERTS`] is 32. The chain reads no data-dependent address: the
//! trees have the bracket's public shape.
//!
//! Noise: a bit chosen through `t` CMUX levels carries its PBS output's variance plus `t`
//! external products', and circuit bootstrapping reads it within the PBS input budget. The
//! tables take the chain only where the deepest bit fits ([`chain_fits`]; on `default` 13
//! levels do, on `fine` 25), so no bit needs a refresh.

use crate::error::{config, Result};
use veilmoe_engine::{noise, Evaluator, GgswBit, LweVector, Preset};

/// The fewest experts for which the chain replaces the one-hot on the way to GGSW index bits:
/// where it costs no latency on 2 cores (`bench moe`, BENCHMARKS.md) and saves work.
pub(crate) const CHAIN_MIN_EXPERTS: usize = 32;

/// Whether a chain over `levels` bracket rounds keeps its deepest bit (a PBS output through
/// `levels - 1` CMUX levels) within the PBS input budget that circuit bootstrapping applies.
pub(crate) fn chain_fits(p: &Preset, levels: usize) -> bool {
    let ggsw = noise::cbs_pbs_output_variance(p) + noise::pfks_variance(p);
    let deepest = noise::pbs_output_variance(p)
        + levels.saturating_sub(1) as f64 * noise::external_product_variance(p, ggsw);
    deepest <= noise::pbs_input_budget(p)
}

/// The winner's index bits (least significant first) as LWE bits and as GGSWs, from a
/// power-of-two bracket's comparison bits by round (`rounds[r]` holds round `r`'s
/// `E / 2^(r+1)` bits in bracket order).
pub(crate) fn chained_index_bits(
    ev: &Evaluator,
    rounds: &[LweVector],
) -> Result<(LweVector, Vec<GgswBit>)> {
    let levels = rounds.len();
    for (r, round) in rounds.iter().enumerate() {
        if round.len() != 1 << (levels - 1 - r) {
            return Err(config(format!(
                "round {r} of a {levels}-round bracket has {} comparisons",
                round.len()
            )));
        }
    }
    // built from the top bit down, kept least significant first: after round r, bits r..L-1
    let mut bits: Vec<LweVector> = Vec::with_capacity(levels);
    let mut ggsw: Vec<GgswBit> = Vec::with_capacity(levels);
    for r in (0..levels).rev() {
        let bit = if ggsw.is_empty() {
            rounds[r].clone()
        } else {
            // the GGSWs of bits r + 1 .. L - 1 index round r's node on the winner's path
            let nodes: Vec<LweVector> = (0..rounds[r].len())
                .map(|j| rounds[r].slice(j..j + 1))
                .collect::<veilmoe_engine::Result<_>>()?;
            ev.cmux_tree_lwe(&ggsw, &nodes)?
        };
        let g = ev
            .circuit_bootstrap(&bit)?
            .pop()
            .ok_or_else(|| config("circuit bootstrapping returned no GGSW"))?;
        bits.insert(0, bit);
        ggsw.insert(0, g);
    }
    let refs: Vec<&LweVector> = bits.iter().collect();
    Ok((LweVector::concat(&refs)?, ggsw))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deepest chain each shipped preset fits: every bracket up to 128 experts (7 rounds)
    /// on every preset that runs Select-Then-Compute, and not an unbounded one.
    #[test]
    fn chains_up_to_128_experts_fit_the_presets() {
        for name in ["test", "default", "fine"] {
            let p = Preset::load(name, name == "test").unwrap();
            let deepest = (1..64)
                .take_while(|&l| chain_fits(&p, l))
                .last()
                .unwrap_or(0);
            eprintln!("{name}: chains of up to {deepest} rounds fit");
            assert!(deepest >= 7, "{name}: only {deepest} rounds fit");
            assert!(
                !chain_fits(&p, 10_000),
                "{name}: the budget must bound the chain"
            );
        }
    }
}
