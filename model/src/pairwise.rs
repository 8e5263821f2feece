//! Pairwise routing: the experts chosen by comparing every two router accumulators.
//!
//! A tournament over the logits compares `message_bits`-bit reads of the accumulators, so two
//! experts whose accumulators fall in the same box tie and the lower index wins. Random-
//! initialised routers (weights N(0, 0.02^2)) put the top experts within a box of each other
//! often enough that the 5-bit reads of a Mixtral block choose other experts than the float
//! router on 14 % of records. Pairwise routing compares the accumulators themselves, by the
//! sign of their difference at the blind rotation's resolution, refined 16-32 times finer near
//! ties (`veilmoe_engine::compare`): `E (E - 1) / 2` comparisons, then each expert's count of
//! wins ranks it (`E - 1` wins: first; `E - 2`: second), which needs `E - 1` within half of a
//! read's boxes, hence at most [`MAX_EXPERTS`], and a power of two (see [`check_supported`]).
//! Ties go to the lower index, as in the tournament and [`crate::math::top_k`].
//!
//! Near ties (within the noise of a comparison's threshold) may be decided either way, so a
//! three-way near tie can make the comparisons cyclic and leave a rank with no expert or with
//! several. The encrypted path stays well formed: each index bit is the clamped sum of the
//! one-hot (the rank selects the bitwise OR of its experts' indices, expert 0 when empty) and
//! the slot logit is the maximum of its experts' logits (0 when empty); see [`rank_sets`] and
//! [`selected_index`]. The reference's exact rounding never cycles; its simulated rounding
//! draws the comparisons' noise and follows the same rule.

use crate::error::{ModelError, Result};

/// Most experts pairwise routing serves: `E - 1` wins within half the boxes of a 4-bit read
/// (the two-function table that reads both ranks), and a slot logit summed over `E` products
/// within the noise budget twice over (a top-2 gate reads their difference).
pub const MAX_EXPERTS: usize = 8;

/// Refuses a configuration pairwise routing does not serve, with the cause. The number of
/// experts must be a power of two: after a near-tie cycle a rank selects the OR of its experts'
/// indices, which must still name an expert.
pub fn check_supported(experts: usize, top_k: usize) -> Result<()> {
    if !(2..=MAX_EXPERTS).contains(&experts)
        || !experts.is_power_of_two()
        || !(1..=2).contains(&top_k)
    {
        return Err(ModelError::Config(format!(
            "pairwise routing serves 2, 4 or {MAX_EXPERTS} experts and top-1 or top-2, the \
             model has {experts} experts, top-{top_k}"
        )));
    }
    Ok(())
}

/// The compared pairs `(i, j)`, `i < j`, in the order of the comparison bits: bit `[acc_j >
/// acc_i]` (the later expert beats the earlier only if strictly greater).
pub fn pairs(experts: usize) -> Vec<(usize, usize)> {
    (0..experts)
        .flat_map(|i| (i + 1..experts).map(move |j| (i, j)))
        .collect()
}

/// Each expert's wins from the comparison bits: `sum over j < i of c(j, i)` plus `sum over
/// j > i of 1 - c(i, j)`, as the leveled sum of the encrypted path (weights and bias).
pub fn win_weights(experts: usize) -> (Vec<i64>, Vec<i64>) {
    let ps = pairs(experts);
    let mut w = vec![0i64; experts * ps.len()];
    let mut bias = vec![0i64; experts];
    for (n, &(i, j)) in ps.iter().enumerate() {
        w[j * ps.len() + n] = 1;
        w[i * ps.len() + n] = -1;
        bias[i] += 1;
    }
    (w, bias)
}

/// Wins from comparison bits (plaintext, for the reference and for checking decryptions).
pub fn wins(experts: usize, bits: &[i64]) -> Vec<i64> {
    let (w, bias) = win_weights(experts);
    let n = bits.len();
    (0..experts)
        .map(|e| bias[e] + (0..n).map(|k| w[e * n + k] * bits[k]).sum::<i64>())
        .collect()
}

/// The experts of each rank `0..k` (`E - 1 - r` wins): one expert, or after a near-tie cycle
/// none or several (see the module docs).
pub fn rank_sets(wins: &[i64], k: usize) -> Vec<Vec<usize>> {
    let e = wins.len() as i64;
    (0..k as i64)
        .map(|r| {
            wins.iter()
                .enumerate()
                .filter(|(_, &w)| w == e - 1 - r)
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}

/// The expert a rank's set selects: the bitwise OR of its indices (each index bit is the
/// clamped sum of the one-hot over the indices with that bit set), 0 for an empty rank; an
/// expert for every set, since the number of experts is a power of two.
pub fn selected_index(set: &[usize]) -> usize {
    set.iter().fold(0, |acc, &i| acc | i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wins_rank_like_top_k_with_ties_to_the_lower_index() {
        let accs: [&[i64]; 4] = [
            &[3, 9, 9, 1],
            &[5, 5, 5, 5],
            &[-2, 7, 0, 7, 7, 1, 7, 3],
            &[1, 0],
        ];
        for acc in accs {
            let e = acc.len();
            let bits: Vec<i64> = pairs(e)
                .iter()
                .map(|&(i, j)| (acc[j] > acc[i]) as i64)
                .collect();
            let w = wins(e, &bits);
            let top = crate::math::top_k(acc, 2);
            assert_eq!(
                rank_sets(&w, 2),
                vec![vec![top[0]], vec![top[1]]],
                "{acc:?}"
            );
        }
    }

    #[test]
    fn a_cycle_leaves_a_rank_empty_and_crowds_the_next() {
        // 0 < 1 < 2 < 0: every expert has one win
        let bits = [1, 0, 1]; // (0,1): 1 beats 0; (0,2): 0 beats 2; (1,2): 2 beats 1
        assert_eq!(wins(3, &bits), vec![1, 1, 1]);
        let sets = rank_sets(&wins(3, &bits), 2);
        assert_eq!(sets, vec![vec![], vec![0, 1, 2]]);
        assert_eq!(selected_index(&sets[0]), 0);
        assert_eq!(selected_index(&sets[1]), 3);
    }

    #[test]
    fn unsupported_shapes_are_refused() {
        assert!(check_supported(9, 1).is_err());
        assert!(check_supported(1, 1).is_err());
        assert!(check_supported(5, 1).is_err());
        assert!(check_supported(8, 3).is_err());
        assert!(check_supported(8, 2).is_ok());
    }
}
