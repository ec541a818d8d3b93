//! Convolution lowered to GEMM through per-image im2col (groups handled as
//! separate GEMMs over slices of the column buffer).

use super::gemm::sgemm;
use crate::backend::{Conv2dGeom, GemmGeom};
use rayon::prelude::*;

/// The output columns `ox` whose input column `ox * stride + offset - pad`
/// falls inside `[0, w)`, as a half-open range (empty when none do).
fn valid_cols(w: usize, ow: usize, stride: usize, offset: usize, pad: usize) -> (usize, usize) {
    // First ox with ox * stride + offset >= pad.
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    // One past the last ox with ox * stride + offset < w + pad.
    let hi = if w + pad > offset {
        (w + pad - offset).div_ceil(stride)
    } else {
        0
    };
    (lo.min(ow), hi.min(ow).max(lo.min(ow)))
}

/// Column buffer of one image and one group: rows are (c, ki, kj), columns
/// are output positions. Each output row copies the valid input span
/// (contiguously for stride 1) and zero-fills the padding.
pub(super) fn im2col<T: Copy + Default>(g: &Conv2dGeom, x_img: &[T], group: usize, col: &mut [T]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (sw, pw) = (g.stride.1, g.pad.1);
    let cg = g.c_in_per_group();
    for c in 0..cg {
        let plane = &x_img[(group * cg + c) * g.h * g.w..][..g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &mut col[((c * g.kh + ki) * g.kw + kj) * oh * ow..][..oh * ow];
                let off = kj * g.dilation.1;
                let (lo, hi) = valid_cols(g.w, ow, sw, off, pw);
                for oy in 0..oh {
                    let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.pad.0 as isize;
                    let out = &mut row[oy * ow..][..ow];
                    if iy < 0 || iy >= g.h as isize {
                        out.fill(T::default());
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..][..g.w];
                    out[..lo].fill(T::default());
                    out[hi..].fill(T::default());
                    let ix0 = lo * sw + off - pw;
                    if sw == 1 {
                        out[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (k, o) in out[lo..hi].iter_mut().enumerate() {
                            *o = src[ix0 + k * sw];
                        }
                    }
                }
            }
        }
    }
}

/// Adds a column buffer back into the image gradient (the adjoint of im2col).
fn col2im(g: &Conv2dGeom, col: &[f32], group: usize, dx_img: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (sw, pw) = (g.stride.1, g.pad.1);
    let cg = g.c_in_per_group();
    for c in 0..cg {
        let plane = &mut dx_img[(group * cg + c) * g.h * g.w..][..g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &col[((c * g.kh + ki) * g.kw + kj) * oh * ow..][..oh * ow];
                let off = kj * g.dilation.1;
                let (lo, hi) = valid_cols(g.w, ow, sw, off, pw);
                if lo >= hi {
                    continue;
                }
                let ix0 = lo * sw + off - pw;
                for oy in 0..oh {
                    let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.pad.0 as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..][..g.w];
                    let src = &row[oy * ow + lo..oy * ow + hi];
                    if sw == 1 {
                        dst[ix0..ix0 + src.len()]
                            .iter_mut()
                            .zip(src)
                            .for_each(|(d, v)| *d += v);
                    } else {
                        for (k, v) in src.iter().enumerate() {
                            dst[ix0 + k * sw] += v;
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn col_len(g: &Conv2dGeom) -> usize {
    g.c_in_per_group() * g.kh * g.kw * g.out_h() * g.out_w()
}

/// Whether to parallelize over images (each GEMM single-threaded) or inside
/// each GEMM.
fn batch_parallel(g: &Conv2dGeom) -> bool {
    g.n >= rayon::current_num_threads()
}

/// Runs `f(image_index, chunk)` over per-image chunks, in parallel over images
/// or sequentially with parallel GEMMs inside.
fn per_image<F>(g: &Conv2dGeom, data: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32], bool) + Sync,
{
    if batch_parallel(g) {
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c, false));
    } else {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c, true));
    }
}

pub fn forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let ohw = g.out_h() * g.out_w();
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let x_img_len = g.c_in * g.h * g.w;
    per_image(g, y, g.c_out * ohw, |i, y_img, par| {
        let mut col = vec![0.0f32; col_len(g)];
        let x_img = &x[i * x_img_len..][..x_img_len];
        for grp in 0..g.groups {
            im2col(g, x_img, grp, &mut col);
            let gg = GemmGeom::new(og, ohw, kk);
            sgemm(
                &gg,
                &w[grp * og * kk..],
                &col,
                &mut y_img[grp * og * ohw..],
                par,
            );
        }
        if let Some(b) = bias {
            for (o, plane) in y_img.chunks_mut(ohw).enumerate() {
                plane.iter_mut().for_each(|v| *v += b[o]);
            }
        }
    });
}

pub fn backward_data(g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let ohw = g.out_h() * g.out_w();
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let dy_img_len = g.c_out * ohw;
    per_image(g, dx, g.c_in * g.h * g.w, |i, dx_img, par| {
        dx_img.fill(0.0);
        let mut col = vec![0.0f32; col_len(g)];
        let dy_img = &dy[i * dy_img_len..][..dy_img_len];
        for grp in 0..g.groups {
            let gg = GemmGeom {
                trans_a: true,
                ..GemmGeom::new(kk, ohw, og)
            };
            sgemm(
                &gg,
                &w[grp * og * kk..],
                &dy_img[grp * og * ohw..],
                &mut col,
                par,
            );
            col2im(g, &col, grp, dx_img);
        }
    });
}

pub fn backward_weight(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    let ohw = g.out_h() * g.out_w();
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let (x_img_len, dy_img_len) = (g.c_in * g.h * g.w, g.c_out * ohw);
    // Accumulate one image into `acc` (dw layout).
    let add_image = |i: usize, acc: &mut [f32], col: &mut [f32], par: bool| {
        let x_img = &x[i * x_img_len..][..x_img_len];
        let dy_img = &dy[i * dy_img_len..][..dy_img_len];
        for grp in 0..g.groups {
            im2col(g, x_img, grp, col);
            let gg = GemmGeom {
                trans_b: true,
                beta: 1.0,
                ..GemmGeom::new(og, kk, ohw)
            };
            sgemm(
                &gg,
                &dy_img[grp * og * ohw..],
                col,
                &mut acc[grp * og * kk..],
                par,
            );
        }
    };
    if batch_parallel(g) {
        let threads = rayon::current_num_threads();
        let per = g.n.div_ceil(threads);
        let partials: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut acc = vec![0.0f32; dw.len()];
                let mut col = vec![0.0f32; col_len(g)];
                for i in (t * per)..((t + 1) * per).min(g.n) {
                    add_image(i, &mut acc, &mut col, false);
                }
                acc
            })
            .collect();
        dw.fill(0.0);
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(d, v)| *d += v);
        }
    } else {
        dw.fill(0.0);
        let mut col = vec![0.0f32; col_len(g)];
        for i in 0..g.n {
            add_image(i, dw, &mut col, true);
        }
    }
    if let Some(db) = dbias {
        db.par_iter_mut().enumerate().for_each(|(o, d)| {
            let mut s = 0.0f64;
            for i in 0..g.n {
                s += dy[(i * g.c_out + o) * ohw..][..ohw]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            *d = s as f32;
        });
    }
}
