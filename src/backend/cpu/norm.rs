//! Batch norm over an N x C x HW view; statistics in f64 for accuracy,
//! each plane summed in vector lanes and the planes of a channel added in
//! image order (the same bits for any thread count and instruction set).

use super::map;
use crate::backend::BnGeom;
use rayon::prelude::*;

/// Planes per rayon task: about 16K elements (several small planes).
fn planes_per_task(g: &BnGeom) -> usize {
    (16 * 1024usize).div_ceil(g.hw.max(1))
}

/// Per-channel (mean, biased variance) of `x`, in float64 in one pass over
/// the data shifted by the channel's first element (`d = x - x0`: `mean =
/// x0 + Σd / n`, `var = (Σd² - (Σd)² / n) / n`, which keeps the precision
/// of a two-pass variance unless the spread is below 1e-8 of the offset),
/// each plane summed in vector lanes ([`map::channel_sums2`]).
fn channel_stats(g: &BnGeom, x: &[f32], pre: &[f32]) -> Vec<(f64, f64)> {
    let count = (g.n * g.hw) as f64;
    let shift: Vec<f64> = (0..g.c)
        .map(|c| x.get(c * g.hw).map_or(0.0, |&v| (v * pre[c]) as f64))
        .collect();
    let sums = map::channel_sums2((g.n, g.c, g.hw), x, x, |c, v, _| {
        let d = (v * pre[c]) as f64 - shift[c];
        (d, d * d)
    });
    sums.into_iter()
        .zip(&shift)
        .map(|((s, q), &k)| (k + s / count, ((q - s * s / count) / count).max(0.0)))
        .collect()
}

/// `y = (x * pre[c]) * scale[c] + shift[c]` over NCHW planes, through a
/// ReLU (`max(.., 0)`, as `relu_fwd`) when `relu`.
fn affine(
    g: &BnGeom,
    x: &[f32],
    pre: &[f32],
    (scale, shift, relu): (&[f32], &[f32], bool),
    y: &mut [f32],
) {
    let per = planes_per_task(g) * g.hw;
    y.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .enumerate()
        .for_each(|(t, (yt, xt))| {
            for (i, (yp, xp)) in yt.chunks_mut(g.hw).zip(xt.chunks(g.hw)).enumerate() {
                let c = (t * planes_per_task(g) + i) % g.c;
                let (p, k, b) = (pre[c], scale[c], shift[c]);
                if relu {
                    map::map1_here(xp, yp, |v| ((v * p) * k + b).max(0.0));
                } else {
                    map::map1_here(xp, yp, |v| (v * p) * k + b);
                }
            }
        });
}

/// With `relu`, `y` is `max(bn(x), 0)` (the ReLU's bits) and `relu`
/// receives the per-channel `(scale, shift)` of the affine pass (`2 * c`
/// floats), from which [`backward`] recomputes the ReLU's mask.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    g: &BnGeom,
    x: &[f32],
    pre: Option<&[f32]>,
    mut relu: Option<&mut [f32]>,
    gamma: &[f32],
    beta: &[f32],
    run_mean: &mut [f32],
    run_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) {
    let count = g.n * g.hw;
    let pre = pre_scale(g, pre);
    let stats = channel_stats(g, x, &pre);
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
    if let Some(out) = &mut relu {
        out[..g.c].copy_from_slice(&scale);
        out[g.c..2 * g.c].copy_from_slice(&shift);
    }
    affine(g, x, &pre, (&scale, &shift, relu.is_some()), y);
}

/// The per-channel factor applied to `x` first: `pre`, or ones (`v * 1.0`
/// is `v` exactly, so the unscaled form keeps its bits).
fn pre_scale(g: &BnGeom, pre: Option<&[f32]>) -> Vec<f32> {
    pre.map_or_else(|| vec![1.0; g.c], <[f32]>::to_vec)
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
    affine(g, x, &vec![1.0; g.c], (&scale, &shift, false), y);
}

/// The gradient of [`forward_train`]: `dx` of `x` itself, which with a
/// pre-scale is `dt * pre[c]` for the gradient `dt` of `t = x * pre[c]`,
/// and then `dpre[c] = Σ dt * x` (float64, plane by plane in vector lanes
/// and the planes in image order: the bits of `channel_dot`).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &BnGeom,
    x: &[f32],
    pre: Option<(&[f32], &mut [f32])>,
    relu: Option<&[f32]>,
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    // One build per form, so that the loops stay free of the choice.
    let stats = (gamma, save_mean, save_invstd);
    match relu {
        Some(ss) => backward_with::<true>(g, x, pre, ss, dy, stats, dx, dgamma, dbeta),
        None => backward_with::<false>(g, x, pre, &[], dy, stats, dx, dgamma, dbeta),
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_with<const RELU: bool>(
    g: &BnGeom,
    x: &[f32],
    pre: Option<(&[f32], &mut [f32])>,
    relu: &[f32],
    dy: &[f32],
    (gamma, save_mean, save_invstd): (&[f32], &[f32], &[f32]),
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let count = (g.n * g.hw) as f64;
    let (pre, dpre) = match pre {
        Some((p, d)) => (p.to_vec(), Some(d)),
        None => (vec![1.0; g.c], None),
    };
    // Per channel: sum(dy) and sum(dy * xhat).
    // `dy` through the fused ReLU, as `relu_bwd` passes it: where the
    // recomputed affine output is positive (`x` unscaled then).
    let mask = |c: usize, xv: f32, dv: f32| {
        if !RELU || ((xv * 1.0) * relu[c] + relu[g.c + c]).max(0.0) > 0.0 {
            dv
        } else {
            0.0
        }
    };
    let sums = map::channel_sums2((g.n, g.c, g.hw), x, dy, |c, xv, dv| {
        let (mean, invstd) = (save_mean[c] as f64, save_invstd[c] as f64);
        let dv = mask(c, xv, dv);
        (
            dv as f64,
            dv as f64 * ((xv * pre[c]) as f64 - mean) * invstd,
        )
    });
    for (c, &(s, sx)) in sums.iter().enumerate() {
        dbeta[c] = s as f32;
        dgamma[c] = sx as f32;
    }
    let with_dpre = dpre.is_some();
    let per = planes_per_task(g) * g.hw;
    let plane_dots: Vec<f64> = dx
        .par_chunks_mut(per)
        .enumerate()
        .flat_map_iter(|(t, dxt)| {
            let mut dots = Vec::with_capacity(planes_per_task(g));
            for (i, dxp) in dxt.chunks_mut(g.hw).enumerate() {
                let p = t * planes_per_task(g) + i;
                let c = p % g.c;
                let (mean, invstd) = (save_mean[c] as f64, save_invstd[c] as f64);
                let (s, sx, q) = (sums[c].0, sums[c].1, pre[c]);
                let k = gamma[c] as f64 * invstd / count;
                let (xp, dp) = (&x[p * g.hw..][..g.hw], &dy[p * g.hw..][..g.hw]);
                let dt = |xv: f32, dv: f32| {
                    let dv = mask(c, xv, dv);
                    let xhat = ((xv * q) as f64 - mean) * invstd;
                    (k * (count * dv as f64 - s - xhat * sx)) as f32
                };
                if with_dpre {
                    dots.push(map::map2_sum_here(xp, dp, dxp, |xv, dv| {
                        let d = dt(xv, dv);
                        (d * q, d as f64 * xv as f64)
                    }));
                } else {
                    map::map2_here(xp, dp, dxp, |xv, dv| dt(xv, dv) * q);
                }
            }
            dots
        })
        .collect();
    if let Some(dpre) = dpre {
        for (c, d) in dpre.iter_mut().enumerate() {
            *d = (0..g.n).fold(0.0f64, |acc, i| acc + plane_dots[i * g.c + c]) as f32;
        }
    }
}
