//! Accuracy helpers: float and quantized accuracy on labelled data, the quantized reference's
//! predictions, and how often a simulated encrypted run agrees with the exact reference.

use crate::checkpoint::FloatMoeModel;
use crate::classifier::QuantizedClassifier;
use crate::data::Dataset;
use crate::error::{ModelError, Result};
use crate::math::argmax;
use crate::reference::Rounding;
use rayon::prelude::*;
use std::fmt;

/// Float and quantized accuracy of a classifier on labelled records, and their agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccuracyReport {
    pub records: usize,
    pub float_correct: usize,
    pub quantized_correct: usize,
    /// Records where the float and quantized predictions are the same class.
    pub agreement: usize,
}

impl AccuracyReport {
    pub fn float_accuracy(&self) -> f64 {
        self.float_correct as f64 / self.records.max(1) as f64
    }
    pub fn quantized_accuracy(&self) -> f64 {
        self.quantized_correct as f64 / self.records.max(1) as f64
    }
    pub fn agreement_rate(&self) -> f64 {
        self.agreement as f64 / self.records.max(1) as f64
    }
}

impl fmt::Display for AccuracyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records: float {:.2}%, quantized {:.2}%, agreement {:.2}%",
            self.records,
            100.0 * self.float_accuracy(),
            100.0 * self.quantized_accuracy(),
            100.0 * self.agreement_rate()
        )
    }
}

/// Predictions of the quantized classifier's plaintext reference on every record, in order
/// (`rounding` is used sequentially, so a simulated rounding is reproducible from its seed).
pub fn quantized_predictions(
    q: &QuantizedClassifier,
    features: &[Vec<f32>],
    rounding: &mut Rounding,
) -> Result<Vec<usize>> {
    features
        .iter()
        .map(|r| Ok(argmax(&q.reference_outputs(r, rounding)?)))
        .collect()
}

/// Agreement of the simulated encrypted path with the exact integer reference: for each seed,
/// the number of records of `features` whose prediction under
/// [`Rounding::simulated`]`(read_noise_std, bits, seed)` (the encrypted path's floor-or-ceil reads near box
/// edges) equals the prediction under [`Rounding::Exact`]. Each seed's rounding runs over the
/// records in order, as [`quantized_predictions`] does, so the counts are reproducible; the
/// seeds run in parallel. `features.len()` minus a count is the number of records that would
/// decrypt, in that simulation, to a class other than the plaintext reference's.
pub fn rounding_agreement(
    q: &QuantizedClassifier,
    features: &[Vec<f32>],
    read_noise_std: f64,
    seeds: &[u64],
) -> Result<Vec<usize>> {
    let exact = quantized_predictions(q, features, &mut Rounding::Exact)?;
    seeds
        .par_iter()
        .map(|&seed| {
            let sim = quantized_predictions(
                q,
                features,
                &mut Rounding::simulated(read_noise_std, q.moe.quant.message_bits, seed),
            )?;
            Ok(exact.iter().zip(&sim).filter(|(a, b)| a == b).count())
        })
        .collect()
}

/// Accuracy of the float model on a labelled data set (0 on an empty one).
pub fn float_accuracy(model: &FloatMoeModel, data: &Dataset) -> f64 {
    let correct = data
        .features
        .par_iter()
        .zip(&data.labels)
        .filter(|(r, &l)| model.predict(r) == l)
        .count();
    correct as f64 / data.len().max(1) as f64
}

/// Float accuracy, quantized accuracy (under `rounding`: exact, or the simulation of a
/// preset's approximate reads) and their agreement on a labelled data set.
pub fn evaluate_accuracy(
    float: &FloatMoeModel,
    quantized: &QuantizedClassifier,
    data: &Dataset,
    rounding: &mut Rounding,
) -> Result<AccuracyReport> {
    if float.head.is_none() || quantized.head.is_none() {
        return Err(ModelError::Config(
            "accuracy needs a model with a classification head".into(),
        ));
    }
    let qp = quantized_predictions(quantized, &data.features, rounding)?;
    let fp: Vec<usize> = data.features.par_iter().map(|r| float.predict(r)).collect();
    let mut rep = AccuracyReport {
        records: data.len(),
        float_correct: 0,
        quantized_correct: 0,
        agreement: 0,
    };
    for ((f, q), &l) in fp.iter().zip(&qp).zip(&data.labels) {
        rep.float_correct += (*f == l) as usize;
        rep.quantized_correct += (*q == l) as usize;
        rep.agreement += (f == q) as usize;
    }
    Ok(rep)
}
