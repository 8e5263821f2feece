//! veilmoe-tools: the library behind the `veilmoe` binary (benchmark workloads shared with the
//! criterion benches).

pub mod bench;
pub mod moe_bench;
