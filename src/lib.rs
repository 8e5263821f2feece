//! veilmoe: private Mixture-of-Experts inference under TFHE. A facade over the crates:
//! [`format`] (the file envelope), [`engine`] (crypto core), [`model`] (models without crypto)
//! and [`protocols`] (the encrypted MoE layer and the client/server session API).

pub use veilmoe_engine as engine;
pub use veilmoe_format as format;
pub use veilmoe_model as model;
pub use veilmoe_protocols as protocols;
