//! veilmoe-tools: the library behind the `veilmoe` binary: batch and results files, input
//! readers, encrypted batch jobs (encrypt, infer with checkpoints and shards, merge, decrypt),
//! and the benchmark workloads shared with the criterion benches.

pub mod batch;
pub mod bench;
pub mod input;
pub mod job;
pub mod model_source;
pub mod moe_bench;
pub mod params;
pub mod params_check;
pub mod params_cli;
pub mod params_estimate;
pub mod params_sweep;
pub mod probe;
pub mod run_demo;
