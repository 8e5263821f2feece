//! veilmoe-tools: the library behind the `veilmoe`, `params` and `train_digits` binaries.
//!
//! - [`cli`]: argument structs and the code that calls the libraries and prints (the binaries
//!   only dispatch);
//! - [`jobs`]: offline batch jobs over the protocol's session API (encrypt, infer with
//!   checkpoints and shards, merge, decrypt, and `run` on the demo model);
//! - [`files`]: key files and record streams, every read bounded;
//! - [`model_source`]: which model a command runs (model file, checkpoint directory, demo);
//! - [`params`]: preset reports and the analyses `params` runs (probe, check, estimate, sweep);
//! - [`bench`]: benchmark workloads shared with the criterion benches;
//! - [`report`], [`progress`]: text-or-JSON output and progress of long work.

pub mod bench;
pub mod cli;
pub mod files;
pub mod jobs;
pub mod model_source;
pub mod params;
pub mod progress;
pub mod report;

pub use veilmoe_engine as engine;
pub use veilmoe_model as model;
pub use veilmoe_protocols as protocols;
