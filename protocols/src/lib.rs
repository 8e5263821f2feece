//! veilmoe-protocols: private Mixture-of-Experts inference over the engine.
//!
//! - [`router`]: encrypted router logits, tournament argmax, top-k, gates;
//! - [`ffn`]: encrypted expert FFNs, and [`shared`], Qwen2-MoE's gated shared expert;
//! - [`strategy`]: oblivious expert evaluation (select, compute-all) and the INSECURE
//!   public-routing reference, and the [`Strategy`] a job names;
//! - [`layer`]: the MoE layer end to end;
//! - [`dispatch`]: oblivious capacity dispatch (entries to the public slots of their chosen
//!   destinations) and [`capacity`], the MoE layer over a batch with expert capacities;
//! - [`pool`]: encrypted routing over a pool of models, per input (every model runs, the
//!   circuit-bootstrapped one-hot keeps the chosen model's output) and [`pool_batch`], a batch
//!   with public per-model capacities and a fallback model (each model runs on its slots only);
//! - [`simulate`]: the plaintext reference's simulation of a preset's approximate reads;
//! - [`session`]: the client/server session API and every wire message (batch and results
//!   records, their headers, shards): the client encrypts records into a request and decrypts a
//!   response, the server evaluates a request with a strategy.
//!
//! Models (checkpoints, quantization, the integer reference, data) live in the crypto-free
//! [`veilmoe_model`] crate, re-exported as [`model`].

pub mod capacity;
pub mod dispatch;
pub mod error;
pub mod ffn;
mod index_bits;
mod index_chain;
pub mod layer;
mod onehot;
mod pairwise;
pub mod pool;
pub mod pool_batch;
pub mod pool_router;
pub mod router;
pub mod session;
pub mod shared;
pub mod simulate;
pub mod strategy;

pub use error::{ProtocolError, Result};
pub use layer::{MoeLayer, MoeOutput};
pub use router::{Gates, Routing, Selection, SlotRouting};
pub use session::{ClientSession, ServerSession};
pub use simulate::simulated_rounding;
pub use strategy::{ComputeAll, ExpertStrategy, PublicRouting, Select, Strategy};
pub use veilmoe_engine as engine;
pub use veilmoe_model as model;
