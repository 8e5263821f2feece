//! A classifier around one quantized MoE block, the unit veilmoe's batch jobs evaluate:
//!
//! ```text
//! x_q    = clamp(round(raw / input_scale) + input_zero_point)      client, before encryption
//! y      = MoE(x_q)                                                 server, under encryption
//! hidden = (x_q - input_zero_point) * x_scale + y * y_scale         client, after decryption
//! logits = head_weight . hidden + head_bias                         client, after decryption
//! ```
//!
//! The server evaluates the MoE block (router, top-k, gates, experts: everything that touches
//! the routing decision). The classification head is a small public affine map that the client
//! applies in floating point to the decrypted block output (plus the residual input when the
//! model has one): evaluating it under encryption would read a wide accumulator through PBS
//! noise and cost agreement for nothing, since the client holds both the input and the output.

use crate::error::{ModelError, Result};
use crate::quantized::QuantizedMoe;
use crate::reference::Rounding;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Identifies a quantized model: the first 16 bytes of the SHA-256 of its serialized content
/// (weights, quantization parameters, input quantizer, head). A batch encrypted for one model is
/// refused by another, since the input encoding and quantization depend on the weights; the
/// client's model file records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelId(pub [u8; 16]);

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// How raw input features (as the data file holds them) become the block's signed m-bit input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputQuantizer {
    /// Raw value of one input step.
    pub input_scale: f64,
    /// Quantized value of a raw 0.
    pub input_zero_point: i64,
}

/// The public affine classification head, applied by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// classes x d, row-major.
    pub weight: Vec<f32>,
    /// One per class.
    pub bias: Vec<f32>,
}

/// One MoE block with its input quantizer, output scales and optional head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedClassifier {
    pub moe: QuantizedMoe,
    pub input: InputQuantizer,
    /// Real value of one step of `x_q - input_zero_point` in the residual stream; 0 for a model
    /// without a residual connection around the block.
    pub x_scale: f64,
    /// Real value of one m-bit read step of the block output `y` (gates included). The client
    /// decrypts `y` wide, in accumulator steps, each `2^-expert_output_shift` of a read step
    /// (see [`QuantizedClassifier::y_step`]).
    pub y_scale: f64,
    pub head: Option<Head>,
}

impl QuantizedClassifier {
    /// The model's id: a hash of its quantized content.
    pub fn id(&self) -> ModelId {
        // Serializing plain data (numbers, vectors, options) into memory cannot fail.
        let bytes = bincode::serialize(self).unwrap_or_default();
        let mut id = [0u8; 16];
        id.copy_from_slice(&Sha256::digest(&bytes)[..16]);
        ModelId(id)
    }

    /// Checks the block and the head's shape.
    pub fn validate(&self) -> Result<()> {
        self.moe.validate()?;
        if !(self.input.input_scale.is_finite() && self.input.input_scale > 0.0) {
            return Err(ModelError::Config(format!(
                "input scale must be positive and finite, got {}",
                self.input.input_scale
            )));
        }
        for (name, v) in [
            ("residual scale", self.x_scale),
            ("output scale", self.y_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ModelError::Config(format!(
                    "{name} must be finite and non-negative, got {v}"
                )));
            }
        }
        if !self.input.input_scale.is_finite()
            || self.input.input_zero_point.unsigned_abs() > 1 << 16
        {
            return Err(ModelError::Config(format!(
                "input zero point {} is out of range",
                self.input.input_zero_point
            )));
        }
        if let Some(h) = &self.head {
            let d = self.moe.config.d.0;
            if h.weight.iter().chain(&h.bias).any(|v| !v.is_finite()) {
                return Err(ModelError::Weights("head: a weight is not finite".into()));
            }
            if h.bias.is_empty() || h.bias.len() > 1 << 16 || h.weight.len() != h.bias.len() * d {
                return Err(ModelError::Weights(format!(
                    "head: {} weights and {} biases do not form a classes x {d} matrix",
                    h.weight.len(),
                    h.bias.len()
                )));
            }
        }
        Ok(())
    }

    /// Number of input features.
    pub fn features(&self) -> usize {
        self.moe.config.d.0
    }

    /// Number of outputs the client gets per record: classes with a head, else d.
    pub fn outputs(&self) -> usize {
        self.head
            .as_ref()
            .map_or(self.moe.config.d.0, |h| h.bias.len())
    }

    /// The records (indices) that push a value of the layer past one of its calibrated boxes
    /// ([`crate::QuantizedMoe::overflows`]): under encryption that value wraps and the record's
    /// output is meaningless. The client can tell before it encrypts: it holds the records and
    /// the model. Always empty for a model quantized with worst-case ranges.
    pub fn overflowing_records(&self, records: &[Vec<f32>]) -> Result<Vec<usize>> {
        if self.moe.calibrated_shift.is_none() && self.moe.calibrated_output_width.is_none() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if self.moe.overflows(&self.quantize_input(r)?) > 0 {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Client side: raw features to the block's signed m-bit input.
    pub fn quantize_input(&self, raw: &[f32]) -> Result<Vec<i64>> {
        if raw.len() != self.features() {
            return Err(ModelError::Config(format!(
                "a record has {} features, the model takes {}",
                raw.len(),
                self.features()
            )));
        }
        let (lo, hi) = (self.moe.quant.input_min(), self.moe.quant.input_max());
        raw.iter()
            .map(|&v| {
                if !v.is_finite() {
                    return Err(ModelError::Config(format!(
                        "input value {v} is not a finite number"
                    )));
                }
                let q = (v as f64 / self.input.input_scale).round() as i64
                    + self.input.input_zero_point;
                Ok(q.clamp(lo, hi))
            })
            .collect()
    }

    /// Real value of one step of the decrypted block output (an accumulator step, not a read
    /// step: the output reaches the client wide).
    pub fn y_step(&self) -> f64 {
        self.y_scale / 2f64.powi(self.moe.expert_output_shift() as i32)
    }

    /// Client side: the model's outputs (class logits, or the block output in real units when
    /// there is no head) from the quantized input and the decrypted block output.
    pub fn outputs_from(&self, x_q: &[i64], y: &[i64]) -> Vec<f64> {
        let y_step = self.y_step();
        let hidden: Vec<f64> = x_q
            .iter()
            .zip(y)
            .map(|(&x, &y)| {
                (x - self.input.input_zero_point) as f64 * self.x_scale + y as f64 * y_step
            })
            .collect();
        match &self.head {
            None => hidden,
            Some(h) => {
                let d = hidden.len();
                h.bias
                    .iter()
                    .enumerate()
                    .map(|(c, &b)| {
                        let row = &h.weight[c * d..(c + 1) * d];
                        b as f64
                            + row
                                .iter()
                                .zip(&hidden)
                                .map(|(&w, &v)| w as f64 * v)
                                .sum::<f64>()
                    })
                    .collect()
            }
        }
    }

    /// The plaintext integer reference of the whole classifier on raw features (the encrypted
    /// path's exact counterpart; `rounding` selects exact or simulated requantization).
    pub fn reference_outputs(&self, raw: &[f32], rounding: &mut Rounding) -> Result<Vec<f64>> {
        let x_q = self.quantize_input(raw)?;
        let r = self.moe.reference(&x_q, rounding);
        Ok(self.outputs_from(&x_q, &r.y))
    }
}
