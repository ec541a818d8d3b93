//! Batch norm over an N x C x HW view; statistics in f64 for accuracy.

use crate::backend::BnGeom;
use rayon::prelude::*;

/// Iterates the `n` planes of channel `c`.
fn planes<'a>(g: &'a BnGeom, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    (0..g.n).map(move |i| &x[(i * g.c + c) * g.hw..][..g.hw])
}

/// Per-channel (mean, biased variance) of `x`, two-pass in f64.
fn channel_stats(g: &BnGeom, x: &[f32]) -> Vec<(f64, f64)> {
    let count = (g.n * g.hw) as f64;
    (0..g.c)
        .into_par_iter()
        .map(|c| {
            let mean = planes(g, x, c).flatten().map(|&v| v as f64).sum::<f64>() / count;
            let var = planes(g, x, c)
                .flatten()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / count;
            (mean, var)
        })
        .collect()
}

/// `y = x * scale[c] + shift[c]` over NCHW planes.
fn affine(g: &BnGeom, x: &[f32], scale: &[f32], shift: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(g.hw)
        .zip(x.par_chunks(g.hw))
        .enumerate()
        .for_each(|(p, (yp, xp))| {
            let c = p % g.c;
            yp.iter_mut()
                .zip(xp)
                .for_each(|(o, &v)| *o = v * scale[c] + shift[c]);
        });
}

#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    g: &BnGeom,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    run_mean: &mut [f32],
    run_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) {
    let count = g.n * g.hw;
    let stats = channel_stats(g, x);
    let mut scale = vec![0.0f32; g.c];
    let mut shift = vec![0.0f32; g.c];
    let m = g.momentum;
    for (c, &(mean, var)) in stats.iter().enumerate() {
        let invstd = 1.0 / (var + g.eps as f64).sqrt();
        save_mean[c] = mean as f32;
        save_invstd[c] = invstd as f32;
        scale[c] = (gamma[c] as f64 * invstd) as f32;
        shift[c] = (beta[c] as f64 - mean * gamma[c] as f64 * invstd) as f32;
        let unbiased = if count > 1 {
            var * count as f64 / (count - 1) as f64
        } else {
            var
        };
        run_mean[c] = (1.0 - m) * run_mean[c] + m * mean as f32;
        run_var[c] = (1.0 - m) * run_var[c] + m * unbiased as f32;
    }
    affine(g, x, &scale, &shift, y);
}

pub fn forward_eval(
    g: &BnGeom,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    y: &mut [f32],
) {
    let scale: Vec<f32> = (0..g.c)
        .map(|c| gamma[c] / (var[c] + g.eps).sqrt())
        .collect();
    let shift: Vec<f32> = (0..g.c).map(|c| beta[c] - mean[c] * scale[c]).collect();
    affine(g, x, &scale, &shift, y);
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &BnGeom,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let count = (g.n * g.hw) as f64;
    // Per channel: sum(dy) and sum(dy * xhat).
    let sums: Vec<(f64, f64)> = (0..g.c)
        .into_par_iter()
        .map(|c| {
            let (mean, invstd) = (save_mean[c] as f64, save_invstd[c] as f64);
            planes(g, x, c)
                .zip(planes(g, dy, c))
                .fold((0.0, 0.0), |acc, (xp, dp)| {
                    xp.iter().zip(dp).fold(acc, |(s, sx), (&xv, &dv)| {
                        (s + dv as f64, sx + dv as f64 * (xv as f64 - mean) * invstd)
                    })
                })
        })
        .collect();
    for (c, &(s, sx)) in sums.iter().enumerate() {
        dbeta[c] = s as f32;
        dgamma[c] = sx as f32;
    }
    dx.par_chunks_mut(g.hw).enumerate().for_each(|(p, dxp)| {
        let c = p % g.c;
        let (mean, invstd) = (save_mean[c] as f64, save_invstd[c] as f64);
        let (s, sx) = sums[c];
        let k = gamma[c] as f64 * invstd / count;
        let (xp, dp) = (&x[p * g.hw..][..g.hw], &dy[p * g.hw..][..g.hw]);
        for ((o, &xv), &dv) in dxp.iter_mut().zip(xp).zip(dp) {
            let xhat = (xv as f64 - mean) * invstd;
            *o = (k * (count * dv as f64 - s - xhat * sx)) as f32;
        }
    });
}
