//! Encrypted routing over a pool of models, per input: the oblivious baseline of
//! [`veilmoe_model::pool`]. The server runs the pool's router on the encrypted input, then every
//! pool model (it must not learn which one the router chose), and multiplies each model's
//! output terms by that model's circuit-bootstrapped one-hot bit: the chosen model's terms come
//! through, every other model's become encryptions of zero. The client decrypts the one-hot,
//! then the chosen model's terms, and applies that model's head.
//!
//! Cost per input, all public: the router's decision chain ([`crate::pool_router`]), M circuit
//! bootstraps, every model's full layer, and one external product per value of every output
//! term. It costs more than the largest model alone: per input, hiding the choice means
//! running everything. Batches with public per-model capacities ([`crate::dispatch`]) are where a
//! pool saves time.
//!
//! Each model (and the router) reads its first-stage accumulators through their own top bits,
//! so each takes the input at its own encoding width: the client uploads one packed copy per
//! model plus one for the router ([`PoolInput`]), a few KiB each, seeded.

use crate::error::{config, session, Result};
use crate::layer::{decrypt_terms, output_coefficients, MoeLayer};
use crate::pool_router::PoolRouterTables;
use crate::strategy::ExpertStrategy;
use veilmoe_engine::{ClientKey, Encoding, Evaluator, LweVector, PackedGlwe, ValueRange};
use veilmoe_model::pool::Pool;

/// A pool prepared for one server key.
pub struct PoolLayer {
    pool: Pool,
    router: PoolRouterTables,
    layers: Vec<MoeLayer>,
}

/// One input, encrypted for the router and for each model at its own width.
pub struct PoolInput {
    pub router: PackedGlwe,
    pub models: Vec<PackedGlwe>,
}

/// The encrypted result of one input.
pub struct PoolOutput {
    /// The router chain's bits `c_1 .. c_{M-1}` ([`veilmoe_model::pool_router`]).
    pub decisions: LweVector,
    /// 1 at the chosen model.
    pub onehot: LweVector,
    /// Per model, its output terms `y = sum c * term` times its one-hot bit: zero except for the
    /// chosen model.
    pub terms: Vec<Vec<(i64, LweVector)>>,
}

impl PoolLayer {
    pub fn new(ev: &Evaluator, pool: Pool) -> Result<PoolLayer> {
        pool.validate()?;
        let router = PoolRouterTables::new(ev, &pool)?;
        let layers = pool
            .models
            .iter()
            .map(|c| MoeLayer::new(ev, c.moe.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(PoolLayer {
            pool,
            router,
            layers,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn layers(&self) -> &[MoeLayer] {
        &self.layers
    }

    /// The router on an input: its chain's bits and the one-hot of the chosen model.
    pub(crate) fn choose(
        &self,
        ev: &Evaluator,
        input: &PoolInput,
    ) -> Result<(LweVector, LweVector)> {
        if input.models.len() != self.layers.len() {
            return Err(config(format!(
                "an input encrypted for {} models, the pool has {}",
                input.models.len(),
                self.layers.len()
            )));
        }
        let routing = self.router.route(ev, &input.router)?;
        Ok((routing.decisions, routing.onehot))
    }

    /// Client side: a quantized input (the pool's shared input quantizer) encrypted for the
    /// router and every model.
    pub fn encrypt(&self, client: &ClientKey, x: &[i64]) -> Result<PoolInput> {
        let models = self
            .layers
            .iter()
            .map(|l| l.encrypt(client, x))
            .collect::<Result<Vec<_>>>()?;
        let q = &self.pool.router.quant;
        let width = self.router.input_width();
        let router = client
            .encrypt_packed(x, Encoding::signed(width))?
            .with_range(ValueRange::new(q.input_min(), q.input_max())?)?;
        Ok(PoolInput { router, models })
    }

    /// Routes the input, runs every model (each with `strategy`), and keeps the chosen model's
    /// output terms obliviously.
    pub fn forward(
        &self,
        ev: &Evaluator,
        input: &PoolInput,
        strategy: &dyn ExpertStrategy,
    ) -> Result<PoolOutput> {
        let (decisions, onehot) = self.choose(ev, input)?;
        ev.set_stage("pool-ggsw");
        let bits = ev.circuit_bootstrap(&onehot)?;
        let mut terms = Vec::with_capacity(self.layers.len());
        for ((layer, x), bit) in self.layers.iter().zip(&input.models).zip(&bits) {
            let out = layer.forward(ev, x, strategy)?;
            ev.set_stage("pool-select");
            terms.push(
                out.y_terms
                    .iter()
                    .map(|(c, t)| Ok((*c, ev.external_product_lwe(bit, t)?)))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        Ok(PoolOutput {
            decisions,
            onehot,
            terms,
        })
    }
}

impl PoolOutput {
    /// Client side: the chosen model and its layer output `y` (as
    /// [`crate::MoeOutput::decrypt_y`] gives it), after checking the one-hot and that model's
    /// public term structure.
    pub fn decrypt(&self, client: &ClientKey, pool: &Pool) -> Result<(usize, Vec<i64>)> {
        let onehot = client.decrypt_lwe(&self.onehot)?;
        let chosen: Vec<usize> = (0..onehot.len()).filter(|&i| onehot[i] == 1).collect();
        if onehot.len() != pool.models.len()
            || chosen.len() != 1
            || onehot.iter().any(|&b| b != 0 && b != 1)
            || self.terms.len() != pool.models.len()
        {
            return Err(session(format!(
                "a pool result must choose exactly one of {} models, got one-hot {onehot:?}",
                pool.models.len()
            )));
        }
        let m = chosen[0];
        let decisions = client.decrypt_lwe(&self.decisions)?;
        if decisions.len() + 1 != pool.models.len()
            || veilmoe_model::pool_router::chain_winner(&decisions) != Some(m)
        {
            return Err(session(format!(
                "a pool result's chain bits {decisions:?} do not choose its one-hot's model {m}"
            )));
        }
        let want = output_coefficients(&pool.models[m].moe);
        if self.terms[m].iter().map(|(c, _)| *c).ne(want) {
            return Err(session(format!(
                "pool model {m}'s result terms differ from its public structure"
            )));
        }
        Ok((m, decrypt_terms(client, &self.terms[m])?))
    }
}
