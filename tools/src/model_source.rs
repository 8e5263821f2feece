//! Which model a command runs: a quantized-model file (what `veilmoe quantize` writes and the
//! client keeps), a Hugging Face-format directory quantized on the fly (calibrated on the
//! records the user gives), or the embedded digits demo (quantized for the preset's bits,
//! calibrated on its own training split). A model file fixes the model by its id; quantizing on
//! the fly is deterministic, but client and server then agree only if they quantize alike.

use std::path::{Path, PathBuf};
use thiserror::Error;
use veilmoe_engine::Preset;
use veilmoe_model::checkpoint::{embedded_demo_model, FloatMoeModel};
use veilmoe_model::data::{digits_split, embedded_digits, load_labelled, read_records, Dataset};
use veilmoe_model::model_file::read_model_file;
use veilmoe_model::quantize::options::{DEFAULT_CALIBRATED_HEADROOM, MAX_WIDE_OUTPUT_NOISE};
use veilmoe_model::quantize::{quantize_with, QuantizeOptions, QuantizeReport};
use veilmoe_model::{ModelError, QuantizedClassifier};

#[derive(Debug, Error)]
pub enum SourceError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("--model {0}: quantizing a model directory needs --calibration FILE (sample records)")]
    NoCalibration(String),
    #[error("--model {0}: scoring accuracy needs --test FILE (labelled records: features, then the label)")]
    NoTestData(String),
    #[error("--model {0}: a quantized-model file holds no float model; give the checkpoint directory it was made from")]
    NoFloatModel(String),
    #[error("--calibration is for quantizing a model directory; {0} is a quantized-model file")]
    CalibrationForFile(String),
    #[error("--model {0}: no such file or directory")]
    Missing(String),
    #[error("--headroom {0}: give a factor from 1 to 16 (the calibration range times it must fit each read)")]
    BadHeadroom(f64),
    #[error("{0} applies to quantizing a --model directory (the embedded model and model files keep the quantization they have)")]
    NeedsModelDir(&'static str),
    #[error("--activation-reads {0}: give 1, 2 or 4 reads per pre-activation")]
    BadActivationReads(u32),
    #[error("--output-noise {0}: give a factor in [1, {max}]", max = MAX_WIDE_OUTPUT_NOISE)]
    BadOutputNoise(f64),
}

/// The `--model` / `--calibration` options every model-using command shares.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelArgs {
    /// A quantized-model file (from `veilmoe quantize`), or a Hugging Face-format model
    /// directory (config.json + *.safetensors) to quantize on the fly; default: the embedded
    /// digits demo model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Calibration records (.csv/.npy) for quantizing a --model directory (the embedded model
    /// calibrates on its own training split).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Quantizing a --model directory: size each first-stage read and the expert outputs'
    /// encoding from the calibration records' range times this factor (default 1.5). Reads
    /// are then 2-3 bits finer than worst-case ones; an input far outside the calibration data
    /// can wrap a read, and `quantize` reports how many calibration records would.
    #[arg(long, conflicts_with = "worst_case_ranges")]
    pub headroom: Option<f64>,
    /// Quantizing a --model directory: size every read from the worst case over all inputs
    /// instead (no input can wrap a read; the reads are coarser).
    #[arg(long)]
    pub worst_case_ranges: bool,
    /// Quantizing a --model directory with gated experts: read each expert's linear factor
    /// (W3 x) inside the two quarter-square reads of its product instead of by a read of its
    /// own. A quarter of a gated expert's PBS fewer, for a linear factor one bit coarser.
    #[arg(long)]
    pub linear_in_product: bool,
    /// Quantizing a --model directory of 2, 4 or 8 experts: choose the experts by comparing
    /// the router accumulators pairwise at the blind rotation's resolution instead of by a
    /// tournament over their reads, which ties accumulators that fall in the same read box.
    /// E (E - 1) / 2 comparisons (28 at E = 8, three PBS each: a sign read refined 16-32
    /// times finer near ties) and E rank reads instead of about 2 E tournament reads.
    #[arg(long)]
    pub pairwise_routing: bool,
    /// Quantizing a --model directory: bits of the client's quantized input (default 8, at
    /// least the preset's read bits). No PBS reads an input, so a wider one costs the server
    /// nothing but keeps the detail near-tied router logits depend on.
    #[arg(long)]
    pub input_bits: Option<u32>,
    /// Quantizing a --model directory: reads of each pre-activation, 1, 2 or 4 (default 1).
    /// The activation (silu factor) is the sum of reads offset by fractions of a box, which
    /// resolves it log2 of that many bits finer, each read keeping the preset's noise margin:
    /// one more PBS per hidden unit and read (gated: three, the read's own product). A model
    /// that declares the quantization it was trained for keeps one read.
    #[arg(long)]
    pub activation_reads: Option<u32>,
    /// Quantizing a --model directory: the noise the decrypted expert outputs may carry, as a
    /// factor on a PBS input's noise std at the preset's budget, 1 to 16 (default 8). W2 rows
    /// may grow with its square: 16 gives W2 a bit more precision for twice the output noise
    /// (still a fraction of a read step). With --activation-reads 2 on `fine` it brings the
    /// Qwen2-MoE checkpoint's reference from 0.984 to 0.991; encrypted, the noise costs about
    /// 0.003 of that (BENCHMARKS.md).
    #[arg(long)]
    pub output_noise: Option<f64>,
}

impl ModelArgs {
    /// The calibrated-range headroom a --model directory is quantized with (`None`: worst-case
    /// ranges).
    fn headroom(&self) -> Result<Option<f64>, SourceError> {
        if self.worst_case_ranges {
            return Ok(None);
        }
        match self.headroom {
            None => Ok(Some(DEFAULT_CALIBRATED_HEADROOM)),
            Some(h) if (1.0..=16.0).contains(&h) => Ok(Some(h)),
            Some(h) => Err(SourceError::BadHeadroom(h)),
        }
    }

    pub fn source(&self) -> Result<ModelSource, SourceError> {
        if let Some(k) = self.activation_reads {
            if !veilmoe_model::quant::ACTIVATION_READS.contains(&k) {
                return Err(SourceError::BadActivationReads(k));
            }
        }
        if let Some(f) = self.output_noise {
            if !(1.0..=MAX_WIDE_OUTPUT_NOISE).contains(&f) {
                return Err(SourceError::BadOutputNoise(f));
            }
        }
        match &self.model {
            Some(path) if path.is_dir() => Ok(ModelSource::Dir {
                dir: path.clone(),
                calibration: self.calibration.clone(),
                headroom: self.headroom()?,
                input_bits: self.input_bits,
                activation_reads: self.activation_reads,
                output_noise: self.output_noise,
                variant: Variant {
                    linear_in_product: self.linear_in_product,
                    pairwise_routing: self.pairwise_routing,
                },
            }),
            _ if self.linear_in_product => Err(SourceError::NeedsModelDir("--linear-in-product")),
            _ if self.pairwise_routing => Err(SourceError::NeedsModelDir("--pairwise-routing")),
            _ if self.input_bits.is_some() => Err(SourceError::NeedsModelDir("--input-bits")),
            _ if self.activation_reads.is_some() => {
                Err(SourceError::NeedsModelDir("--activation-reads"))
            }
            _ if self.output_noise.is_some() => Err(SourceError::NeedsModelDir("--output-noise")),
            None => Ok(ModelSource::Embedded),
            Some(path) if path.is_file() => match self.calibration {
                Some(_) => Err(SourceError::CalibrationForFile(path.display().to_string())),
                None => Ok(ModelSource::File(path.clone())),
            },
            Some(path) => Err(SourceError::Missing(path.display().to_string())),
        }
    }
}

/// A float model and the records its quantized model's fidelity is measured on.
pub struct FloatReference {
    pub float: FloatMoeModel,
    /// What the quantizer chose for it (scales, shifts, W2's digits and limits, the search's
    /// score); `None` for the embedded model, whose quantization is fixed with it (README,
    /// `veilmoe inspect`), so the newcomer's path prints no report.
    pub report: Option<QuantizeReport>,
    /// Where the records come from (reports name it).
    pub origin: String,
    pub records: Vec<Vec<f32>>,
}

/// Evaluation choices a model directory is quantized with (both off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Variant {
    /// Gated experts read their linear factor inside the product
    /// (`QuantizeOptions::linear_in_product`).
    pub linear_in_product: bool,
    /// Experts chosen by pairwise comparisons (`QuantizeOptions::pairwise_routing`).
    pub pairwise_routing: bool,
}

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// The digits demo model compiled into the binary.
    Embedded,
    /// A quantized-model file.
    File(PathBuf),
    /// A Hugging Face-format directory, calibration records for its quantization, the
    /// headroom of its calibrated ranges (`None`: worst-case ranges) and the evaluation
    /// choices it is quantized with.
    Dir {
        dir: PathBuf,
        calibration: Option<PathBuf>,
        headroom: Option<f64>,
        /// `--input-bits` (`None`: the quantizer's default).
        input_bits: Option<u32>,
        /// `--activation-reads` (`None`: the quantizer's default).
        activation_reads: Option<u32>,
        /// `--output-noise` (`None`: the quantizer's default).
        output_noise: Option<f64>,
        variant: Variant,
    },
}

impl ModelSource {
    /// How reports name the model.
    pub fn label(&self) -> String {
        match self {
            ModelSource::Embedded => "embedded digits-moe".into(),
            ModelSource::File(p) => p.display().to_string(),
            ModelSource::Dir { dir, .. } => dir.display().to_string(),
        }
    }

    /// The float model (not for a model file, which holds only the quantized one). Every part
    /// of the checkpoint that veilmoe does not evaluate is named on stderr.
    pub fn load_float(&self) -> Result<FloatMoeModel, SourceError> {
        let model = match self {
            ModelSource::Embedded => embedded_demo_model()?,
            ModelSource::Dir { dir, .. } => FloatMoeModel::load(dir)?,
            ModelSource::File(p) => return Err(SourceError::NoFloatModel(p.display().to_string())),
        };
        for part in &model.not_evaluated {
            eprintln!("WARNING: {}: not evaluated: {part}", model.origin);
        }
        Ok(model)
    }

    /// The records that calibrate the quantization of `model` (loaded from this source).
    pub fn calibration_records(&self, model: &FloatMoeModel) -> Result<Vec<Vec<f32>>, SourceError> {
        Ok(match self {
            ModelSource::Embedded => digits_split(&embedded_digits()?).0.features,
            ModelSource::Dir {
                dir, calibration, ..
            } => {
                let path = calibration
                    .as_ref()
                    .ok_or_else(|| SourceError::NoCalibration(dir.display().to_string()))?;
                read_records(path, model.features())?
            }
            ModelSource::File(p) => return Err(SourceError::NoFloatModel(p.display().to_string())),
        })
    }

    /// The quantized model: read from a model file, or quantized for `preset` (its bits per
    /// PBS and its noise budget).
    pub fn load_classifier(&self, preset: &Preset) -> Result<QuantizedClassifier, SourceError> {
        if let ModelSource::File(path) = self {
            return Ok(read_model_file(path)?.model);
        }
        let model = self.load_float()?;
        let calibration = self.calibration_records(&model)?;
        Ok(self
            .quantize(&model, preset.message_bits, preset.max_norm2, &calibration)?
            .0)
    }

    /// Quantizes `model` (loaded from this source, or derived from it) for `message_bits`-bit
    /// reads on a preset whose noise budget is a dot product of 2-norm `max_norm2` over PBS
    /// outputs, with the source's calibrated-range headroom.
    pub fn quantize(
        &self,
        model: &FloatMoeModel,
        message_bits: u32,
        max_norm2: f64,
        calibration: &[Vec<f32>],
    ) -> Result<(QuantizedClassifier, QuantizeReport), SourceError> {
        self.quantize_variant(
            model,
            (message_bits, max_norm2),
            self.variant(),
            calibration,
        )
    }

    /// The evaluation choices this source quantizes with (the defaults but for a directory).
    pub fn variant(&self) -> Variant {
        match self {
            ModelSource::Dir { variant, .. } => *variant,
            _ => Variant::default(),
        }
    }

    /// [`ModelSource::quantize`] with the evaluation choices given here rather than by the
    /// source (`params sweep` tries several). Returns the model and the quantizer's report.
    pub fn quantize_variant(
        &self,
        model: &FloatMoeModel,
        (message_bits, max_norm2): (u32, f64),
        variant: Variant,
        calibration: &[Vec<f32>],
    ) -> Result<(QuantizedClassifier, QuantizeReport), SourceError> {
        let defaults = QuantizeOptions {
            linear_in_product: variant.linear_in_product,
            pairwise_routing: variant.pairwise_routing,
            ..QuantizeOptions::for_reads(message_bits, max_norm2)
        };
        let opts = match self {
            ModelSource::Dir {
                headroom,
                input_bits,
                activation_reads,
                output_noise,
                ..
            } => QuantizeOptions {
                calibrated_headroom: *headroom,
                input_bits: input_bits.or(defaults.input_bits),
                activation_reads: activation_reads.unwrap_or(defaults.activation_reads),
                wide_output_noise: output_noise.unwrap_or(defaults.wide_output_noise),
                ..defaults
            },
            _ => defaults,
        };
        Ok(quantize_with(model, &opts, calibration)?)
    }

    /// The quantized model (as [`ModelSource::load_classifier`]) with the float model it came
    /// from and the records to measure its fidelity on: the embedded model's test split, or a
    /// checkpoint's calibration records. `None` for a model file, which holds no float weights.
    pub fn load_with_float(
        &self,
        preset: &Preset,
    ) -> Result<(QuantizedClassifier, Option<FloatReference>), SourceError> {
        if let ModelSource::File(path) = self {
            return Ok((read_model_file(path)?.model, None));
        }
        let float = self.load_float()?;
        let calibration = self.calibration_records(&float)?;
        let (q, report) =
            self.quantize(&float, preset.message_bits, preset.max_norm2, &calibration)?;
        // the embedded model's quantization is fixed with it (see `FloatReference::report`)
        let report = (!matches!(self, ModelSource::Embedded)).then_some(report);
        let (origin, records) = match self {
            ModelSource::Embedded => {
                let test = digits_split(&embedded_digits()?).1;
                (test.origin, test.features)
            }
            _ => ("the calibration records".to_string(), calibration),
        };
        Ok((
            q,
            Some(FloatReference {
                float,
                report,
                origin,
                records,
            }),
        ))
    }

    /// The labelled records that score a model's accuracy: `--test FILE` (a CSV, optionally
    /// gzip'd, of features then an integer label per line), or the embedded model's own test
    /// split.
    pub fn test_records(&self, test: Option<&Path>) -> Result<Dataset, SourceError> {
        match (test, self) {
            (Some(path), _) => Ok(load_labelled(path)?),
            (None, ModelSource::Embedded) => Ok(digits_split(&embedded_digits()?).1),
            (None, other) => Err(SourceError::NoTestData(other.label())),
        }
    }
}
