//! A pool of classifiers over one input, with a cost-aware router (SecureRouter's setting): the
//! router scores every pool model on the input and the input is answered by the top-scoring
//! one. Cost-awareness lives in the router's weights: trained on utility targets (is pool model
//! `m` right on the example?), its scores estimate each model's utility, and `lambda * cost_m`
//! is folded into the bias of row `m`, so the top score is `utility - lambda * cost`'s.
//!
//! Every model of a pool takes the same quantized input (one input quantizer, one message
//! width) and gives the same number of outputs; the router ([`crate::pool_router`]) finds the
//! top score by a chain of sign reads, with the models' quantization. The encrypted evaluation lives in `veilmoe_protocols::pool`;
//! this module is the plaintext side: the pool, its checks and its reference.

use crate::capacity::{assign, Capacities, MAX_CAPACITY};
use crate::classifier::QuantizedClassifier;
use crate::error::{pool_error, Result};
pub use crate::pool_router::{PoolChoice, PoolRouter, SignRead};
use crate::reference::Rounding;
use serde::{Deserialize, Serialize};

/// Most models a pool may hold.
pub const MAX_POOL: usize = 16;

/// Pool models and their router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub models: Vec<QuantizedClassifier>,
    pub router: PoolRouter,
}

/// Most extra slots a covering fallback may have (it is not dispatched, so the dispatch's
/// limit does not apply): as many as a full pool's slots.
pub const MAX_COVERING_SLOTS: usize = MAX_POOL * MAX_CAPACITY;

/// Public capacities of a pool batch: slots per model, and the fallback model's extra slots for
/// the inputs whose chosen model was full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolCapacities {
    pub per_model: Capacities,
    pub fallback_model: usize,
    pub fallback_slots: usize,
}

/// Where an input of a batch is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In this global slot of its chosen model (`PoolCapacities::per_model` numbering).
    Chosen(usize),
    /// In this fallback slot (its chosen model was full).
    Fallback(usize),
    /// Nowhere: its model and the fallback were full.
    Dropped,
}

impl PoolCapacities {
    /// Checks the capacities against a pool of `models` models and a batch of `inputs`.
    pub fn validate(&self, models: usize, inputs: usize) -> Result<()> {
        if self.per_model.destinations() != models {
            return Err(pool_error(format!(
                "capacities for {} models, the pool has {models}",
                self.per_model.destinations()
            )));
        }
        if self.fallback_model >= models {
            return Err(pool_error(format!(
                "fallback model {} is not in the pool of {models}",
                self.fallback_model
            )));
        }
        // a covering fallback is never dispatched (it runs on every input), so only its bound
        // on the batch applies; otherwise its extra slots are a dispatch's destination
        if self.covers(inputs) {
            if self.fallback_slots > MAX_COVERING_SLOTS {
                return Err(pool_error(format!(
                    "{} fallback slots: a covering fallback holds at most {MAX_COVERING_SLOTS}",
                    self.fallback_slots
                )));
            }
        } else {
            Capacities::new(vec![self.fallback_slots])?;
        }
        if self.per_model.total() + self.fallback_slots < inputs {
            return Err(pool_error(format!(
                "capacities sum to {} slots for a batch of {inputs} inputs: they must cover it",
                self.per_model.total() + self.fallback_slots
            )));
        }
        Ok(())
    }

    /// Whether the fallback's extra slots hold every input that can overflow in a batch of
    /// `inputs` (at most `inputs - min_m C_m`, when all pick the model with the fewest slots):
    /// then no input is ever dropped, and every input not placed in another model is answered
    /// by the fallback model. The encrypted batch then runs the fallback model on every input
    /// in place, with no dispatch into it (`veilmoe_protocols::pool_batch`): cheaper whenever
    /// most inputs end there anyway.
    pub fn covers(&self, inputs: usize) -> bool {
        let fewest = self
            .per_model
            .per_destination()
            .iter()
            .copied()
            .min()
            .unwrap_or(0);
        self.fallback_slots + fewest >= inputs
    }

    /// Slots in all (the chosen models' and the fallback's).
    pub fn total(&self) -> usize {
        self.per_model.total() + self.fallback_slots
    }

    /// The model serving a global slot (fallback slots follow the models' slots).
    pub fn model_of(&self, slot: usize) -> Option<usize> {
        match self.per_model.locate(slot) {
            Some((m, _)) => Some(m),
            None => (slot < self.total()).then_some(self.fallback_model),
        }
    }

    /// The model that answers an input placed at `p` (`None`: dropped, no model answers it).
    pub fn answering_model(&self, p: Placement) -> Option<usize> {
        match p {
            Placement::Chosen(slot) => self.model_of(slot),
            Placement::Fallback(_) => Some(self.fallback_model),
            Placement::Dropped => None,
        }
    }
}

/// The batch rule: inputs in order take the next free slot of their chosen model; the inputs
/// that found it full then take, in order, the fallback model's extra slots; the rest are
/// dropped. The encrypted batch computes exactly this.
pub fn place(choices: &[usize], caps: &PoolCapacities) -> Result<Vec<Placement>> {
    let first = assign(choices, &caps.per_model)?;
    // the overflowed inputs take the fallback's extra slots in order
    let mut next = 0;
    Ok(first
        .iter()
        .map(|g| match g {
            Some(g) => Placement::Chosen(*g),
            None if next < caps.fallback_slots => {
                next += 1;
                Placement::Fallback(next - 1)
            }
            None => Placement::Dropped,
        })
        .collect())
}

impl Pool {
    /// Checks every model, that they share their input and output shape, and the router's shape
    /// and weights. A pool read from a file is used only after this.
    pub fn validate(&self) -> Result<()> {
        let m = self.models.len();
        if !(2..=MAX_POOL).contains(&m) {
            return Err(pool_error(format!(
                "a pool holds 2 to {MAX_POOL} models (one model needs no router), got {m}"
            )));
        }
        let first = &self.models[0];
        for (i, c) in self.models.iter().enumerate() {
            c.validate()?;
            if c.features() != first.features() {
                return Err(pool_error(format!(
                    "pool model {i} takes {} features, model 0 takes {}",
                    c.features(),
                    first.features()
                )));
            }
            if c.input != first.input || c.moe.quant.message_bits != first.moe.quant.message_bits {
                return Err(pool_error(format!(
                    "pool model {i} quantizes its input differently from model 0 (every model \
                     of a pool reads the same encrypted input)"
                )));
            }
            if c.outputs() != first.outputs() {
                return Err(pool_error(format!(
                    "pool model {i} gives {} outputs, model 0 gives {}",
                    c.outputs(),
                    first.outputs()
                )));
            }
        }
        let r = &self.router;
        r.validate(m, first.features())?;
        if r.quant.message_bits != first.moe.quant.message_bits {
            return Err(pool_error(format!(
                "the pool router reads {} bits, its models {}",
                r.quant.message_bits, first.moe.quant.message_bits
            )));
        }
        Ok(())
    }

    /// Number of features every model takes.
    pub fn features(&self) -> usize {
        self.models[0].features()
    }

    /// Encoding width of the router's encrypted input (its own first-stage read).
    pub fn router_input_width(&self) -> u32 {
        self.router.input_width(self.features())
    }

    /// The router's choice for a quantized input (the plaintext reference of the encrypted
    /// routing; `rounding` as for the models).
    pub fn choose(&self, x_q: &[i64], rounding: &mut Rounding) -> PoolChoice {
        self.router.choose(x_q, rounding)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arch::{ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, TopK};
    use crate::classifier::InputQuantizer;
    use crate::quant::Activation;
    use crate::quant::QuantParams;
    use crate::quantized::QuantizedMoe;

    #[test]
    fn a_fallback_covers_when_no_batch_can_drop() {
        let caps = |slots: Vec<usize>, extra| PoolCapacities {
            per_model: Capacities::new(slots).unwrap(),
            fallback_model: 1,
            fallback_slots: extra,
        };
        // at most 6 - 1 inputs overflow (all pick a model with one slot)
        assert!(!caps(vec![2, 1, 1], 4).covers(6));
        assert!(caps(vec![2, 1, 1], 5).covers(6));
        // a model without slots: every input can overflow
        assert!(!caps(vec![2, 0, 1], 5).covers(6));
        // covering, the extra slots may exceed the dispatch's limit (they are not dispatched)
        let wide = caps(vec![3, 0, 1], 16);
        assert!(wide.covers(16) && wide.validate(3, 16).is_ok());
        assert!(caps(vec![3, 0, 1], 15).validate(3, 16).is_err());
        // a short last batch keeps the configured capacities
        assert!(wide.validate(3, 5).is_ok());
        assert!(caps(vec![3, 0, 1], MAX_COVERING_SLOTS + 1)
            .validate(3, 16)
            .is_err());
        // whatever the choices, a covering plan places every input
        for choices in [vec![1; 16], vec![2; 16], (0..16).map(|i| i % 3).collect()] {
            let p = place(&choices, &wide).unwrap();
            assert!(!p.contains(&Placement::Dropped), "{choices:?}: {p:?}");
        }
    }

    fn classifier(h: usize, seed: u64) -> QuantizedClassifier {
        let cfg = MoeConfig {
            d: ModelDim(4),
            h: HiddenDim(h),
            experts: ExpertCount(1),
            top_k: TopK(1),
            ffn: FfnKind::Plain(Activation::Relu),
            gating: Gating::SoftmaxSelected,
        };
        QuantizedClassifier {
            moe: QuantizedMoe::random(cfg, QuantParams::for_message_bits(4), seed, true),
            input: InputQuantizer {
                input_scale: 0.5,
                input_zero_point: 0,
            },
            x_scale: 0.0,
            y_scale: 1.0,
            head: None,
        }
    }

    /// Two random models; the router picks model 1 where feature 0 is at most 0.
    pub(crate) fn pool() -> Pool {
        Pool {
            models: vec![classifier(2, 1), classifier(8, 2)],
            router: PoolRouter {
                weights: vec![1, 0, 0, 0, -1, 0, 0, 0],
                bias: Some(vec![0, 1]),
                quant: QuantParams::for_message_bits(4),
            },
        }
    }

    #[test]
    fn the_router_picks_the_top_logit_and_bad_pools_are_refused() {
        let p = pool();
        p.validate().unwrap();
        let hi = p.choose(&[7, 0, 0, 0], &mut Rounding::Exact);
        let lo = p.choose(&[-8, 0, 0, 0], &mut Rounding::Exact);
        assert_eq!((hi.model, lo.model), (0, 1), "{hi:?} {lo:?}");

        let mut bad = p.clone();
        bad.models[1].input.input_scale = 0.25;
        assert!(bad.validate().is_err());
        let mut bad = p.clone();
        bad.router.weights.pop();
        assert!(bad.validate().is_err());
        let mut bad = p.clone();
        bad.models.clear();
        assert!(bad.validate().is_err());
        let mut bad = p.clone();
        bad.models.pop();
        bad.router.weights.truncate(4);
        bad.router.bias = Some(vec![0]);
        assert!(bad.validate().unwrap_err().to_string().contains("2 to"));
    }

    #[test]
    fn batches_fill_chosen_models_then_the_fallback() {
        let caps = PoolCapacities {
            per_model: Capacities::new(vec![1, 2]).unwrap(),
            fallback_model: 0,
            fallback_slots: 1,
        };
        caps.validate(2, 4).unwrap();
        let got = place(&[1, 1, 1, 0, 0], &caps).unwrap();
        use Placement::*;
        assert_eq!(
            got,
            vec![Chosen(1), Chosen(2), Fallback(0), Chosen(0), Dropped]
        );
        assert_eq!(caps.model_of(3), Some(0));
        assert_eq!(caps.model_of(4), None);
        assert!(
            caps.validate(2, 5).is_err(),
            "4 slots cannot cover 5 inputs"
        );
        assert!(caps.validate(3, 4).is_err());
        let bad = PoolCapacities {
            fallback_model: 2,
            ..caps
        };
        assert!(bad.validate(2, 4).is_err());
    }
}
