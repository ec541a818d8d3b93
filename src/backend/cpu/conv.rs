//! Convolution lowered to GEMM through per-image im2col (skipped for 1x1
//! stride-1 convolutions; groups handled as
//! separate GEMMs over slices of the column buffer).

use super::gemm::sgemm_ld;
use crate::backend::{Conv2dGeom, GemmGeom};
use rayon::prelude::*;
use std::ops::Range;

/// The output positions `o` in `0..out` whose input position
/// `o * stride + offset` falls inside `0..len`: a contiguous range, so the
/// padding is handled once per kernel tap instead of once per element.
pub(super) fn inside(offset: isize, stride: usize, len: usize, out: usize) -> Range<usize> {
    let s = stride as isize;
    let lo = if offset < 0 { (-offset + s - 1) / s } else { 0 };
    let hi = (len as isize - offset + s - 1).div_euclid(s);
    let lo = (lo as usize).min(out);
    lo..(hi.max(0) as usize).clamp(lo, out)
}

/// Column buffer of one image and one group: rows are (c, ki, kj), columns
/// are output positions.
pub(super) fn im2col<T: Copy + Default>(g: &Conv2dGeom, x_img: &[T], group: usize, col: &mut [T]) {
    im2col_rows(g, x_img, group, 0..g.out_h(), col);
}

/// The input row read by output row `oy` at kernel row `ki` (when inside).
fn input_row(g: &Conv2dGeom, oy: usize, ki: usize) -> usize {
    oy * g.stride.0 + ki * g.dilation.0 - g.pad.0
}

/// [`im2col`] restricted to the output rows `oys`: the column buffer of
/// that band of the output (`oys.len() * out_w` columns).
fn im2col_rows<T: Copy + Default>(
    g: &Conv2dGeom,
    x_img: &[T],
    group: usize,
    oys: Range<usize>,
    col: &mut [T],
) {
    let ow = g.out_w();
    let len = oys.len() * ow;
    let cg = g.c_in_per_group();
    for c in 0..cg {
        let plane = &x_img[(group * cg + c) * g.h * g.w..][..g.h * g.w];
        for ki in 0..g.kh {
            let rows = inside(
                (ki * g.dilation.0) as isize - g.pad.0 as isize,
                g.stride.0,
                g.h,
                g.out_h(),
            );
            for kj in 0..g.kw {
                let offset = (kj * g.dilation.1) as isize - g.pad.1 as isize;
                let cols = inside(offset, g.stride.1, g.w, ow);
                let row = &mut col[((c * g.kh + ki) * g.kw + kj) * len..][..len];
                for (oy, out) in oys.clone().zip(row.chunks_exact_mut(ow)) {
                    if !rows.contains(&oy) || cols.is_empty() {
                        out.fill(T::default());
                        continue;
                    }
                    let src = &plane[input_row(g, oy, ki) * g.w..][..g.w];
                    out[..cols.start].fill(T::default());
                    out[cols.end..].fill(T::default());
                    // First input column read, for output column `cols.start`.
                    let x0 = (cols.start * g.stride.1) as isize + offset;
                    let src = &src[x0 as usize..];
                    let out = &mut out[cols.clone()];
                    if g.stride.1 == 1 {
                        out.copy_from_slice(&src[..out.len()]);
                    } else {
                        out.iter_mut()
                            .zip(src.iter().step_by(g.stride.1))
                            .for_each(|(o, &v)| *o = v);
                    }
                }
            }
        }
    }
}

/// Adds the column buffer of the output rows `oys` back into the image
/// gradient (the adjoint of [`im2col_rows`]).
fn col2im_rows(g: &Conv2dGeom, col: &[f32], group: usize, oys: Range<usize>, dx_img: &mut [f32]) {
    let ow = g.out_w();
    let len = oys.len() * ow;
    let cg = g.c_in_per_group();
    for c in 0..cg {
        let plane = &mut dx_img[(group * cg + c) * g.h * g.w..][..g.h * g.w];
        for ki in 0..g.kh {
            let rows = inside(
                (ki * g.dilation.0) as isize - g.pad.0 as isize,
                g.stride.0,
                g.h,
                g.out_h(),
            );
            for kj in 0..g.kw {
                let offset = (kj * g.dilation.1) as isize - g.pad.1 as isize;
                let cols = inside(offset, g.stride.1, g.w, ow);
                let row = &col[((c * g.kh + ki) * g.kw + kj) * len..][..len];
                for (oy, src) in oys.clone().zip(row.chunks_exact(ow)) {
                    if !rows.contains(&oy) || cols.is_empty() {
                        continue;
                    }
                    let x0 = (cols.start * g.stride.1) as isize + offset;
                    let dst = &mut plane[input_row(g, oy, ki) * g.w..][..g.w][x0 as usize..];
                    dst.iter_mut()
                        .step_by(g.stride.1)
                        .zip(&src[cols.clone()])
                        .for_each(|(d, &v)| *d += v);
                }
            }
        }
    }
}

pub(super) fn col_len(g: &Conv2dGeom) -> usize {
    g.c_in_per_group() * g.kh * g.kw * g.out_h() * g.out_w()
}

/// Column buffers are built for a band of output rows at a time, at most
/// this many floats (512 KiB), so that im2col writes them into cache and the
/// GEMM packs them from there instead of from memory...
const COL_TILE_FLOATS: usize = 128 * 1024;
/// ... but a band spans at least this many output positions, or the GEMMs
/// get too narrow and re-pack the weights for every band.
const MIN_BAND_COLS: usize = 1024;

/// The bands of output rows that the lowering works on, one after the other.
fn row_bands(g: &Conv2dGeom) -> impl Iterator<Item = Range<usize>> {
    let oh = g.out_h();
    let per_row = g.c_in_per_group() * g.kh * g.kw * g.out_w();
    // A pointwise convolution reads the image in place: no buffer to bound.
    let rows = if pointwise(g) {
        oh
    } else {
        (COL_TILE_FLOATS / per_row)
            .max(MIN_BAND_COLS.div_ceil(g.out_w()))
            .clamp(1, oh)
    };
    (0..oh).step_by(rows).map(move |r| r..(r + rows).min(oh))
}

/// Whether to parallelize over images (each GEMM single-threaded) or inside
/// each GEMM.
fn batch_parallel(g: &Conv2dGeom) -> bool {
    g.n >= rayon::current_num_threads()
}

/// A 1x1 convolution with unit stride and no padding needs no im2col: each
/// group's slice of the image (rows c, columns pixels) already is its
/// column buffer.
fn pointwise(g: &Conv2dGeom) -> bool {
    g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.pad == (0, 0)
}

/// A zeroed column buffer for one band of output rows (empty for pointwise
/// convolutions).
fn scratch(g: &Conv2dGeom) -> Vec<f32> {
    let rows = row_bands(g).next().map_or(0, |r| r.len());
    let len = g.c_in_per_group() * g.kh * g.kw * rows * g.out_w();
    vec![0.0; if pointwise(g) { 0 } else { len }]
}

/// The column buffer of image `x_img`, group `group`, output rows `oys`, as
/// `(data, row stride)`: `col` filled by im2col, or the image slice itself
/// for a pointwise convolution.
fn columns<'a>(
    g: &Conv2dGeom,
    x_img: &'a [f32],
    group: usize,
    oys: Range<usize>,
    col: &'a mut [f32],
) -> (&'a [f32], usize) {
    if pointwise(g) {
        let len = g.c_in_per_group() * g.h * g.w;
        return (&x_img[group * len + oys.start * g.w..], g.h * g.w);
    }
    let len = oys.len() * g.out_w();
    im2col_rows(g, x_img, group, oys, col);
    (col, len)
}

/// Runs `f(image_index, chunk, col, parallel_gemm)` over per-image chunks,
/// in parallel over images or sequentially with parallel GEMMs inside. `col`
/// is a scratch column buffer, allocated once per rayon job rather than once
/// per image.
fn per_image<F>(g: &Conv2dGeom, data: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut [f32], bool) + Sync,
{
    if batch_parallel(g) {
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(|| scratch(g), |col, (i, c)| f(i, c, col, false));
    } else {
        let mut col = scratch(g);
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c, &mut col, true));
    }
}

// Below, `p0..p0 + np` are the output positions of one band of rows; a
// band's slice of the output (or of dy) is a `rows x np` matrix with row
// stride `ohw`.

pub fn forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (ow, ohw) = (g.out_w(), g.out_h() * g.out_w());
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let x_img_len = g.c_in * g.h * g.w;
    per_image(g, y, g.c_out * ohw, |i, y_img, col, par| {
        let x_img = &x[i * x_img_len..][..x_img_len];
        for grp in 0..g.groups {
            for oys in row_bands(g) {
                let (p0, np) = (oys.start * ow, oys.len() * ow);
                let cols = columns(g, x_img, grp, oys, col);
                let y_band = &mut y_img[grp * og * ohw + p0..];
                sgemm_ld(
                    &GemmGeom::new(og, np, kk),
                    (&w[grp * og * kk..], kk),
                    cols,
                    (y_band, ohw),
                    par,
                );
            }
        }
        if let Some(b) = bias {
            for (o, plane) in y_img.chunks_mut(ohw).enumerate() {
                plane.iter_mut().for_each(|v| *v += b[o]);
            }
        }
    });
}

pub fn backward_data(g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (ow, ohw) = (g.out_w(), g.out_h() * g.out_w());
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let dy_img_len = g.c_out * ohw;
    per_image(g, dx, g.c_in * g.h * g.w, |i, dx_img, col, par| {
        let dy_img = &dy[i * dy_img_len..][..dy_img_len];
        if !pointwise(g) {
            dx_img.fill(0.0); // col2im accumulates
        }
        for grp in 0..g.groups {
            for oys in row_bands(g) {
                let (p0, np) = (oys.start * ow, oys.len() * ow);
                let gg = GemmGeom {
                    trans_a: true,
                    ..GemmGeom::new(kk, np, og)
                };
                let (w_grp, dy_band) = (
                    (&w[grp * og * kk..], kk),
                    (&dy_img[grp * og * ohw + p0..], ohw),
                );
                if pointwise(g) {
                    // The GEMM writes this group's band of dx directly.
                    sgemm_ld(
                        &gg,
                        w_grp,
                        dy_band,
                        (&mut dx_img[grp * kk * ohw + p0..], ohw),
                        par,
                    );
                } else {
                    sgemm_ld(&gg, w_grp, dy_band, (&mut col[..], np), par);
                    col2im_rows(g, col, grp, oys, dx_img);
                }
            }
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
    let (ow, ohw) = (g.out_w(), g.out_h() * g.out_w());
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let (x_img_len, dy_img_len) = (g.c_in * g.h * g.w, g.c_out * ohw);
    // Accumulate one image into `acc` (dw layout).
    let add_image = |i: usize, acc: &mut [f32], col: &mut [f32], par: bool| {
        let x_img = &x[i * x_img_len..][..x_img_len];
        let dy_img = &dy[i * dy_img_len..][..dy_img_len];
        for grp in 0..g.groups {
            for oys in row_bands(g) {
                let (p0, np) = (oys.start * ow, oys.len() * ow);
                let cols = columns(g, x_img, grp, oys, col);
                let gg = GemmGeom {
                    trans_b: true,
                    beta: 1.0,
                    ..GemmGeom::new(og, kk, np)
                };
                let dy_band = (&dy_img[grp * og * ohw + p0..], ohw);
                sgemm_ld(&gg, dy_band, cols, (&mut acc[grp * og * kk..], kk), par);
            }
        }
    };
    if batch_parallel(g) {
        let threads = rayon::current_num_threads();
        let per = g.n.div_ceil(threads);
        let partials: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut acc = vec![0.0f32; dw.len()];
                let mut col = scratch(g);
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
        let mut col = scratch(g);
        for i in 0..g.n {
            add_image(i, dw, &mut col, true);
        }
    }
    if let Some(db) = dbias {
        bias_grad(g, dy, db);
    }
}

/// `db[o] = sum over images and pixels of dy[n][o]`, in f64, one channel per
/// task (deterministic).
pub(super) fn bias_grad(g: &Conv2dGeom, dy: &[f32], db: &mut [f32]) {
    let ohw = g.out_h() * g.out_w();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Direct convolution in f64, one output element at a time.
    fn naive(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
        let mut y = vec![0.0f64; g.n * g.c_out * oh * ow];
        for n in 0..g.n {
            for o in 0..g.c_out {
                let grp = o / og;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                        for c in 0..cg {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize
                                        - g.pad.0 as isize;
                                    let ix = (ox * g.stride.1 + kj * g.dilation.1) as isize
                                        - g.pad.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((n * g.c_in + grp * cg + c) * g.h + iy as usize)
                                        * g.w
                                        + ix as usize;
                                    let wi = ((o * cg + c) * g.kh + ki) * g.kw + kj;
                                    acc += x[xi] as f64 * w[wi] as f64;
                                }
                            }
                        }
                        y[((n * g.c_out + o) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    /// The forward pass against a direct convolution in f64: small and
    /// larger planes, odd batches, stride, unequal padding, dilation, groups
    /// (and a 1x1 stride-2 case, which is not pointwise), with and without
    /// bias. Outputs start as NaN to catch unwritten elements.
    #[test]
    fn forward_matches_direct_convolution() {
        #[rustfmt::skip]
        let shapes = [
            // n, c_in, h, w, c_out, kh, kw, stride, pad, dilation, groups
            (7, 64, 7, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (9, 90, 5, 6, 4, 3, 2, (2, 1), (1, 0), (1, 1), 1),
            (5, 57, 9, 8, 3, 3, 3, (1, 2), (2, 1), (2, 1), 1),
            (3, 2, 4, 4, 5, 1, 1, (2, 2), (0, 0), (1, 1), 1),
            (2, 4, 6, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1), 2),
            (4, 3, 20, 17, 2, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (1, 3, 5, 5, 2, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        ];
        let mut rng = Rng::new(5);
        for (n, c_in, h, w, c_out, kh, kw, stride, pad, dilation, groups) in shapes {
            let g = Conv2dGeom {
                n,
                c_in,
                h,
                w,
                c_out,
                kh,
                kw,
                stride,
                pad,
                dilation,
                groups,
            }
            .validate()
            .unwrap();
            let mut draw =
                |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect() };
            let x = draw(n * c_in * h * w);
            let wt = draw(c_out * (c_in / groups) * kh * kw);
            let b = draw(c_out);
            for bias in [None, Some(&b[..])] {
                let mut y = vec![f32::NAN; n * c_out * g.out_h() * g.out_w()];
                forward(&g, &x, &wt, bias, &mut y);
                let want = naive(&g, &x, &wt, bias);
                for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{g:?} bias {}: y[{i}] = {got}, want {want}",
                        bias.is_some()
                    );
                }
            }
        }
    }
}
