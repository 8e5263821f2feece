//! Benchmark workloads, shared by `veilmoe bench` and the criterion benches: per-primitive
//! medians ([`primitives`]), the encrypted MoE layer per token by strategy and number of
//! experts ([`moe`]), and throughput against threads ([`scaling`]).

pub mod moe;
pub mod primitives;
pub mod scaling;
pub mod timing;
