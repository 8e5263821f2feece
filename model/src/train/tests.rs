use super::float_phase::float_record;
use super::params::{head, init, router_probs, silu, to_model, Layout, C, D};
use super::*;
use crate::data::{digits_split, embedded_digits, Dataset};
use crate::math::argmax;
use crate::random::SplitMix;

/// The demo's layout and a small one of another shape (E = 2, h = 3, no residual).
fn layouts() -> [Layout; 2] {
    [
        Layout::new(TrainShape::default()),
        Layout::new(TrainShape {
            experts: 2,
            hidden: 3,
            residual: false,
        }),
    ]
}

/// Parameters from `init` with a random head (init leaves it at zero).
fn params(l: &Layout, seed: u64) -> Vec<f64> {
    let mut p = init(l, seed);
    let mut rng = SplitMix(seed ^ 1);
    p[l.hw..l.total]
        .iter_mut()
        .for_each(|v| *v = 0.3 * rng.gaussian());
    p
}

/// The first `n_train` and `n_test` records of the fixed digits split.
fn small_split(n_train: usize, n_test: usize) -> (Dataset, Dataset) {
    let (train, test) = digits_split(&embedded_digits().unwrap());
    let first = |d: &Dataset, n: usize| d.subset(&(0..n).collect::<Vec<_>>(), d.origin.clone());
    (first(&train, n_train), first(&test, n_test))
}

fn short_options(seed: u64) -> TrainOptions {
    TrainOptions {
        seed,
        float_epochs: 12,
        qat_epochs: 2,
        agreement_seeds: 2,
        ..TrainOptions::default()
    }
}

fn run(opts: &TrainOptions, train: &Dataset, test: &Dataset) -> (Trained, Vec<String>) {
    let mut lines = Vec::new();
    let trained = train_digits(opts, train, test, &mut |l| lines.push(l.to_string())).unwrap();
    (trained, lines)
}

#[test]
fn the_parameter_layout_is_the_models() {
    for l in layouts() {
        parameter_layout_is_the_models(&l);
    }
}

fn parameter_layout_is_the_models(l: &Layout) {
    let (e_count, h) = (l.e, l.h);
    let p = params(l, 11);
    let m = to_model(l, &p);
    m.validate().unwrap();
    assert_eq!(m.router.dim(), (e_count, D));
    assert_eq!(m.experts.len(), e_count);
    let head = m.head.as_ref().unwrap();
    assert_eq!(head.weight.dim(), (C, D));
    assert_eq!(head.bias.as_ref().unwrap().len(), C);
    let mut seen = 0;
    for e in 0..e_count {
        let x = &m.experts[e];
        assert_eq!((x.w1.dim(), x.w2.dim()), ((h, D), (D, h)));
        for j in 0..h {
            for k in 0..D {
                assert_eq!(x.w1[[j, k]], l.w1(&p, e, j, k) as f32);
                assert_eq!(x.w3.as_ref().unwrap()[[j, k]], l.w3(&p, e, j, k) as f32);
                assert_eq!(x.w2[[k, j]], l.w2(&p, e, k, j) as f32);
                seen += 3;
            }
        }
        for k in 0..D {
            assert_eq!(m.router[[e, k]], p[l.wr + e * D + k] as f32);
            seen += 1;
        }
    }
    for c in 0..C {
        for k in 0..D {
            assert_eq!(head.weight[[c, k]], p[l.hw + c * D + k] as f32);
        }
        assert_eq!(head.bias.as_ref().unwrap()[c], p[l.hb + c] as f32);
        seen += D + 1;
    }
    assert_eq!(seen, l.total);
    assert_eq!(
        (l.w1, l.w3, l.w2),
        (
            e_count * D,
            e_count * D + e_count * h * D,
            e_count * D + 2 * e_count * h * D
        )
    );
}

/// The training forward (f64, hard-routed) and the model's forward (f32) agree.
#[test]
fn the_parameters_forward_is_the_models() {
    for l in layouts() {
        parameters_forward_is_the_models(&l);
    }
}

fn parameters_forward_is_the_models(l: &Layout) {
    let p = params(l, 5);
    let m = to_model(l, &p);
    let (train, _) = small_split(40, 0);
    for raw in &train.features {
        let x = super::driver::block_input(raw);
        let e = argmax(&router_probs(l, &p, &x));
        assert_eq!(e, m.route(&m.model_input(raw)).0[0]);
        let (q, _) = head(l, &p, &expert_z(l, &p, e, &x), 0);
        let out = m.forward(raw);
        assert_eq!(argmax(&q), argmax(&out));
        // softmax of the model's logits
        let mx = out.iter().copied().fold(f32::MIN, f32::max);
        let s: f64 = out.iter().map(|&v| ((v - mx) as f64).exp()).sum();
        for (a, &b) in q.iter().zip(&out) {
            assert!((a - ((b - mx) as f64).exp() / s).abs() < 1e-4);
        }
    }
}

/// Expert `e`'s head input `z = x + W2 (silu(W1 x) * W3 x)` (without `x` when not residual).
fn expert_z(l: &Layout, p: &[f64], e: usize, x: &[f64]) -> Vec<f64> {
    let a: Vec<f64> = (0..l.h)
        .map(|j| {
            let u: f64 = (0..D).map(|k| l.w1(p, e, j, k) * x[k]).sum();
            let v: f64 = (0..D).map(|k| l.w3(p, e, j, k) * x[k]).sum();
            silu(u) * v
        })
        .collect();
    (0..D)
        .map(|i| l.head_input(x[i], (0..l.h).map(|j| l.w2(p, e, i, j) * a[j]).sum::<f64>()))
        .collect()
}

/// The float phase's objective `sum_e p_e CE_e` on one record.
fn objective(l: &Layout, p: &[f64], x: &[f64], label: usize) -> f64 {
    let pr = router_probs(l, p, x);
    (0..l.e)
        .map(|e| pr[e] * head(l, p, &expert_z(l, p, e, x), label).1)
        .sum()
}

#[test]
fn float_gradients_match_finite_differences() {
    for l in layouts() {
        float_gradients_match(&l);
    }
}

fn float_gradients_match(l: &Layout) {
    let p = params(l, 3);
    let (train, _) = small_split(3, 0);
    let x = super::driver::block_input(&train.features[2]);
    let label = train.labels[2];
    let mut g = vec![0.0; l.total];
    float_record(l, &p, &mut g, &x, label, &vec![0.0; l.e]);
    let mut rng = SplitMix(9);
    // a few parameters of every tensor (pixels 0 and 7 are often blank: pick any)
    let starts = [l.wr, l.w1, l.w3, l.w2, l.hw, l.hb, l.total];
    for w in starts.windows(2) {
        for _ in 0..6 {
            let i = w[0] + rng.below((w[1] - w[0]) as u64) as usize;
            let eps = 1e-6;
            let (mut hi, mut lo) = (p.clone(), p.clone());
            hi[i] += eps;
            lo[i] -= eps;
            let num = (objective(l, &hi, &x, label) - objective(l, &lo, &x, label)) / (2.0 * eps);
            assert!(
                (num - g[i]).abs() <= 1e-7 + 1e-4 * g[i].abs(),
                "parameter {i}: numeric {num}, analytic {}",
                g[i]
            );
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_model() {
    let (train, test) = small_split(200, 50);
    let (a, log_a) = run(&short_options(4), &train, &test);
    let (b, log_b) = run(&short_options(4), &train, &test);
    assert_eq!(a.model, b.model);
    assert_eq!(a.quantized, b.quantized);
    assert_eq!(log_a, log_b);
    let (c, _) = run(&short_options(5), &train, &test);
    assert_ne!(a.model.experts, c.model.experts);
}

#[test]
fn a_short_training_beats_chance() {
    let (train, test) = small_split(400, 150);
    let opts = TrainOptions {
        read_noise_std: Some(2e-3),
        ..short_options(7)
    };
    let (t, log) = run(&opts, &train, &test);
    // 10 classes: chance is 10%
    assert!(t.exact.float_accuracy() > 0.7, "{}", t.exact);
    assert!(t.exact.quantized_accuracy() > 0.5, "{}", t.exact);
    assert_eq!(t.exact.records, 150);
    // the model declares the quantization it was trained for, and is quantized with it
    let declared = t.model.quantization.expect("declared quantization");
    assert_eq!(t.report.choice, declared);
    assert_eq!(declared.w2_l1, Some(opts.w2_l1_budget));
    let r = t.robustness.as_ref().expect("measured with a noise level");
    assert_eq!((r.seeds.clone(), r.simulated.len()), (vec![0, 1], 2));
    assert!(r.agreement.iter().all(|&a| a <= 150));
    assert_eq!(r.report("test noise").lines().count(), 3);
    // progress at the last epoch of each phase, and the result lines
    assert_eq!(t.float_epochs.last().map(|e| e.epoch), Some(12));
    assert_eq!(t.qat_epochs.last().map(|e| e.epoch), Some(2));
    for start in [
        "float epoch",
        "qat epoch",
        "quantization of the float model:",
        "final",
    ] {
        assert!(
            log.iter().any(|l| l.starts_with(start)),
            "no `{start}` line"
        );
    }
    assert!(log.last().unwrap().starts_with("test, exact reference:"));
}

/// Another shape trains with the same recipe into a model of that shape (one expert and no
/// residual, as the pool's small models are). Without the residual path the hidden layer has
/// to carry everything: a 2-wide one, or 12 epochs, stay near chance on a 1,000-record subset
/// (16-37 % float), so this trains 4 wide for the default 120 epochs (64-78 % float, 47-61 %
/// quantized over seeds 3-6; training is deterministic for a seed).
#[test]
fn a_single_expert_shape_trains() {
    let (train, test) = small_split(1000, 200);
    let shape = TrainShape {
        experts: 1,
        hidden: 4,
        residual: false,
    };
    let opts = TrainOptions {
        shape,
        float_epochs: TrainOptions::default().float_epochs,
        ..short_options(4)
    };
    let (t, _) = run(&opts, &train, &test);
    assert_eq!(
        (t.model.config.experts.0, t.model.config.h.0),
        (shape.experts, shape.hidden)
    );
    assert_eq!(t.quantized.moe.experts.len(), 1);
    assert!(!t.model.residual);
    assert_eq!(t.quantized.x_scale, 0.0);
    assert!(t.exact.float_accuracy() > 0.5, "{}", t.exact);
    assert!(t.exact.quantized_accuracy() > 0.3, "{}", t.exact);
}

#[test]
fn shapes_outside_the_trained_range_are_refused() {
    let (train, test) = small_split(20, 5);
    for (experts, hidden) in [
        (0, 16),
        (4, 0),
        (MAX_TRAIN_EXPERTS + 1, 16),
        (4, MAX_TRAIN_HIDDEN + 1),
    ] {
        let opts = TrainOptions {
            shape: TrainShape {
                experts,
                hidden,
                residual: true,
            },
            float_epochs: 1,
            qat_epochs: 0,
            ..TrainOptions::default()
        };
        let err = train_digits(&opts, &train, &test, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("training shape"), "{err}");
    }
}

#[test]
fn records_that_are_not_digits_are_refused() {
    let (train, test) = small_split(20, 5);
    let opts = TrainOptions {
        float_epochs: 1,
        qat_epochs: 0,
        ..TrainOptions::default()
    };
    let mut short = train.clone();
    short.features[3].pop();
    assert!(train_digits(&opts, &short, &test, &mut |_| {}).is_err());
    let mut label = test.clone();
    label.labels[0] = 10;
    assert!(train_digits(&opts, &train, &label, &mut |_| {}).is_err());
    let empty = train.subset(&[], "empty".into());
    assert!(train_digits(&opts, &empty, &test, &mut |_| {}).is_err());
}

/// The default options on the fixed digits split reproduce the embedded demo model's files
/// byte for byte (about 30 s in release). Not ignored: while it was, a change of the
/// quantizer's search silently changed what the defaults train (found 2026-12-05; the choice is
/// now pinned by [`DEMO_QUANTIZATION`]).
#[test]
fn the_defaults_reproduce_the_embedded_demo_model() {
    let (train, test) = digits_split(&embedded_digits().unwrap());
    let (t, _) = run(&TrainOptions::default(), &train, &test);
    let files = t.model.mixtral_files("trained").unwrap();
    assert!(
        files.config_json.as_bytes() == crate::checkpoint::DEMO_CONFIG,
        "config.json differs:\n{}",
        files.config_json
    );
    assert!(files.safetensors == crate::checkpoint::DEMO_WEIGHTS);
}
