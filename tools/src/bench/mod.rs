//! Benchmark workloads, shared by `veilmoe bench` and the criterion benches: per-primitive
//! medians ([`primitives`]) and the encrypted MoE layer per token by strategy and number of
//! experts ([`moe`]).

pub mod moe;
pub mod primitives;
pub mod timing;
