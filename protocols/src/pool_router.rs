//! The encrypted decision chain of a pool router ([`veilmoe_model::pool_router`]): the router's
//! accumulators from one leveled product, the sign reads of every pair's difference
//! `acc_k - acc_j` (`j < k`) in one batch, per model `k >= 2` the AND of its `k` reads (one
//! small read of their sum), and the one-hot from the bits.
//!
//! Cost per input (M models), all public: one packed product, `M (M - 1) / 2` sign reads,
//! `M - 2` ANDs (more above 8 models, where a sum of `k` bits no longer fits a read and is
//! split), and `2 (M - 2)` small reads for the one-hot; no circuit bootstrap. Against the MoE
//! router's logit reads and tournament (`3M - 2` PBS for top-1), the chain decides each
//! comparison as finely as the read's noise allows instead of to a read step.

use crate::error::{config, Result};
use veilmoe_engine::{
    Cols, Encoding, Evaluator, Lut, LweVector, PackedGlwe, PackedWeights, Rows, WeightMatrix,
};
use veilmoe_model::pool::{Pool, SignRead};
use veilmoe_model::pool_router::pairs;

/// The router's weights and tables, built once per pool and preset.
pub struct PoolRouterTables {
    weights: PackedWeights,
    bias: Option<Vec<i64>>,
    read: SignRead,
    /// `[acc_k - acc_j >= 1]` from the difference plus the read's offset.
    sign: Lut,
    /// `all[n - 2]`: `[u == n]` on a sum of `n` bits, for `n = 2 ..= bit.max()`: their AND.
    all: Vec<Lut>,
    /// `[u >= 1]` on a sum of two bits: "some later model won".
    or: Lut,
    /// `[u == 1]` on `c_k - later`: model `k` won and no later model did.
    only: Lut,
    bit: Encoding,
    models: usize,
}

/// The chain's encrypted result for one input.
pub struct PoolRouting {
    /// The chain's bits `c_1 .. c_{M-1}`.
    pub decisions: LweVector,
    /// 1 at the chosen model.
    pub onehot: LweVector,
}

impl PoolRouterTables {
    /// The tables of a validated pool's router.
    pub fn new(ev: &Evaluator, pool: &Pool) -> Result<PoolRouterTables> {
        let p = ev.preset();
        let d = pool.features();
        let r = &pool.router;
        let m = r.quant.message_bits;
        if m > p.message_bits {
            return Err(config(format!(
                "the pool router reads {m} bits, the preset `{}` reads only {}",
                p.name, p.message_bits
            )));
        }
        let models = r.models(d);
        if models < 2 {
            return Err(config(format!(
                "a pool router chooses among 2 or more models, got {models}"
            )));
        }
        let read = r.sign_read(d);
        let bit = Encoding::signed(m);
        let sign = Lut::requantize(
            p,
            Encoding::signed(read.width),
            read.shift(),
            bit,
            SignRead::bit_of_quotient,
        )?;
        Ok(PoolRouterTables {
            weights: PackedWeights::new(
                p,
                WeightMatrix::new(Rows(models), Cols(d), r.weights.clone())?,
            ),
            bias: r.bias.clone(),
            read,
            sign,
            all: (2..=bit.max())
                .map(|n| Lut::univariate(p, bit, bit, move |u| (u == n) as i64))
                .collect::<std::result::Result<_, _>>()?,
            or: Lut::univariate(p, bit, bit, |u| (u >= 1) as i64)?,
            only: Lut::univariate(p, bit, bit, |u| (u == 1) as i64)?,
            bit,
            models,
        })
    }

    /// Encoding width of the router's encrypted input.
    pub fn input_width(&self) -> u32 {
        self.read.width
    }

    /// The chain on an input encrypted at [`PoolRouterTables::input_width`].
    pub fn route(&self, ev: &Evaluator, x: &PackedGlwe) -> Result<PoolRouting> {
        ev.set_stage("pool-router");
        let acc = ev.packed_matvec(&self.weights, self.bias.as_deref(), x)?;
        let wide = acc.encoding();
        let diffs = pairs(self.models)
            .map(|(j, k)| {
                let d = ev.linear_combination(
                    &[&acc.slice(k..k + 1)?, &acc.slice(j..j + 1)?],
                    &[1, -1],
                    wide,
                )?;
                Ok(ev.add_plain(&d, &[self.read.offset])?)
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&LweVector> = diffs.iter().collect();
        let reads = ev.pbs(&LweVector::concat(&refs)?, &self.sign)?;
        let decisions = (1..self.models)
            .map(|k| {
                let first = k * (k - 1) / 2;
                let bits = (first..first + k)
                    .map(|i| Ok(reads.slice(i..i + 1)?))
                    .collect::<Result<Vec<_>>>()?;
                self.and(ev, bits)
            })
            .collect::<Result<Vec<_>>>()?;
        ev.set_stage("pool-top-1");
        let onehot = self.onehot(ev, &decisions)?;
        let parts: Vec<&LweVector> = decisions.iter().collect();
        Ok(PoolRouting {
            decisions: LweVector::concat(&parts)?,
            onehot,
        })
    }

    /// The AND of encrypted bits: one read of their sum, in groups that fit the bits'
    /// encoding (a sum of at most `bit.max()` bits), then of the groups' ANDs.
    fn and(&self, ev: &Evaluator, mut bits: Vec<LweVector>) -> Result<LweVector> {
        let group = self.all.len() + 1;
        while bits.len() > 1 {
            bits = bits
                .chunks(group)
                .map(|g| {
                    if g.len() == 1 {
                        return Ok(g[0].clone());
                    }
                    let refs: Vec<&LweVector> = g.iter().collect();
                    let u = ev.linear_combination(&refs, &vec![1; g.len()], self.bit)?;
                    Ok(ev.pbs(&u, &self.all[g.len() - 2])?)
                })
                .collect::<Result<Vec<_>>>()?;
        }
        bits.pop().ok_or_else(|| config("an AND of no bits"))
    }

    /// Model `k` answers iff `c_k = 1` and no later bit is 1; model 0 iff no bit is 1.
    /// `c[i]` holds `c_{i+1}`.
    fn onehot(&self, ev: &Evaluator, c: &[LweVector]) -> Result<LweVector> {
        let m = self.models;
        // after[k]: some model after k won, for k = 0 .. M-2 (after[M-2] is c_{M-1} itself)
        let mut after = vec![c[m - 2].clone(); m - 1];
        for k in (0..m - 2).rev() {
            let u = ev.linear_combination(&[&c[k], &after[k + 1]], &[1, 1], self.bit)?;
            after[k] = ev.pbs(&u, &self.or)?;
        }
        let none = ev.linear_combination(&[&after[0]], &[-1], self.bit)?;
        let mut parts = vec![ev.add_plain(&none, &[1])?];
        for k in 1..m - 1 {
            let u = ev.linear_combination(&[&c[k - 1], &after[k]], &[1, -1], self.bit)?;
            parts.push(ev.pbs(&u, &self.only)?);
        }
        parts.push(c[m - 2].clone());
        let refs: Vec<&LweVector> = parts.iter().collect();
        Ok(LweVector::concat(&refs)?)
    }
}
