//! Qwen2-MoE's shared expert under encryption: an FFN every token uses, its output scaled by
//! its own gate `g = round(G * sigmoid(gate . x))`.
//!
//! Nothing here depends on the routing, so the shared expert costs the same for every token
//! and reveals nothing: per token
//! - leveled: the packed first-stage products (W1, W3 and the one gate row, like a routed
//!   expert's) and the second stage `W2 a + b2`;
//! - PBS: `h_s` (plain) or `4 h_s` (gated; `3 h_s` with the linear factor in the product) for the hidden activations, plus `gate_bits` reads of
//!   the gate row (one per bit of `g`, each the sigmoid and the bit in one table);
//! - circuit bootstraps: `gate_bits` (the gate's bits);
//! - external products: `gate_bits`, each over the d wide outputs, which stay wide: the client
//!   adds `sum_b 2^b * (g_b ? o : 0)` after decryption like the routed gates' terms.
//!
//! Where a batch is dispatched to slots, the shared expert's first-stage products travel with
//! the token's other products through the slots' CMUX trees
//! ([`crate::layer::MoeLayer::select_first_stage`]), and its output is computed from them.

use crate::error::Result;
use crate::ffn::{first_stage_weights, DeclaredRanges, ExpertTables, FfnTables};
use veilmoe_engine::{
    ClientKey, Encoding, Evaluator, GgswBit, Lut, LweVector, PackedGlwe, PackedRows, PackedWeights,
};
use veilmoe_model::QuantizedMoe;

/// The shared expert laid out for the engine: its FFN, its gate row and the gate-bit tables.
pub struct SharedTables {
    ffn: ExpertTables,
    gate: PackedWeights,
    gate_bias: i64,
    /// Bit `b` of the gate from the gate row's accumulator (requantized by the input shift).
    gate_bits: Vec<Lut>,
}

/// The shared expert's first-stage products of one token, still packed.
#[derive(Clone)]
pub struct SharedProducts {
    pub u: PackedRows,
    pub v: Option<PackedRows>,
    pub gate: PackedRows,
}

impl SharedOutput {
    /// Client side: the gate in [0, G] from its bits.
    pub fn decrypt_gate(&self, client: &ClientKey) -> Result<i64> {
        crate::router::decrypt_bits_value(client, &self.gate_bits)
    }
}

/// The shared expert's encrypted result for one token.
pub struct SharedOutput {
    /// The gate's bits, least significant first (the index bits' m-bit encoding, which the
    /// circuit bootstrap's budget assumes).
    pub gate_bits: LweVector,
    /// The output accumulators `W2 a + b2` (d values, wide, at the slot outputs' encoding).
    pub output: LweVector,
}

impl SharedTables {
    /// The tables of `model`'s shared expert (`None` when it has none).
    pub fn new(ev: &Evaluator, model: &QuantizedMoe) -> Result<Option<SharedTables>> {
        let Some(sh) = &model.shared else {
            return Ok(None);
        };
        let (p, q, d) = (ev.preset(), &model.quant, model.config.d.0);
        let input = Encoding::signed(model.input_width());
        let shift = model.input_shift();
        let declared = DeclaredRanges::of(model);
        let bit_encoding = Encoding::signed(q.message_bits);
        let g = q.gate_max();
        let gate_bits = (0..q.gate_bits)
            .map(|b| {
                Lut::requantize(p, input, shift, bit_encoding, |v| {
                    (sh.gate_value(v, g) >> b) & 1
                })
            })
            .collect::<veilmoe_engine::Result<Vec<_>>>()?;
        Ok(Some(SharedTables {
            ffn: ExpertTables::new(p, model, &sh.weights, sh.h, &declared)?,
            gate: first_stage_weights(p, &sh.gate, 1, d, declared.first_stage)?,
            gate_bias: sh.gate_bias,
            gate_bits,
        }))
    }

    /// First-stage products of a packed token (leveled).
    pub fn products(&self, ev: &Evaluator, x: &PackedGlwe) -> Result<SharedProducts> {
        let (u, v) = self.ffn.first_stage(ev, x)?;
        let gate =
            ev.packed_products(&self.gate, Some(std::slice::from_ref(&self.gate_bias)), x)?;
        Ok(SharedProducts { u, v, gate })
    }

    /// The gate bits and the wide output from first-stage products; `ffn` holds the layer's
    /// activation tables, which the shared expert shares with the routed ones.
    pub fn evaluate(
        &self,
        ev: &Evaluator,
        ffn: &FfnTables,
        products: &SharedProducts,
    ) -> Result<SharedOutput> {
        let gate = ev.extract_rows(&products.gate)?;
        let gate_bits = crate::router::read_bits(ev, &gate, &self.gate_bits)?;
        let u = ev.extract_rows(&products.u)?;
        let v = products
            .v
            .as_ref()
            .map(|v| ev.extract_rows(v))
            .transpose()?;
        let a = ffn.hidden(ev, &u, v.as_ref())?;
        let output = self.ffn.second_stage(ev, &a)?;
        Ok(SharedOutput { gate_bits, output })
    }

    /// The layer output's terms of the shared expert, `(2^b, g_b ? o : 0)` per gate bit.
    pub fn terms(&self, ev: &Evaluator, out: &SharedOutput) -> Result<Vec<(i64, LweVector)>> {
        let ggsw: Vec<GgswBit> = ev.circuit_bootstrap(&out.gate_bits)?;
        ggsw.iter()
            .enumerate()
            .map(|(b, g)| Ok((1i64 << b, ev.external_product_lwe(g, &out.output)?)))
            .collect()
    }
}
