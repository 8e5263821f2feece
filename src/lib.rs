pub use veilmoe_engine as engine;
pub use veilmoe_protocols as protocols;
