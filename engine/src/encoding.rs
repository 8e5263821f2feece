//! How integers sit on the 2^64 torus.
//!
//! An [`Encoding`] of width `w` places an integer `v` at `v * 2^(63 - w)`: `w` message bits under
//! one padding bit, the layout a PBS needs to evaluate an arbitrary (non-negacyclic) function.
//! Unsigned values use `[0, 2^w)`; signed values use `[-2^(w-1), 2^(w-1))` and are shifted by
//! `2^(w-1)` (a free plaintext addition) right before a PBS, so the padding bit stays clear.
//!
//! A linear layer's accumulator usually needs a larger `w` than the preset's precision `p`; a PBS
//! reads only its top bits, which requantizes it (see [`crate::lut::Lut::requantize`]).

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};

/// Torus layout of one encrypted integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Encoding {
    /// Message bits under the padding bit.
    pub width: u32,
    /// Two's-complement signed values.
    pub signed: bool,
}

impl Encoding {
    /// Largest supported width: leaves room for the padding bit and some noise.
    pub const MAX_WIDTH: u32 = 48;

    pub fn unsigned(width: u32) -> Encoding {
        Encoding {
            width,
            signed: false,
        }
    }
    pub fn signed(width: u32) -> Encoding {
        Encoding {
            width,
            signed: true,
        }
    }

    /// Checks the width.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.width > Self::MAX_WIDTH {
            return Err(EngineError::range(
                "encoding",
                format!(
                    "width must be in 1..={}, got {}",
                    Self::MAX_WIDTH,
                    self.width
                ),
            ));
        }
        Ok(())
    }

    /// The scaling factor 2^(63 - width).
    pub fn delta(&self) -> u64 {
        1u64 << (63 - self.width)
    }

    /// Smallest representable value.
    pub fn min(&self) -> i64 {
        if self.signed {
            -(1i64 << (self.width - 1))
        } else {
            0
        }
    }

    /// Largest representable value.
    pub fn max(&self) -> i64 {
        if self.signed {
            (1i64 << (self.width - 1)) - 1
        } else {
            (1i64 << self.width) - 1
        }
    }

    /// Offset added before a PBS so that the value is in `[0, 2^width)`.
    pub fn pbs_offset(&self) -> i64 {
        if self.signed {
            1i64 << (self.width - 1)
        } else {
            0
        }
    }

    /// Encodes `v`, refusing values outside the range.
    pub fn encode(&self, v: i64) -> Result<u64> {
        if v < self.min() || v > self.max() {
            return Err(EngineError::range(
                "encoding",
                format!(
                    "{v} is outside [{}, {}] of a {}-bit {} encoding",
                    self.min(),
                    self.max(),
                    self.width,
                    if self.signed { "signed" } else { "unsigned" }
                ),
            ));
        }
        Ok(self.encode_wrapping(v))
    }

    /// Encodes `v` modulo 2^(width + 1) (no range check); used for LUT outputs and plaintext terms.
    pub fn encode_wrapping(&self, v: i64) -> u64 {
        (v as u64).wrapping_mul(self.delta())
    }

    /// Decodes a decrypted phase: rounds to the nearest multiple of delta. Unsigned values are
    /// read modulo 2^(width + 1); signed ones are sign-extended from width + 1 bits.
    pub fn decode(&self, phase: u64) -> i64 {
        let shift = 63 - self.width;
        let rounded = phase.wrapping_add(1u64 << (shift - 1)) >> shift;
        let bits = self.width + 1;
        let mask = (1u64 << bits) - 1;
        let r = rounded & mask;
        if self.signed && r >= (1u64 << self.width) {
            r as i64 - (1i64 << bits)
        } else {
            r as i64
        }
    }
}

/// The public range of values a ciphertext may hold (part of the model architecture, never
/// derived from data). Leveled operations propagate it exactly by interval arithmetic and refuse
/// a result that could leave its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ValueRange {
    pub min: i64,
    pub max: i64,
}

impl ValueRange {
    pub fn new(min: i64, max: i64) -> Result<ValueRange> {
        if min > max {
            return Err(EngineError::range(
                "value range",
                format!("min {min} > max {max}"),
            ));
        }
        Ok(ValueRange { min, max })
    }
    /// The full range of an encoding.
    pub fn of(enc: Encoding) -> ValueRange {
        ValueRange {
            min: enc.min(),
            max: enc.max(),
        }
    }
    /// Whether the range fits in `enc`.
    pub fn fits(&self, enc: Encoding) -> bool {
        self.min >= enc.min() && self.max <= enc.max()
    }
    /// Smallest range holding both.
    pub fn union(&self, o: &ValueRange) -> ValueRange {
        ValueRange {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
    /// The range of `sum_i c_i * x_i + b` for x_i in `ranges[i]` (exact interval arithmetic).
    pub fn affine(ranges: &[ValueRange], coeffs: &[i64], bias: i64) -> (i128, i128) {
        let (mut lo, mut hi) = (bias as i128, bias as i128);
        for (r, &c) in ranges.iter().zip(coeffs) {
            let (a, b) = (c as i128 * r.min as i128, c as i128 * r.max as i128);
            lo += a.min(b);
            hi += a.max(b);
        }
        (lo, hi)
    }
}

/// Fixed-point quantization of real values: `q = clamp(round(x / scale) + zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FixedPoint {
    pub scale: f64,
    pub zero_point: i64,
    pub encoding: Encoding,
}

impl FixedPoint {
    pub fn new(scale: f64, zero_point: i64, encoding: Encoding) -> Result<FixedPoint> {
        encoding.validate()?;
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(EngineError::range(
                "fixed point",
                format!("scale must be positive, got {scale}"),
            ));
        }
        if zero_point < encoding.min() || zero_point > encoding.max() {
            return Err(EngineError::range(
                "fixed point",
                format!("zero point {zero_point} outside the encoding"),
            ));
        }
        Ok(FixedPoint {
            scale,
            zero_point,
            encoding,
        })
    }

    /// Quantizes with saturation at the encoding's range.
    pub fn quantize(&self, x: f64) -> i64 {
        let q = (x / self.scale).round() + self.zero_point as f64;
        q.clamp(self.encoding.min() as f64, self.encoding.max() as f64) as i64
    }

    pub fn dequantize(&self, q: i64) -> f64 {
        (q - self.zero_point) as f64 * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_signed_and_unsigned() {
        for enc in [
            Encoding::signed(5),
            Encoding::unsigned(5),
            Encoding::signed(20),
        ] {
            for v in [enc.min(), enc.min() + 1, 0, enc.max() - 1, enc.max()] {
                let raw = enc.encode(v).unwrap();
                // small noise either way still decodes to v
                let noise = enc.delta() / 4;
                assert_eq!(enc.decode(raw.wrapping_add(noise)), v);
                assert_eq!(enc.decode(raw.wrapping_sub(noise)), v);
            }
            assert!(enc.encode(enc.max() + 1).is_err());
            assert!(enc.encode(enc.min() - 1).is_err());
        }
    }

    #[test]
    fn fixed_point_saturates() {
        let fp = FixedPoint::new(0.5, 0, Encoding::signed(4)).unwrap();
        assert_eq!(fp.quantize(1.0), 2);
        assert_eq!(fp.quantize(100.0), 7);
        assert_eq!(fp.quantize(-100.0), -8);
        assert_eq!(fp.dequantize(3), 1.5);
        assert!(FixedPoint::new(0.0, 0, Encoding::signed(4)).is_err());
    }
}
