//! The final measurements of a trained model, made the way every consumer makes them: through
//! its Mixtral files, quantized with the choice it declares.

use super::driver::Trainer;
use super::params::Layout;
use super::qat::{q_expert, OutputRead, QInput, Steps};
use super::{Diagnosis, Robustness};
use crate::checkpoint::FloatMoeModel;
use crate::classifier::QuantizedClassifier;
use crate::data::Dataset;
use crate::error::Result;
use crate::math::argmax;
use crate::quantize::{
    evaluate_accuracy, quantize_with, rounding_agreement, AccuracyReport, QuantizeOptions,
    QuantizeReport,
};
use crate::reference::Rounding;

/// What [`Trainer::evaluate`] measures.
pub(super) struct Measured {
    pub(super) quantized: QuantizedClassifier,
    pub(super) report: QuantizeReport,
    pub(super) exact: AccuracyReport,
    pub(super) searched: AccuracyReport,
    pub(super) diagnosis: Diagnosis,
    pub(super) robustness: Option<Robustness>,
}

impl Trainer<'_> {
    /// Measures `model` (the trained weights, declaring their quantization) on the test
    /// records: its quantization as the files give it, the exact reference's accuracy, the
    /// diagnosis, the accuracy of a searched quantization instead, and with a read-noise
    /// standard deviation the simulated reads' accuracy and agreement (not logged: see
    /// [`Robustness::report`]).
    pub(super) fn evaluate(
        &self,
        model: &FloatMoeModel,
        opts: &QuantizeOptions,
        log: &mut dyn FnMut(&str),
    ) -> Result<Measured> {
        let loaded = reloaded(model)?;
        let calib = &self.train.features;
        let test = self.test;
        let (quantized, report) = quantize_with(&loaded, opts, calib)?;
        log(&format!("final quantization:\n{report}"));
        let exact = evaluate_accuracy(&loaded, &quantized, test, &mut Rounding::Exact)?;
        let robustness = match self.opts.read_noise_std {
            Some(std) => Some(robustness(
                &loaded,
                &quantized,
                test,
                std,
                (0..self.opts.agreement_seeds).collect(),
            )?),
            None => None,
        };
        let diagnosis = diagnose(&self.l, &self.p, &quantized, &loaded, test, &report)?;
        log_diagnosis(&diagnosis, log);
        let searched_opts = QuantizeOptions {
            use_model_choice: false,
            ..opts.clone()
        };
        let (qs, _) = quantize_with(&loaded, &searched_opts, calib)?;
        let searched = evaluate_accuracy(&loaded, &qs, test, &mut Rounding::Exact)?;
        log(&format!(
            "test, searched instead of declared quantization: {searched}"
        ));
        log(&format!("test, exact reference:     {exact}"));
        Ok(Measured {
            quantized,
            report,
            exact,
            searched,
            diagnosis,
            robustness,
        })
    }
}

/// `model` written as its Mixtral files and loaded back, in memory: what a consumer of the
/// saved model gets.
fn reloaded(model: &FloatMoeModel) -> Result<FloatMoeModel> {
    let files = model.mixtral_files(&model.origin)?;
    FloatMoeModel::from_bytes(
        &model.origin,
        files.config_json.as_bytes(),
        &[("model.safetensors", &files.safetensors)],
        None,
    )
}

/// Accuracy under each seed's simulated reads of noise `read_noise_std`, and the agreement of
/// the simulated predictions with the exact reference's.
fn robustness(
    model: &FloatMoeModel,
    q: &QuantizedClassifier,
    test: &Dataset,
    read_noise_std: f64,
    seeds: Vec<u64>,
) -> Result<Robustness> {
    let bits = q.moe.quant.message_bits;
    let simulated = seeds
        .iter()
        .map(|&seed| {
            evaluate_accuracy(
                model,
                q,
                test,
                &mut Rounding::simulated(read_noise_std, bits, seed),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let agreement = rounding_agreement(q, &test.features, read_noise_std, &seeds)?;
    Ok(Robustness {
        seeds,
        simulated,
        agreement,
        records: test.len(),
    })
}

impl Robustness {
    /// The result lines of the simulated reads, naming where the noise came from (`source`,
    /// e.g. `default preset`).
    pub fn report(&self, source: &str) -> String {
        let n = self.records;
        let mut lines: Vec<String> = self
            .seeds
            .iter()
            .zip(&self.simulated)
            .zip(&self.agreement)
            .map(|((seed, sim), agree)| {
                format!(
                    "test, simulated ({source}, seed {seed}): {sim}; prediction = exact reference's on {agree}/{n}"
                )
            })
            .collect();
        lines.push(format!(
            "test, simulated vs exact prediction agreement over {} seeds: min {}/{n}, total {}/{}",
            self.seeds.len(),
            self.agreement.iter().min().copied().unwrap_or(0),
            self.agreement.iter().sum::<usize>(),
            n * self.seeds.len(),
        ));
        lines.join("\n")
    }
}

/// Quantized accuracy under integer and float routing, and without the output read's
/// rounding (where do the points go?), with the trained parameters `p`'s own head.
fn diagnose(
    l: &Layout,
    p: &[f64],
    qc: &QuantizedClassifier,
    m: &FloatMoeModel,
    data: &Dataset,
    rep: &QuantizeReport,
) -> Result<Diagnosis> {
    let steps = Steps::of(rep);
    let mut d = Diagnosis {
        records: data.len(),
        routes_agree: 0,
        integer_routing_correct: 0,
        float_routing_correct: 0,
        unrounded_output_correct: 0,
    };
    for (raw, &label) in data.features.iter().zip(&data.labels) {
        let input = QInput::new(qc, raw)?;
        let ei = argmax(&input.logits(qc));
        let ef = m.route(&m.model_input(raw)).0[0];
        let correct = |e: usize, read: OutputRead| {
            (argmax(&q_expert((l, p), qc, &steps, e, &input, label, read).q) == label) as usize
        };
        d.routes_agree += (ei == ef) as usize;
        d.integer_routing_correct += correct(ei, OutputRead::Rounded);
        d.float_routing_correct += correct(ef, OutputRead::Rounded);
        d.unrounded_output_correct += correct(ei, OutputRead::Unrounded);
    }
    Ok(d)
}

fn log_diagnosis(d: &Diagnosis, log: &mut dyn FnMut(&str)) {
    let n = d.records.max(1) as f64;
    log(&format!(
        "diagnosis: quantized with an unrounded output read {:.2}%",
        100.0 * d.unrounded_output_correct as f64 / n
    ));
    log(&format!(
        "diagnosis: routes agree {:.1}%, quantized acc with integer routing {:.2}%, with float routing {:.2}%",
        100.0 * d.routes_agree as f64 / n,
        100.0 * d.integer_routing_correct as f64 / n,
        100.0 * d.float_routing_correct as f64 / n
    ));
}
