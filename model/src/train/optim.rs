//! The optimizer and what shapes the weights after each step (penalties, projections onto the
//! sets that quantize well), and the order and augmentation of the training records.

use super::params::{Layout, D};
use crate::random::SplitMix;

/// AdamW state over all parameters.
pub(super) struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    pub(super) fn new(l: &Layout) -> Adam {
        Adam {
            m: vec![0.0; l.total],
            v: vec![0.0; l.total],
            t: 0,
        }
    }

    /// One AdamW step: decoupled weight decay `wd` on every weight, `wd + wd_w2` on W2.
    pub(super) fn step(
        &mut self,
        l: &Layout,
        p: &mut [f64],
        g: &[f64],
        lr: f64,
        (wd, wd_w2): (f64, f64),
    ) {
        self.t += 1;
        let (b1, b2) = (0.9f64, 0.999f64);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        for i in 0..l.total {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let decay = if (l.w2..l.hw).contains(&i) {
                wd + wd_w2
            } else {
                wd
            };
            p[i] -= lr * ((self.m[i] / c1) / ((self.v[i] / c2).sqrt() + 1e-8) + decay * p[i]);
        }
    }
}

/// Adds the L1 penalties' (sub)gradients for a batch of `n` records (the batch gradient is
/// divided by `n` afterwards): `l1` on the first stage (router, W1, W3), `l1_w2` on W2.
pub(super) fn l1_grad(l: &Layout, p: &[f64], g: &mut [f64], l1: f64, l1_w2: f64, n: usize) {
    for i in l.wr..l.w2 {
        g[i] += l1 * n as f64 * p[i].signum();
    }
    for i in l.w2..l.hw {
        g[i] += l1_w2 * n as f64 * p[i].signum();
    }
}

/// Euclidean projection of `v` onto the L1 ball of radius `r` (Duchi et al. 2008).
pub(super) fn project_l1(v: &mut [f64], r: f64) {
    let l1: f64 = v.iter().map(|x| x.abs()).sum();
    if l1 <= r {
        return;
    }
    let mut u: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    u.sort_by(|a, b| b.total_cmp(a));
    let (mut cum, mut theta) = (0.0, 0.0);
    for (i, &ui) in u.iter().enumerate() {
        cum += ui;
        let t = (cum - r) / (i + 1) as f64;
        if ui - t > 0.0 {
            theta = t;
        }
    }
    for x in v.iter_mut() {
        *x = x.signum() * (x.abs() - theta).max(0.0);
    }
}

/// First-stage rows onto their L1 balls: veilmoe's reads are scaled from worst-case
/// accumulator ranges (L1 norms), and W1 rows share one read scale, so no row may grow far
/// beyond the others.
pub(super) fn project_first_stage(l: &Layout, p: &mut [f64], radius: f64, router_radius: f64) {
    for e in 0..l.e {
        project_l1(&mut p[l.wr + e * D..l.wr + (e + 1) * D], router_radius);
    }
    // W1 and W3 rows are contiguous: 2 E H rows of D.
    for r in 0..2 * l.e * l.h {
        project_l1(&mut p[l.w1 + r * D..l.w1 + (r + 1) * D], radius);
    }
}

/// Keeps the `keep` largest weights of each W2 row (the rest become zero): the output read's
/// shift follows the worst W2 row.
pub(super) fn project_w2(l: &Layout, p: &mut [f64], keep: usize) {
    let h = l.h;
    for r in 0..l.e * D {
        let row = &mut p[l.w2 + r * h..l.w2 + (r + 1) * h];
        let mut idx: Vec<usize> = (0..h).collect();
        idx.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()));
        for &j in &idx[keep.min(h)..] {
            row[j] = 0.0;
        }
    }
}

/// With probability `prob`, the 8x8 image shifted by one pixel in a random direction (zero
/// fill): digits are invariant to such shifts, and the 1,437 training records are few.
/// Always draws from `rng` (once, or twice when it shifts), so that the stream of draws
/// does not depend on `prob` being zero.
pub(super) fn augment(raw: &[f32], prob: f64, rng: &mut SplitMix) -> Vec<f32> {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    if u >= prob {
        return raw.to_vec();
    }
    let (dx, dy) = [
        (-1i32, 0i32),
        (1, 0),
        (0, -1),
        (0, 1),
        (-1, -1),
        (1, 1),
        (-1, 1),
        (1, -1),
    ][rng.below(8) as usize];
    let mut out = vec![0.0; 64];
    for y in 0..8i32 {
        for x in 0..8i32 {
            let (sx, sy) = (x - dx, y - dy);
            if (0..8).contains(&sx) && (0..8).contains(&sy) {
                out[(y * 8 + x) as usize] = raw[(sy * 8 + sx) as usize];
            }
        }
    }
    out
}

/// Fisher–Yates shuffle driven by `rng`.
pub(super) fn shuffle(v: &mut [usize], rng: &mut SplitMix) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// Cosine learning-rate factor of `epoch` out of `total`, from 1 down to a floor of 0.05.
pub(super) fn cosine(epoch: usize, total: usize) -> f64 {
    0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / total.max(1) as f64).cos()) * 0.95 + 0.05
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_projection_lands_on_the_ball() {
        let mut v = [3.0, -1.0, 0.5];
        project_l1(&mut v, 2.0);
        assert_eq!(v, [2.0, 0.0, 0.0]);
        let mut rng = SplitMix(3);
        for r in [0.5, 1.0, 3.0] {
            let mut v: Vec<f64> = (0..20).map(|_| rng.gaussian()).collect();
            let before = v.clone();
            project_l1(&mut v, r);
            let l1: f64 = v.iter().map(|x| x.abs()).sum();
            assert!((l1 - r).abs() < 1e-9, "L1 {l1} for radius {r}");
            // shrinks towards zero, never flips a sign
            assert!(v
                .iter()
                .zip(&before)
                .all(|(a, b)| a.abs() <= b.abs() && a * b >= 0.0));
        }
        // inside the ball: unchanged
        let mut v = [0.1, -0.2];
        project_l1(&mut v, 1.0);
        assert_eq!(v, [0.1, -0.2]);
    }

    #[test]
    fn w2_projection_keeps_the_largest_weights() {
        let l = Layout::new(Default::default());
        let (h, w2) = (l.h, l.w2);
        let mut p = vec![0.0; l.total];
        let mut rng = SplitMix(5);
        p[w2..l.hw].iter_mut().for_each(|v| *v = rng.gaussian());
        let before = p.clone();
        project_w2(&l, &mut p, 2);
        for r in 0..l.e * D {
            let row = &p[w2 + r * h..w2 + (r + 1) * h];
            let old = &before[w2 + r * h..w2 + (r + 1) * h];
            assert_eq!(row.iter().filter(|&&v| v != 0.0).count(), 2);
            let kept_min = row
                .iter()
                .filter(|&&v| v != 0.0)
                .fold(f64::INFINITY, |a, v| a.min(v.abs()));
            let dropped_max = old
                .iter()
                .zip(row)
                .filter(|(_, &n)| n == 0.0)
                .fold(0f64, |a, (o, _)| a.max(o.abs()));
            assert!(kept_min >= dropped_max);
        }
        assert_eq!(p[..w2], before[..w2]);
    }

    #[test]
    fn shifted_digits_keep_their_pixels() {
        let raw: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut rng = SplitMix(1);
        assert_eq!(augment(&raw, 0.0, &mut rng), raw);
        let shifted = augment(&raw, 1.0, &mut rng);
        // a one-pixel shift keeps at least 7x7 of the pixels, in order
        assert!(shifted.iter().filter(|&&v| v != 0.0).count() >= 48);
        assert_ne!(shifted, raw);
    }
}
