//! `veilmoe inspect`: what a veilmoe file is, without any key.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use veilmoe_engine::format::{self, ObjectKind};
use veilmoe_model::model_file::decode_model_file;
use veilmoe_protocols::session::wire::MAX_META_BYTES;
use veilmoe_protocols::session::{BatchMeta, ResultsMeta};

/// Largest file inspected (each envelope is checked in memory).
const MAX_INSPECT_BYTES: u64 = 64 << 30;

/// Says what a veilmoe file is: kind, preset, key-set id, size (and records for batches).
#[derive(Args)]
pub struct Inspect {
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

impl Inspect {
    pub fn run(self) -> Result<()> {
        let file = &self.file;
        let bytes = format::read_file(file, MAX_INSPECT_BYTES)?;
        let mut cursor = std::io::Cursor::new(bytes.as_slice());
        let first = format::read_envelope(&mut cursor, MAX_INSPECT_BYTES)?.context("empty file")?;
        let (h, payload) = format::read_header(&first)?;
        // Batch and results files: every record envelope is checked too.
        let mut records = 0u64;
        while let Some(env) = format::read_envelope(&mut cursor, MAX_INSPECT_BYTES)? {
            format::read_header(&env).with_context(|| format!("record {records}"))?;
            records += 1;
        }
        let kind = h.kind.name();
        let detail = match h.kind {
            ObjectKind::Batch => Some(serde_json::to_value(format::decode_payload::<BatchMeta>(
                h.kind,
                bounded(payload)?,
            )?)?),
            ObjectKind::Results => {
                Some(serde_json::to_value(
                    format::decode_payload::<ResultsMeta>(h.kind, bounded(payload)?)?,
                )?)
            }
            ObjectKind::QuantizedModel => {
                let m = decode_model_file(&first, &file.display().to_string())?;
                let c = &m.model.moe.config;
                Some(serde_json::json!({
                    "model_id": m.id.to_string(), "source": m.source, "d": c.d.0, "h": c.h.0,
                    "experts": c.experts.0, "top_k": c.top_k.0, "ffn": c.ffn.name(),
                    "message_bits": m.model.moe.quant.message_bits,
                    "classes": m.model.head.as_ref().map(|h| h.bias.len()),
                }))
            }
            _ => None,
        };
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "kind": kind, "format_version": h.version, "preset": h.preset_name,
                    "preset_fingerprint": h.preset.to_string(), "key_set": h.key_set.to_string(),
                    "payload_bytes": h.payload_len, "file_bytes": bytes.len(),
                    "records": records, "header": detail,
                })
            );
        } else {
            println!(
                "{}: {kind}, preset {} ({}), key set {}, {} payload bytes",
                file.display(),
                if h.preset_name.is_empty() {
                    "none"
                } else {
                    &h.preset_name
                },
                h.preset,
                h.key_set,
                h.payload_len
            );
            if let Some(d) = detail {
                println!("  {records} records; {d}");
            }
        }
        Ok(())
    }
}

/// A header payload no larger than a header may be.
fn bounded(payload: &[u8]) -> Result<&[u8]> {
    anyhow::ensure!(
        payload.len() as u64 <= MAX_META_BYTES,
        "a {}-byte header is larger than any batch or results header",
        payload.len()
    );
    Ok(payload)
}
