//! veilmoe-protocols: the encrypted MoE protocols built on `veilmoe-engine` (router argmax,
//! top-k and gating under PBS, Select-Then-Compute expert evaluation, model-pool routing).
//!
//! The crate is part of the workspace layout from the start so that the facade and the tools
//! depend on it in one place; its protocols land with the MoE-layer work and are not yet here.
//! It re-exports the engine so downstream code can already name one crate.

pub use veilmoe_engine as engine;
