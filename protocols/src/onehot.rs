//! The one-hot of a tournament's winner, read from its comparison bits.
//!
//! Leaf `i` won iff its path sum `t_i = sum(won_node - 1)` over the matches on its path is 0.
//! Reading each `t_i` costs one PBS per leaf (E). For a power-of-two bracket, both leaves of a
//! first-round pair share every node above that round, so one two-function many-LUT reads the
//! pair: `u = 2 (s + T) + c0`, with `s` the pair's sum over `T` terms above the first round and
//! `c0` the first-round bit; the left leaf won iff `u = 2T`, the right iff `u = 2T + 1` (E / 2
//! PBS). `u` takes `2T + 2` values, which must fit the half of the boxes a two-function many-LUT
//! reads, and carries `4T + 1` PBS outputs' noise, which must fit the budget: on the 4- and
//! 5-bit presets `T <= 3`, i.e. brackets up to 16 leaves. Beyond, the levels above groups of
//! 8 leaves are read first, one PBS per group (`[sum over the group's upper path = 0]`), and
//! that group bit takes the place of those levels in each pair's sum: E / 8 + E / 2 PBS instead
//! of E (40 instead of 64 at E = 64). The group bits are themselves the one-hot of the winner's
//! group, so the index bits above the group come from them (E / 16 terms each) rather than from
//! E / 2 leaves. The bracket is public; nothing depends on the data.

use crate::error::Result;
use veilmoe_engine::{Cols, Encoding, Evaluator, Lut, LweVector, Preset, Rows, WeightMatrix};

/// How the one-hot of a power-of-two bracket is read by pairs.
pub(crate) struct PairedOnehot {
    /// The pair's two-function many-LUT (left won, right won).
    pairs: Lut,
    /// Tournament levels (log2 E).
    levels: usize,
    /// Levels summed inside a pair's input, the first round included: all of them, or the
    /// levels of a group whose win is read first.
    group_levels: usize,
    /// T: the terms of a pair's sum above the first round (its many-LUT wins at 2T, 2T + 1).
    terms: usize,
}

/// What [`PairedOnehot::read`] returns.
pub(crate) struct PairedRead {
    /// E values, 1 at the winner.
    pub(crate) onehot: LweVector,
    /// For a grouped bracket: one bit per group of `2^levels` leaves, 1 at the winner's group
    /// (a one-hot over the groups).
    pub(crate) groups: Option<GroupBits>,
}

/// The one-hot over a grouped bracket's groups.
pub(crate) struct GroupBits {
    pub(crate) bits: LweVector,
    /// log2 of the leaves per group: leaf `i` is in group `i >> levels`.
    pub(crate) levels: usize,
}

impl PairedOnehot {
    /// The paired reading of an `experts`-leaf bracket on preset `p` (reads of `m` bits, the
    /// one-hot in `out`), or `None` where it does not pay or does not fit.
    pub(crate) fn new(p: &Preset, experts: usize, m: u32, out: Encoding) -> Result<Option<Self>> {
        if experts < 2 || !experts.is_power_of_two() || m < 2 {
            return Ok(None);
        }
        let levels = experts.trailing_zeros() as usize;
        // T terms: u in [0, 2T + 1] within the 2^(m-1) boxes of one function, and 4T + 1 PBS
        // outputs' noise within the budget.
        let by_boxes = (1usize << (m - 2)).saturating_sub(1);
        let by_noise = ((p.max_norm2 * p.max_norm2 - 1.0) / 4.0).floor().max(0.0) as usize;
        let max_terms = by_boxes.min(by_noise);
        let (terms, group_levels) = if levels - 1 <= max_terms {
            (levels - 1, levels)
        } else {
            // The group bit is one term; above the group, `levels - g` nodes must fit one read
            // (a signed m-bit sum in [-(levels - g), 0]) and the budget.
            let g = max_terms;
            let above = levels.saturating_sub(g);
            if g < 2 || above > (1usize << (m - 1)) || above as f64 > p.max_norm2 * p.max_norm2 {
                return Ok(None);
            }
            (g, g)
        };
        let win = 2 * terms as i64;
        let left = move |u: i64| (u == win) as i64;
        let right = move |u: i64| (u == win + 1) as i64;
        let pairs = Lut::many(p, Encoding::unsigned(m), out, &[&left, &right])?;
        Ok(Some(PairedOnehot {
            pairs,
            levels,
            group_levels,
            terms,
        }))
    }

    /// The one-hot from the comparison bits `c_all` (one per node, level by level from the
    /// first round) and each leaf's path weights `w` (E x n: -1 where the leaf is on a node's
    /// left, 1 on its right, 0 off its path). `group_win` reads a path sum's `[t = 0]`.
    pub(crate) fn read(
        &self,
        ev: &Evaluator,
        c_all: &LweVector,
        w: &[i64],
        group_win: &Lut,
    ) -> Result<PairedRead> {
        let n = c_all.len();
        let e = 1usize << self.levels;
        let pairs = e / 2;
        // Node j's level (1 = first round): the bracket is filled level by level.
        let mut level = Vec::with_capacity(n);
        for l in 1..=self.levels {
            level.extend(std::iter::repeat_n(l, e >> l));
        }
        let grouped = self.group_levels < self.levels;
        let groups = e >> self.group_levels;
        let group_bits = if grouped {
            // Group q's upper path sum, from its first leaf (the path above is shared).
            let mut wg = vec![0i64; groups * n];
            let mut bg = vec![0i64; groups];
            for q in 0..groups {
                let leaf = q << self.group_levels;
                for j in (0..n).filter(|&j| level[j] > self.group_levels) {
                    wg[q * n + j] = w[leaf * n + j];
                    if w[leaf * n + j] == 1 {
                        bg[q] -= 1;
                    }
                }
            }
            let t = ev.lwe_matvec(
                &WeightMatrix::new(Rows(groups), Cols(n), wg)?,
                Some(&bg),
                c_all,
            )?;
            Some(ev.pbs(&t, group_win)?)
        } else {
            None
        };
        // u_p = 2 (sum over the pair's in-group upper nodes of (won - 1) [+ group bit - 1] + T)
        // + c_p, over the inputs [c_all ; group bits].
        let cols = n + group_bits.as_ref().map_or(0, |g| g.len());
        let mut wp = vec![0i64; pairs * cols];
        let mut bp = vec![2 * self.terms as i64; pairs];
        for p in 0..pairs {
            let leaf = 2 * p;
            for j in (0..n).filter(|&j| level[j] >= 2 && level[j] <= self.group_levels) {
                wp[p * cols + j] = 2 * w[leaf * n + j];
                if w[leaf * n + j] == 1 {
                    bp[p] -= 2;
                }
            }
            wp[p * cols + p] = 1;
            if grouped {
                wp[p * cols + n + (leaf >> self.group_levels)] = 2;
                bp[p] -= 2;
            }
        }
        let inputs = match &group_bits {
            Some(g) => LweVector::concat(&[c_all, g])?,
            None => c_all.clone(),
        };
        let u = ev
            .lwe_matvec(
                &WeightMatrix::new(Rows(pairs), Cols(cols), wp)?,
                Some(&bp),
                &inputs,
            )?
            .with_encoding(self.pairs.input())?;
        let sides = ev.pbs_many(&u, &self.pairs)?;
        let leaves: Vec<LweVector> = (0..e)
            .map(|i| sides[i % 2].slice(i / 2..i / 2 + 1))
            .collect::<veilmoe_engine::Result<_>>()?;
        let refs: Vec<&LweVector> = leaves.iter().collect();
        Ok(PairedRead {
            onehot: LweVector::concat(&refs)?,
            groups: group_bits.map(|bits| GroupBits {
                bits,
                levels: self.group_levels,
            }),
        })
    }
}
