//! The float phase: a competitive mixture of experts (`J = sum_e p_e CE_e`, `p = softmax(Wr x)`)
//! with a load-balancing term.

use super::driver::{block_input, zero_grad, Trainer, BATCH};
use super::optim::{augment, cosine, shuffle, Adam};
use super::params::{
    back_head_w2, first_stage_grad, head, router_grad, router_probs, silu, silu_grad, to_model,
    Layout, D,
};
use super::FloatEpoch;
use crate::checkpoint::FloatMoeModel;
use crate::data::Dataset;
use crate::quantize::float_accuracy;

/// Peak learning rate of the float phase (cosine schedule).
const FLOAT_LR: f64 = 3e-3;
/// Epochs between progress reports.
const REPORT_EVERY: usize = 20;

impl Trainer<'_> {
    /// Runs the float phase; returns the progress at the reported epochs (also logged).
    /// From the middle of the phase on, W2 rows keep only their largest weights, so that the
    /// second half adapts to the sparsity the quantized model needs.
    pub(super) fn float_phase(&mut self, log: &mut dyn FnMut(&str)) -> Vec<FloatEpoch> {
        let epochs = self.opts.float_epochs;
        let mut adam = Adam::new(&self.l);
        let mut progress = Vec::new();
        for epoch in 0..epochs {
            shuffle(&mut self.order, &mut self.rng);
            let lr = FLOAT_LR * cosine(epoch, epochs);
            for chunk in self.order.clone().chunks(BATCH) {
                let g = self.float_batch(chunk);
                self.step(&mut adam, g, chunk.len(), lr, epoch >= epochs / 2);
            }
            if epoch % REPORT_EVERY == REPORT_EVERY - 1 || epoch + 1 == epochs {
                let m = to_model(&self.l, &self.p);
                let e = FloatEpoch {
                    epoch: epoch + 1,
                    train_accuracy: float_accuracy(&m, self.train),
                    test_accuracy: float_accuracy(&m, self.test),
                    routes: route_counts(&m, self.train),
                    max_w2: self.p[self.l.w2..self.l.hw]
                        .iter()
                        .fold(0f64, |a, &b| a.max(b.abs())),
                };
                log(&format!(
                    "float epoch {:3}: train {:.2}%, test {:.2}%, routes {:?}, max |W2| {:.3}",
                    e.epoch,
                    100.0 * e.train_accuracy,
                    100.0 * e.test_accuracy,
                    e.routes,
                    e.max_w2
                ));
                progress.push(e);
            }
        }
        progress
    }

    /// The summed float-phase gradient of one batch (records augmented in order).
    fn float_batch(&mut self, chunk: &[usize]) -> Vec<f64> {
        let l = &self.l;
        let mut g = zero_grad(l);
        let g_p = balance_grad(l, &self.p, chunk, &self.xs, self.opts.balance);
        for &i in chunk {
            let raw = augment(&self.train.features[i], self.opts.augment, &mut self.rng);
            let x = block_input(&raw);
            float_record(l, &self.p, &mut g, &x, self.train.labels[i], &g_p);
        }
        g
    }
}

/// One float-phase record: gradient of the competitive objective; returns the router
/// probabilities (for the balance term).
pub(super) fn float_record(
    l: &Layout,
    p: &[f64],
    g: &mut [f64],
    x: &[f64],
    label: usize,
    g_p_extra: &[f64],
) -> Vec<f64> {
    let pr = router_probs(l, p, x);
    let mut losses = vec![0.0; l.e];
    for e in 0..l.e {
        let u: Vec<f64> = (0..l.h)
            .map(|j| (0..D).map(|k| l.w1(p, e, j, k) * x[k]).sum())
            .collect();
        let v: Vec<f64> = (0..l.h)
            .map(|j| (0..D).map(|k| l.w3(p, e, j, k) * x[k]).sum())
            .collect();
        let s: Vec<f64> = u.iter().map(|&t| silu(t)).collect();
        let a: Vec<f64> = s.iter().zip(&v).map(|(s, v)| s * v).collect();
        let z: Vec<f64> = (0..D)
            .map(|i| l.head_input(x[i], (0..l.h).map(|j| l.w2(p, e, i, j) * a[j]).sum::<f64>()))
            .collect();
        let (q, loss) = head(l, p, &z, label);
        losses[e] = loss;
        let g_a = back_head_w2((l, p), g, e, (&q, label), &z, &a, pr[e]);
        let g_u: Vec<f64> = (0..l.h).map(|j| g_a[j] * v[j] * silu_grad(u[j])).collect();
        let g_v: Vec<f64> = (0..l.h).map(|j| g_a[j] * s[j]).collect();
        first_stage_grad(l, g, e, x, &g_u, &g_v);
    }
    router_grad(l, g, x, &pr, &losses, g_p_extra);
    pr
}

/// The load-balancing term's gradient for a batch, from the batch's mean routing
/// probabilities (shared by the float and quantization-aware phases).
pub(super) fn balance_grad(
    l: &Layout,
    p: &[f64],
    chunk: &[usize],
    xs: &[Vec<f64>],
    balance: f64,
) -> Vec<f64> {
    mean_probs(l, p, chunk.iter().map(|&i| &xs[i]))
        .iter()
        .map(|&v| balance * 2.0 * l.e as f64 * v)
        .collect()
}

/// Mean routing probabilities over `xs`.
fn mean_probs<'a>(l: &Layout, p: &[f64], xs: impl Iterator<Item = &'a Vec<f64>>) -> Vec<f64> {
    let mut s = vec![0.0; l.e];
    let mut n = 0;
    for x in xs {
        for (a, b) in s.iter_mut().zip(router_probs(l, p, x)) {
            *a += b;
        }
        n += 1;
    }
    s.iter().map(|v| v / n.max(1) as f64).collect()
}

/// Records routed to each expert (hard, top-1).
fn route_counts(m: &FloatMoeModel, data: &Dataset) -> Vec<usize> {
    let mut c = vec![0; m.config.experts.0];
    for r in &data.features {
        c[m.route(&m.model_input(r)).0[0]] += 1;
    }
    c
}
