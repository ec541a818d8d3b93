//! Max pooling, average pooling and global average pooling over NCHW planes.

use crate::backend::{AvgPool2dGeom, Pool2dGeom};
use rayon::prelude::*;

/// Index (within the plane) of the first maximum of output window (oy, ox),
/// scanning rows then columns with NaN winning, as PyTorch does.
fn argmax(g: &Pool2dGeom, plane: &[f32], oy: usize, ox: usize) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for ki in 0..g.kh {
        let iy = (oy * g.stride.0 + ki) as isize - g.pad.0 as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        for kj in 0..g.kw {
            let ix = (ox * g.stride.1 + kj) as isize - g.pad.1 as isize;
            if ix < 0 || ix >= g.w as isize {
                continue;
            }
            let idx = iy as usize * g.w + ix as usize;
            let v = plane[idx];
            if best.is_none_or(|(_, b)| v > b || v.is_nan()) {
                best = Some((idx, v));
            }
        }
    }
    best.map(|(i, _)| i)
}

pub fn max_forward(g: &Pool2dGeom, x: &[f32], y: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, yp)| {
        let plane = &x[p * g.h * g.w..][..g.h * g.w];
        for oy in 0..oh {
            for ox in 0..ow {
                yp[oy * ow + ox] = argmax(g, plane, oy, ox).map_or(f32::NEG_INFINITY, |i| plane[i]);
            }
        }
    });
}

pub fn max_backward(g: &Pool2dGeom, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    dx.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(p, dxp)| {
            dxp.fill(0.0);
            let plane = &x[p * g.h * g.w..][..g.h * g.w];
            let dyp = &dy[p * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    if let Some(i) = argmax(g, plane, oy, ox) {
                        dxp[i] += dyp[oy * ow + ox];
                    }
                }
            }
        });
}

/// Each output: the f64 sum of its window's inputs over its divisor.
pub fn avg_forward(g: &AvgPool2dGeom, x: &[f32], y: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    y[..g.y_len()]
        .par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(p, yp)| {
            let plane = &x[p * g.h * g.w..][..g.h * g.w];
            for oy in 0..oh {
                let r = g.rows(oy);
                for ox in 0..ow {
                    let c = g.cols(ox);
                    let mut s = 0.0f64;
                    for iy in r.lo..r.hi {
                        for ix in c.lo..c.hi {
                            s += plane[iy * g.w + ix] as f64;
                        }
                    }
                    yp[oy * ow + ox] = (s / (r.extent * c.extent) as f64) as f32;
                }
            }
        });
}

/// Scatters `dy / divisor` over each window, summing in f64 per plane.
pub fn avg_backward(g: &AvgPool2dGeom, dy: &[f32], dx: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    dx[..g.x_len()]
        .par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(p, dxp)| {
            let dyp = &dy[p * oh * ow..][..oh * ow];
            let mut acc = vec![0.0f64; g.h * g.w];
            for oy in 0..oh {
                let r = g.rows(oy);
                for ox in 0..ow {
                    let c = g.cols(ox);
                    let d = dyp[oy * ow + ox] as f64 / (r.extent * c.extent) as f64;
                    for iy in r.lo..r.hi {
                        for ix in c.lo..c.hi {
                            acc[iy * g.w + ix] += d;
                        }
                    }
                }
            }
            for (o, a) in dxp.iter_mut().zip(acc) {
                *o = a as f32;
            }
        });
}

pub fn gap_forward(hw: usize, x: &[f32], y: &mut [f32]) {
    y.par_iter_mut().enumerate().for_each(|(p, o)| {
        *o = (x[p * hw..][..hw].iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
    });
}

pub fn gap_backward(hw: usize, dy: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(hw)
        .zip(dy.par_iter())
        .for_each(|(p, &d)| p.fill(d / hw as f32));
}
