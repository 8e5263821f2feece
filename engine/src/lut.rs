//! Lookup tables for programmable bootstrapping.
//!
//! A PBS reads the top `read_bits` bits (padding bit excluded) of its input's phase and returns
//! the table's entry for that box. Box `b` is centred on the value `b`, so a PBS rounds to the
//! nearest box. Three ways to fill a table:
//! - [`Lut::univariate`]: one box per input value (exact, `width <= message_bits`);
//! - [`Lut::requantize`]: a wide accumulator of `width` bits read through its top
//!   `width - shift` bits, so one PBS requantizes (divides by 2^shift with rounding), clips and
//!   applies an activation. The low bits act as rounding noise: values within the crypto noise of
//!   a box edge come out as floor or ceil of the exact quotient ("approximate rounding");
//! - [`Lut::many`]: several functions of a small input from one blind rotation (tfhe's many-LUT):
//!   function `j` fills the `j`-th sub-table and is read by extracting coefficient `j * stride`.

use crate::encoding::{Encoding, ValueRange};
use crate::error::{EngineError, Result};
use crate::preset::Preset;
use tfhe::core_crypto::prelude::*;

/// A filled accumulator plus what it expects and produces.
#[derive(Clone)]
pub struct Lut {
    pub(crate) acc: GlweCiphertextOwned<u64>,
    input: Encoding,
    output: Encoding,
    /// Range of the table's entries (the outputs' public range).
    out_range: ValueRange,
    read_bits: u32,
    /// Coefficients to extract, one per output function.
    pub(crate) extract: Vec<usize>,
}

impl std::fmt::Debug for Lut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Lut {{ input: {:?}, output: {:?}, read_bits: {}, outputs: {} }}",
            self.input,
            self.output,
            self.read_bits,
            self.extract.len()
        )
    }
}

fn fill(
    preset: &Preset,
    read_bits: u32,
    entry: &dyn Fn(usize) -> u64,
) -> Result<GlweCiphertextOwned<u64>> {
    let n = preset.glwe.polynomial_size;
    let log_n = n.trailing_zeros();
    if read_bits == 0 || read_bits >= log_n {
        return Err(EngineError::range(
            "lookup table",
            format!(
                "a PBS with N = {n} reads 1..={} bits, asked for {read_bits}",
                log_n - 1
            ),
        ));
    }
    let boxes = 1usize << read_bits;
    let box_size = n / boxes;
    let mut acc = GlweCiphertext::new(
        0u64,
        preset.glwe_dimension().to_glwe_size(),
        preset.polynomial_size(),
        CiphertextModulus::new_native(),
    );
    {
        let mut body = acc.get_mut_body();
        let coeffs = body.as_mut();
        for b in 0..boxes {
            let v = entry(b);
            coeffs[b * box_size..(b + 1) * box_size].fill(v);
        }
        // Centre each box on its value: negacyclic rotation by half a box.
        let half = box_size / 2;
        for c in coeffs[..half].iter_mut() {
            *c = c.wrapping_neg();
        }
        coeffs.rotate_left(half);
    }
    Ok(acc)
}

/// The table rotation that reads `v + offset` instead of `v` (an input of `width` bits read
/// with `shift`): `offset * N / 2^width` coefficients, refused unless whole and below half a box.
fn offset_in_coefficients(preset: &Preset, width: u32, shift: u32, offset: i64) -> Result<isize> {
    let n = preset.glwe.polynomial_size as i128;
    let scaled = offset as i128 * n;
    let unit = 1i128 << width;
    if shift == 0 || offset.unsigned_abs() >= 1u64 << (shift - 1) || scaled % unit != 0 {
        return Err(EngineError::range(
            "lookup table",
            format!(
                "a read offset of {offset} (shift {shift}, {width}-bit input, N = {n}) must be \
                 below half a box and a whole number of table coefficients"
            ),
        ));
    }
    Ok((scaled / unit) as isize)
}

/// `coeffs *= X^-by` in the negacyclic ring: the blind rotation of a phase `p` then reads the
/// table at `p + by`.
fn multiply_by_monomial(coeffs: &mut [u64], by: isize) {
    let r = by.unsigned_abs();
    if by > 0 {
        coeffs[..r].iter_mut().for_each(|c| *c = c.wrapping_neg());
        coeffs.rotate_left(r);
    } else if by < 0 {
        coeffs.rotate_right(r);
        coeffs[..r].iter_mut().for_each(|c| *c = c.wrapping_neg());
    }
}

/// Range of a table's entries; refuses entries outside the output encoding.
fn table_range(
    read_bits: u32,
    entry: &dyn Fn(usize) -> i64,
    output: Encoding,
) -> Result<ValueRange> {
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for b in 0..(1usize << read_bits.min(20)) {
        let v = entry(b);
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let r = ValueRange::new(lo, hi)?;
    if !r.fits(output) {
        return Err(EngineError::range(
            "lookup table",
            format!("outputs span {r:?}, outside the output encoding {output:?}"),
        ));
    }
    Ok(r)
}

impl Lut {
    /// `f` on every value of `input` (one box per value). Exact while `input.width` is at most the
    /// preset's message bits; wider inputs are read with approximate rounding (use
    /// [`Lut::requantize`] for that, which says so).
    pub fn univariate(
        preset: &Preset,
        input: Encoding,
        output: Encoding,
        f: impl Fn(i64) -> i64,
    ) -> Result<Lut> {
        Self::requantize(preset, input, 0, output, f)
    }

    /// Reads the top `input.width - shift` bits of a `width`-bit accumulator: the function sees
    /// `q = round(v / 2^shift)` (ties and near-edge values may come out as floor or ceil) and the
    /// output is `f(q)` in `output`'s encoding.
    pub fn requantize(
        preset: &Preset,
        input: Encoding,
        shift: u32,
        output: Encoding,
        f: impl Fn(i64) -> i64,
    ) -> Result<Lut> {
        Self::requantize_offset(preset, input, shift, 0, output, f)
    }

    /// [`Lut::requantize`] of `v + offset`: the function sees `q = round((v + offset) /
    /// 2^shift)`. The offset is a rotation of the table (`offset * N / 2^width` coefficients,
    /// which must be whole), so it costs nothing and adds no noise; several reads of one value at
    /// offsets a fraction of a box apart resolve it finer than one read (see
    /// `veilmoe_model::quant::QuantParams::activation_reads`). `|offset|` stays below half a box;
    /// the caller keeps `v + offset` inside the read box.
    pub fn requantize_offset(
        preset: &Preset,
        input: Encoding,
        shift: u32,
        offset: i64,
        output: Encoding,
        f: impl Fn(i64) -> i64,
    ) -> Result<Lut> {
        input.validate()?;
        output.validate()?;
        if shift >= input.width {
            return Err(EngineError::range(
                "lookup table",
                format!("shift {shift} >= input width {}", input.width),
            ));
        }
        let read_bits = input.width - shift;
        let q_offset = input.pbs_offset() >> shift;
        let out_range = table_range(read_bits, &|b| f(b as i64 - q_offset), output)?;
        let mut acc = fill(preset, read_bits, &|b| {
            output.encode_wrapping(f(b as i64 - q_offset))
        })?;
        if offset != 0 {
            let coefficients = offset_in_coefficients(preset, input.width, shift, offset)?;
            multiply_by_monomial(acc.get_mut_body().as_mut(), coefficients);
        }
        Ok(Lut {
            acc,
            input,
            output,
            out_range,
            read_bits,
            extract: vec![0],
        })
    }

    /// The sign table of [`crate::Evaluator::greater_than`]: `+1` (in `output`) for a phase in
    /// `[0, 1/2)` and, negacyclically, `-1` for a phase in `[-1/2, 0)`. Its input spans the whole
    /// torus, the padding bit included, so it reads only the sign of a difference of two values
    /// that each fill half of it; the boundary is not centred on a box (the caller places it).
    ///
    /// The table is constant, so extracting coefficient `c` instead of 0 reads the sign of the
    /// phase plus `c / 2N`: one blind rotation gives the sign at several thresholds, one output
    /// per coefficient of `extract` (each below N).
    pub(crate) fn sign(
        preset: &Preset,
        input: Encoding,
        output: Encoding,
        extract: &[usize],
    ) -> Result<Lut> {
        input.validate()?;
        output.validate()?;
        let n = preset.glwe.polynomial_size;
        if extract.is_empty() || extract.iter().any(|&c| c >= n) {
            return Err(EngineError::range(
                "sign table",
                format!("coefficients to extract must be below N = {n}, got {extract:?}"),
            ));
        }
        let one = output.encode_wrapping(1);
        let mut acc = GlweCiphertext::new(
            0u64,
            preset.glwe_dimension().to_glwe_size(),
            preset.polynomial_size(),
            CiphertextModulus::new_native(),
        );
        acc.get_mut_body().as_mut().fill(one);
        Ok(Lut {
            acc,
            input,
            output,
            out_range: ValueRange { min: -1, max: 1 },
            read_bits: 1,
            extract: extract.to_vec(),
        })
    }

    /// Several functions of one unsigned input from a single blind rotation. The input encoding
    /// has `width` bits but its values must stay below `2^width / m` (m = number of functions,
    /// rounded up to a power of two): the upper sub-tables hold the other functions.
    pub fn many(
        preset: &Preset,
        input: Encoding,
        output: Encoding,
        fs: &[&dyn Fn(i64) -> i64],
    ) -> Result<Lut> {
        input.validate()?;
        output.validate()?;
        if input.signed {
            return Err(EngineError::range("many-LUT", "input must be unsigned"));
        }
        if fs.is_empty() {
            return Err(EngineError::range("many-LUT", "no function given"));
        }
        let m = fs.len().next_power_of_two();
        let m_bits = m.trailing_zeros();
        if m_bits >= input.width {
            return Err(EngineError::range(
                "many-LUT",
                format!(
                    "{} functions need more than {} input bits",
                    fs.len(),
                    input.width
                ),
            ));
        }
        let per_fn = 1usize << (input.width - m_bits);
        let out_range = table_range(
            input.width,
            &|b| fs.get(b / per_fn).map_or(0, |f| f((b % per_fn) as i64)),
            output,
        )?;
        let acc = fill(preset, input.width, &|b| {
            let (j, v) = (b / per_fn, b % per_fn);
            fs.get(j).map_or(0, |f| output.encode_wrapping(f(v as i64)))
        })?;
        let box_size = preset.glwe.polynomial_size >> input.width;
        Ok(Lut {
            acc,
            input,
            output,
            out_range,
            read_bits: input.width,
            extract: (0..fs.len()).map(|j| j * per_fn * box_size).collect(),
        })
    }

    /// Largest valid input value of a many-LUT (`2^width / m - 1`); for other tables, the encoding's max.
    pub fn max_input(&self) -> i64 {
        let m = self.extract.len().next_power_of_two() as i64;
        if self.extract.len() > 1 {
            (1i64 << self.input.width) / m - 1
        } else {
            self.input.max()
        }
    }

    pub fn input(&self) -> Encoding {
        self.input
    }
    pub fn output(&self) -> Encoding {
        self.output
    }
    /// Range of the outputs.
    pub fn output_range(&self) -> ValueRange {
        self.out_range
    }
    /// Bits read by the PBS (padding excluded).
    pub fn read_bits(&self) -> u32 {
        self.read_bits
    }
    /// Number of functions evaluated per PBS.
    pub fn outputs(&self) -> usize {
        self.extract.len()
    }
}

/// A function of two unsigned inputs `a` (`a_bits`) and `b` (`b_bits`), evaluated on the packed
/// value `a * 2^b_bits + b` by one PBS. Both inputs must carry the same encoding of width
/// `a_bits + b_bits` (their values below 2^a_bits and 2^b_bits).
#[derive(Debug, Clone)]
pub struct BivariateLut {
    pub(crate) lut: Lut,
    pub(crate) b_bits: u32,
}

impl BivariateLut {
    pub fn new(
        preset: &Preset,
        a_bits: u32,
        b_bits: u32,
        output: Encoding,
        f: impl Fn(i64, i64) -> i64,
    ) -> Result<BivariateLut> {
        let input = Encoding::unsigned(a_bits + b_bits);
        let lut = Lut::univariate(preset, input, output, |c| {
            f(c >> b_bits, c & ((1 << b_bits) - 1))
        })?;
        Ok(BivariateLut { lut, b_bits })
    }
    /// The encoding both inputs must have.
    pub fn input(&self) -> Encoding {
        self.lut.input
    }
}
