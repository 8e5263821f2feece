//! [`train_digits`]: the float phase, the quantization-aware phase, the declaration of the
//! trained-for quantization, and the final measurements, in that order.

use super::optim::{l1_grad, project_first_stage, project_w2, Adam};
use super::params::{
    init, to_model, Layout, C, D, INPUT_SCALE, MAX_TRAIN_EXPERTS, MAX_TRAIN_HIDDEN, MESSAGE_BITS,
};
use super::{TrainOptions, Trained};
use crate::data::Dataset;
use crate::error::{ModelError, Result};
use crate::quantize::options::{TRAINED_FIRST_STAGE_SHIFT, TRAINED_GATE_BITS};
use crate::quantize::{quantize_fixed, quantize_with, QuantChoice, QuantizeOptions};
use crate::random::SplitMix;

/// Records per gradient step.
pub(super) const BATCH: usize = 32;
/// Mixed into the seed for the record order and augmentation stream (the weights use the seed
/// itself).
const ORDER_SEED_MIX: u64 = 0xD1_6175;

/// What both phases advance: the parameters, the record order and the random stream (one
/// stream through both phases, so that the order keeps being reshuffled from where it was).
pub(super) struct Trainer<'a> {
    pub(super) opts: &'a TrainOptions,
    /// Where each tensor sits in the parameter vector (from [`TrainOptions::shape`]).
    pub(super) l: Layout,
    pub(super) train: &'a Dataset,
    pub(super) test: &'a Dataset,
    /// The training records as the block sees them (`raw * INPUT_SCALE`), unaugmented: what
    /// the balance term averages the routing over.
    pub(super) xs: Vec<Vec<f64>>,
    pub(super) p: Vec<f64>,
    pub(super) rng: SplitMix,
    pub(super) order: Vec<usize>,
}

impl<'a> Trainer<'a> {
    fn new(opts: &'a TrainOptions, train: &'a Dataset, test: &'a Dataset) -> Trainer<'a> {
        let xs: Vec<Vec<f64>> = train.features.iter().map(|r| block_input(r)).collect();
        let l = Layout::new(opts.shape);
        Trainer {
            opts,
            l,
            train,
            test,
            xs,
            p: init(&l, opts.seed),
            rng: SplitMix(opts.seed ^ ORDER_SEED_MIX),
            order: (0..train.len()).collect(),
        }
    }

    /// The end of every step of both phases: the L1 penalties, the batch mean, one AdamW step,
    /// then the projections onto the L1 balls (and W2's top weights when `keep_w2`).
    pub(super) fn step(
        &mut self,
        adam: &mut Adam,
        mut g: Vec<f64>,
        batch_len: usize,
        lr: f64,
        keep_w2: bool,
    ) {
        let o = self.opts;
        l1_grad(&self.l, &self.p, &mut g, o.l1, o.l1_w2, batch_len);
        g.iter_mut().for_each(|v| *v /= batch_len as f64);
        adam.step(&self.l, &mut self.p, &g, lr, (o.weight_decay, o.w2_decay));
        project_first_stage(&self.l, &mut self.p, o.l1_radius, o.router_radius);
        if keep_w2 {
            project_w2(&self.l, &mut self.p, o.w2_keep);
        }
    }
}

/// A raw record as the block's real input (`raw * INPUT_SCALE`, in f64).
pub(super) fn block_input(raw: &[f32]) -> Vec<f64> {
    raw.iter().map(|&v| v as f64 * INPUT_SCALE).collect()
}

/// Zero gradient of all parameters.
pub(super) fn zero_grad(l: &Layout) -> Vec<f64> {
    vec![0.0; l.total]
}

/// Trains the digits model on `train` (the quantization is calibrated on it too) and measures
/// it on `test`; `log` receives the progress and result lines (some span several lines).
///
/// The records must have 64 features (8x8 pixels, 0..16 as the digits file holds them) and
/// labels 0..9. Deterministic: the same options and data give the same model, bit for bit;
/// the defaults on [`crate::data::digits_split`] of [`crate::data::embedded_digits`] give the
/// embedded demo model.
pub fn train_digits(
    opts: &TrainOptions,
    train: &Dataset,
    test: &Dataset,
    log: &mut dyn FnMut(&str),
) -> Result<Trained> {
    check_shape(opts)?;
    check_data(train, "training")?;
    check_data(test, "test")?;
    if train.is_empty() {
        return Err(ModelError::Config(
            "training needs at least one record".into(),
        ));
    }
    let mut t = Trainer::new(opts, train, test);

    // 1. float phase
    let float_epochs = t.float_phase(log);

    // 2. quantization-aware phase, for the choice the search finds for the float model
    let calib = &train.features;
    // worst-case first-stage ranges: a model that declares its quantization is quantized so
    // and with inputs of the reads' width and W2 in one piece, as the trained model declares
    let quantize_opts = QuantizeOptions {
        calibrated_headroom: None,
        input_bits: None,
        output_digits: false,
        gate_bits: TRAINED_GATE_BITS,
        first_stage_shift: TRAINED_FIRST_STAGE_SHIFT,
        ..QuantizeOptions::for_message_bits(MESSAGE_BITS)
    };
    let (_, float_phase_report) = quantize_with(&to_model(&t.l, &t.p), &quantize_opts, calib)?;
    log(&format!(
        "quantization of the float model:\n{float_phase_report}"
    ));
    let choice = match opts.quantization {
        Some(pinned) => QuantChoice {
            logit_zero_point: None,
            ..pinned
        },
        None => QuantChoice {
            logit_zero_point: None,
            router_center: true,
            w2_l1: Some(opts.w2_l1_budget),
            ..float_phase_report.choice
        },
    };
    let qat_epochs = t.qat_phase(&quantize_opts, &choice, log)?;

    // The model declares the quantization it was trained for (with the router's zero point
    // of the final weights), so every consumer quantizes it the same way.
    let mut model = to_model(&t.l, &t.p);
    let (_, last) = quantize_fixed(&model, &quantize_opts, &choice, calib)?;
    model.quantization = Some(QuantChoice {
        logit_zero_point: Some(last.logit_zero_point),
        ..choice
    });
    let measured = t.evaluate(&model, &quantize_opts, log)?;
    Ok(Trained {
        model,
        quantized: measured.quantized,
        report: measured.report,
        float_phase_report,
        float_epochs,
        qat_epochs,
        exact: measured.exact,
        searched: measured.searched,
        diagnosis: measured.diagnosis,
        robustness: measured.robustness,
    })
}

/// Refuses shapes outside what the training has been measured on (and empty ones).
fn check_shape(opts: &TrainOptions) -> Result<()> {
    let s = opts.shape;
    if !(1..=MAX_TRAIN_EXPERTS).contains(&s.experts) || !(1..=MAX_TRAIN_HIDDEN).contains(&s.hidden)
    {
        return Err(ModelError::Config(format!(
            "training shape E = {}, h = {}: E must be 1..={MAX_TRAIN_EXPERTS} and h 1..={MAX_TRAIN_HIDDEN}",
            s.experts, s.hidden
        )));
    }
    Ok(())
}

/// Refuses records that are not 8x8 digits with a label below 10 (the architecture is fixed).
fn check_data(data: &Dataset, what: &str) -> Result<()> {
    if data.features.len() != data.labels.len() {
        return Err(ModelError::Config(format!(
            "{what} data ({}): {} records but {} labels",
            data.origin,
            data.features.len(),
            data.labels.len()
        )));
    }
    if let Some(r) = data.features.iter().find(|r| r.len() != D) {
        return Err(ModelError::Config(format!(
            "{what} data ({}): a record has {} features, the digits model takes {D}",
            data.origin,
            r.len()
        )));
    }
    if let Some(l) = data.labels.iter().find(|&&l| l >= C) {
        return Err(ModelError::Config(format!(
            "{what} data ({}): label {l}, the digits model has {C} classes",
            data.origin
        )));
    }
    if data.features.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ModelError::Config(format!(
            "{what} data ({}): values must be finite",
            data.origin
        )));
    }
    Ok(())
}
