//! Benchmark workloads, shared by `veilmoe bench` and the criterion benches: per-primitive
//! medians ([`primitives`]), the encrypted MoE layer per token by strategy and number of
//! experts ([`moe`]) and over batches with expert capacities ([`capacity`]), routing over a
//! pool of models ([`route`]), throughput against threads ([`scaling`]), and tfhe's multi-bit
//! blind rotation against the classic one ([`multibit`]).

pub mod capacity;
pub mod moe;
pub mod multibit;
pub mod primitives;
pub mod route;
pub mod scaling;
pub mod timing;
