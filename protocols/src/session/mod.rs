//! The client/server session API: the only way records cross between the two parties.
//!
//! ```text
//! client: ClientSession::new_batch -> BatchMeta, encrypt_record -> BatchRecord  ----> server
//! server: ServerSession::check_batch, results_meta -> ResultsMeta,
//!         evaluate(BatchRecord) -> ResultRecord                               ----> client
//! client: ClientSession::check_results, decrypt_record(ResultRecord) -> Prediction
//! ```
//!
//! [`wire`] defines every message and the largest size each may have on a preset, so that a
//! reader bounds its allocations by what it expects. Each side validates what it receives
//! against its preset, key set and model before use: the server refuses a record of another
//! model, width or key set; the client decrypts only what its model and its own batch account
//! for (the echoed input carries the client's own authentication tag, the output terms must
//! have the model's structure), so a server cannot use it as a decryption oracle.

mod client;
mod server;
mod tag;
pub mod wire;

pub use client::{ClientSession, Prediction};
pub use server::ServerSession;
pub use wire::{BatchId, BatchMeta, BatchRecord, RecordTag, ResultRecord, ResultsMeta, Shard};
