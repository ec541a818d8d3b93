//! The integer kernels. Everything between the graph's QuantizeLinear and
//! DequantizeLinear is integer arithmetic: int8 x int8 products summed in
//! int32, the bias added and range-checked in int64, and requantization by
//! the spec's integer routines in `crate::quant` ([`Requant`] for R1,
//! [`AddRequant`] for S7, [`pool::global_avg_pool`] for S6). Float appears
//! only at the two graph boundaries, where the data is float by definition.
//! Each kernel is rayon-parallel over the images of the batch and, inside an
//! image, over channels. A depthwise QLinearConv (`group == C_in`, one input
//! channel per group) runs a direct loop per (image, channel) plane instead
//! of im2col and one tiny product per group.

use crate::quant::fake::{dequantize, quantize};
use crate::quant::params::{ACT_QMAX, ACT_QMIN};
use crate::quant::{pool, AddRequant, Requant};
use crate::{bail, Result};
use rayon::prelude::*;

/// A QLinearConv with everything precomputed from its initializers.
#[derive(Clone, Debug)]
pub struct ConvOp {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    /// Padding at the top and left (the `begin` half of ONNX `pads`).
    pub pad_begin: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// Input zero point (padding is `z_x`, i.e. 0 after subtraction).
    pub z_x: i32,
    /// `[c_out, c_in / groups * kh * kw]`.
    pub weight: Vec<i8>,
    /// Weight zero point of each output channel: the products are
    /// `(w - weight_zero[o]) * (x - z_x)` (0 for symmetric weights; uint8
    /// weights are held as `w - 128` with their zero point shifted alike).
    pub weight_zero: Vec<i32>,
    pub bias: Vec<i32>,
    /// R1 of each output channel.
    pub requant: Vec<Requant>,
}

impl ConvOp {
    fn k(&self) -> usize {
        self.c_in / self.groups * self.kh * self.kw
    }

    /// `col[k][p] = x_q - z_x` of input `(c, ky, kx)` under output pixel `p`
    /// of group `grp`, 0 in the padding.
    fn im2col(&self, x: &[i8], grp: usize, col: &mut [i16]) {
        let cg = self.c_in / self.groups;
        let p_len = self.out_h * self.out_w;
        let mut row = 0;
        for c in grp * cg..(grp + 1) * cg {
            let plane = &x[c * self.h * self.w..][..self.h * self.w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let dst = &mut col[row * p_len..][..p_len];
                    row += 1;
                    for oy in 0..self.out_h {
                        let iy = (oy * self.stride.0 + ky * self.dilation.0) as isize
                            - self.pad_begin.0 as isize;
                        let drow = &mut dst[oy * self.out_w..][..self.out_w];
                        if iy < 0 || iy >= self.h as isize {
                            drow.fill(0);
                            continue;
                        }
                        let src = &plane[iy as usize * self.w..][..self.w];
                        for (ox, d) in drow.iter_mut().enumerate() {
                            let ix = (ox * self.stride.1 + kx * self.dilation.1) as isize
                                - self.pad_begin.1 as isize;
                            *d = if ix < 0 || ix >= self.w as isize {
                                0
                            } else {
                                (src[ix as usize] as i32 - self.z_x) as i16
                            };
                        }
                    }
                }
            }
        }
    }

    /// Adds the bias to the int32 accumulators of output channel `o`,
    /// checks the int32 range (S10.2) and requantizes into `y`.
    fn finish(&self, node: &str, o: usize, acc: &[i32], y: &mut [i8]) -> Result<()> {
        let (b, rq) = (self.bias[o] as i64, &self.requant[o]);
        for (out, &a) in y.iter_mut().zip(acc) {
            let total = a as i64 + b;
            // S10.2: the accumulator must be an int32.
            let Ok(total) = i32::try_from(total) else {
                bail!(
                    Onnx,
                    "node '{node}': accumulator {total} of output channel {o} overflows int32"
                );
            };
            *out = rq.apply(total);
        }
        Ok(())
    }

    /// Whether every group holds one input channel (`group == c_in > 1`).
    fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c_in
    }

    /// Output plane `o` of a depthwise convolution from its input plane `x`
    /// (`h x w`): for each kernel tap, `acc += w * (x - z_x)` over the run of
    /// output columns whose input lies inside the image (the padding adds
    /// 0), row by row.
    fn depthwise_plane(
        &self,
        node: &str,
        o: usize,
        x: &[i8],
        y: &mut [i8],
        acc: &mut Vec<i32>,
    ) -> Result<()> {
        acc.clear();
        acc.resize(self.out_h * self.out_w, 0);
        let kk = self.kh * self.kw;
        for ky in 0..self.kh {
            let row_off = (ky * self.dilation.0) as isize - self.pad_begin.0 as isize;
            let rows = valid(row_off, self.stride.0, self.h, self.out_h);
            for kx in 0..self.kw {
                let wv = self.weight[o * kk + ky * self.kw + kx] as i32 - self.weight_zero[o];
                let col_off = (kx * self.dilation.1) as isize - self.pad_begin.1 as isize;
                let cols = valid(col_off, self.stride.1, self.w, self.out_w);
                if wv == 0 || cols.is_empty() {
                    continue;
                }
                // Input column of output column `cols.start`.
                let x0 = (cols.start * self.stride.1) as isize + col_off;
                for oy in rows.clone() {
                    let iy = ((oy * self.stride.0) as isize + row_off) as usize;
                    let src = &x[iy * self.w..][..self.w][x0 as usize..];
                    let arow = &mut acc[oy * self.out_w..][cols.clone()];
                    if self.stride.1 == 1 {
                        for (a, &v) in arow.iter_mut().zip(src) {
                            *a += wv * (v as i32 - self.z_x);
                        }
                    } else {
                        for (a, &v) in arow.iter_mut().zip(src.iter().step_by(self.stride.1)) {
                            *a += wv * (v as i32 - self.z_x);
                        }
                    }
                }
            }
        }
        self.finish(node, o, acc, y)
    }

    /// All images of a depthwise convolution, parallel over (image,
    /// channel) planes.
    fn run_depthwise(&self, node: &str, x: &[i8], y: &mut [i8]) -> Result<()> {
        let (hw, ohw) = (self.h * self.w, self.out_h * self.out_w);
        if ohw == 0 {
            return Ok(());
        }
        let m = self.c_out / self.c_in;
        // About 16K multiply-adds per task: small planes are batched.
        let min_len = (16384 / (ohw * self.kh * self.kw).max(1)).max(1);
        y.par_chunks_mut(ohw)
            .enumerate()
            .with_min_len(min_len)
            .try_for_each_init(Vec::new, |acc, (p, yp)| {
                let (img, o) = (p / self.c_out, p % self.c_out);
                let xp = &x[(img * self.c_in + o / m) * hw..][..hw];
                self.depthwise_plane(node, o, xp, yp, acc)
            })
    }

    /// One image: `x` is `[c_in, h, w]`, `y` is `[c_out, out_h, out_w]`.
    fn image(&self, node: &str, x: &[i8], y: &mut [i8]) -> Result<()> {
        let k = self.k();
        let p_len = self.out_h * self.out_w;
        let og = self.c_out / self.groups;
        let mut col = vec![0i16; k * p_len];
        for grp in 0..self.groups {
            self.im2col(x, grp, &mut col);
            let col = &col;
            y[grp * og * p_len..][..og * p_len]
                .par_chunks_mut(p_len)
                .enumerate()
                .try_for_each(|(o_local, yrow)| {
                    let o = grp * og + o_local;
                    // |x - z_x| <= 255 and |w - z_w| * 255 * k < 2^31 is
                    // checked at validation, so the int32 sum cannot
                    // overflow.
                    let mut acc = vec![0i32; p_len];
                    let zw = self.weight_zero[o];
                    for (kk, &wv) in self.weight[o * k..][..k].iter().enumerate() {
                        let wv = wv as i32 - zw;
                        if wv == 0 {
                            continue;
                        }
                        for (a, &c) in acc.iter_mut().zip(&col[kk * p_len..][..p_len]) {
                            *a += wv * c as i32;
                        }
                    }
                    self.finish(node, o, &acc, yrow)
                })?;
        }
        Ok(())
    }

    pub fn run(&self, node: &str, x: &[i8], n: usize, y: &mut [i8]) -> Result<()> {
        debug_assert!(
            x.len() == n * self.c_in * self.h * self.w
                && y.len() == n * self.c_out * self.out_h * self.out_w
        );
        if self.is_depthwise() {
            self.run_depthwise(node, x, y)
        } else {
            self.run_grouped(node, x, y)
        }
    }

    /// The general path: per image, im2col and a product per group.
    fn run_grouped(&self, node: &str, x: &[i8], y: &mut [i8]) -> Result<()> {
        let (xi, yi) = (
            self.c_in * self.h * self.w,
            self.c_out * self.out_h * self.out_w,
        );
        y.par_chunks_mut(yi)
            .zip(x.par_chunks(xi))
            .try_for_each(|(y, x)| self.image(node, x, y))
    }
}

/// The output positions `o < out` whose input `o * stride + offset` lies in
/// `0..len` (a contiguous range).
fn valid(offset: isize, stride: usize, len: usize, out: usize) -> std::ops::Range<usize> {
    let s = stride as isize;
    let lo = if offset < 0 { (-offset + s - 1) / s } else { 0 };
    let hi = (len as isize - offset + s - 1).div_euclid(s);
    let lo = (lo as usize).min(out);
    lo..(hi.max(0) as usize).clamp(lo, out)
}

/// Max pooling on int8 (S6): padding never wins (ONNX semantics).
#[derive(Clone, Debug)]
pub struct PoolOp {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    pub pad_begin: (usize, usize),
    pub out_h: usize,
    pub out_w: usize,
}

impl PoolOp {
    pub fn run(&self, x: &[i8], n: usize, y: &mut [i8]) {
        let (hw, ohw) = (self.h * self.w, self.out_h * self.out_w);
        debug_assert!(x.len() == n * self.c * hw && y.len() == n * self.c * ohw);
        y.par_chunks_mut(ohw)
            .zip(x.par_chunks(hw))
            .for_each(|(yp, xp)| {
                for oy in 0..self.out_h {
                    for ox in 0..self.out_w {
                        let mut m = i8::MIN;
                        let mut any = false;
                        for ky in 0..self.kh {
                            let iy = (oy * self.stride.0 + ky * self.dilation.0) as isize
                                - self.pad_begin.0 as isize;
                            if iy < 0 || iy >= self.h as isize {
                                continue;
                            }
                            for kx in 0..self.kw {
                                let ix = (ox * self.stride.1 + kx * self.dilation.1) as isize
                                    - self.pad_begin.1 as isize;
                                if ix < 0 || ix >= self.w as isize {
                                    continue;
                                }
                                m = m.max(xp[iy as usize * self.w + ix as usize]);
                                any = true;
                            }
                        }
                        // A window entirely in the padding is rejected at
                        // validation; keep a defined value regardless.
                        yp[oy * self.out_w + ox] = if any { m } else { i8::MIN };
                    }
                }
            });
    }
}

/// QLinearGlobalAveragePool (S6) over `planes` planes of `hw` values.
pub fn gap(
    x: &[i8],
    hw: usize,
    z_in: i32,
    rq: &Requant,
    y: &mut [i8],
    per_image: usize,
) -> Result<()> {
    y.par_chunks_mut(per_image)
        .zip(x.par_chunks(per_image * hw))
        .try_for_each(|(y, x)| pool::global_avg_pool(x, hw, z_in, rq, y))
}

/// QLinearAveragePool (S6) over `n` images; `g` describes one image
/// (`g.n == 1`).
pub fn avg_pool(
    g: &pool::AvgPool2dGeom,
    q: &[f32; 2],
    z_in: i32,
    z_out: i32,
    x: &[i8],
    y: &mut [i8],
) -> Result<()> {
    y.par_chunks_mut(g.y_len())
        .zip(x.par_chunks(g.x_len()))
        .try_for_each(|(y, x)| pool::avg_pool2d(g, x, q[0], z_in, q[1], z_out, y))
}

/// One input of a QLinearConcat: its values per image and, unless its
/// quantization equals the output's, the 256-entry requantization table.
#[derive(Clone, Debug)]
pub struct ConcatInput {
    pub per_image: usize,
    pub table: Option<Vec<i8>>,
}

impl ConcatInput {
    /// The table of ONNX Runtime's QLinearConcat (S12): entry `q` is
    /// `clamp(RNE(fl32(s_x * (q - z_x)) / s_y) + z_y)`, QuantizeLinear of
    /// the dequantized input; `None` (a copy) when `(s_x, z_x) == (s_y,
    /// z_y)`.
    pub fn new(per_image: usize, s_x: f32, z_x: i32, s_y: f32, z_y: i32) -> Self {
        let table = (s_x != s_y || z_x != z_y).then(|| {
            (-128..=127)
                .map(|q| quantize(dequantize(q, s_x, z_x), s_y, z_y, ACT_QMIN, ACT_QMAX) as i8)
                .collect()
        });
        ConcatInput { per_image, table }
    }
}

/// QLinearConcat along the channel axis of `n` images: each image's output
/// is its slices of the inputs in order, each through its table.
pub fn concat(parts: &[(&ConcatInput, &[i8])], y: &mut [i8], n: usize) {
    let per_image: usize = parts.iter().map(|(p, _)| p.per_image).sum();
    y.par_chunks_mut(per_image)
        .take(n)
        .enumerate()
        .for_each(|(i, out)| {
            let mut at = 0;
            for (p, x) in parts {
                let src = &x[i * p.per_image..(i + 1) * p.per_image];
                let dst = &mut out[at..at + p.per_image];
                match &p.table {
                    None => dst.copy_from_slice(src),
                    Some(t) => {
                        for (d, &q) in dst.iter_mut().zip(src) {
                            *d = t[(q as i32 + 128) as usize];
                        }
                    }
                }
                at += p.per_image;
            }
        });
}

/// QLinearAdd (S7), element-wise.
pub fn add(rq: &AddRequant, a: &[i8], b: &[i8], y: &mut [i8]) -> Result<()> {
    const CHUNK: usize = 1 << 14;
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .try_for_each(|(y, (a, b))| rq.apply_slice(a, b, y))
}

/// QuantizeLinear at the graph input (S8): `clamp(RNE(x / s) + z)`.
pub fn quantize_input(x: &[f32], scale: f32, zero_point: i32, y: &mut [i8]) {
    y.par_iter_mut().zip(x.par_iter()).for_each(|(q, &v)| {
        *q = quantize(v, scale, zero_point, ACT_QMIN, ACT_QMAX) as i8;
    });
}

/// DequantizeLinear at the graph output: `(q - z) * s`.
pub fn dequantize_output(x: &[i8], scale: f32, zero_point: i32, y: &mut [f32]) {
    y.par_iter_mut().zip(x.par_iter()).for_each(|(v, &q)| {
        *v = dequantize(q as i32, scale, zero_point);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// im2col + channel loop equals a direct convolution, with groups,
    /// strides, dilations and asymmetric padding.
    #[test]
    fn conv_matches_direct_loops() {
        let mut rng = Rng::new(4);
        for case in 0..20 {
            let groups = 1 + rng.below(3) as usize;
            let c_in = groups * (1 + rng.below(3) as usize);
            let c_out = groups * (1 + rng.below(3) as usize);
            let (h, w) = (3 + rng.below(6) as usize, 3 + rng.below(6) as usize);
            let (kh, kw) = (1 + rng.below(3) as usize, 1 + rng.below(3) as usize);
            let stride = (1 + rng.below(2) as usize, 1 + rng.below(3) as usize);
            let dilation = (1 + rng.below(2) as usize, 1 + rng.below(2) as usize);
            let pad = [0; 4].map(|_| rng.below(3) as usize);
            let eff = (dilation.0 * (kh - 1) + 1, dilation.1 * (kw - 1) + 1);
            if h + pad[0] + pad[2] < eff.0 || w + pad[1] + pad[3] < eff.1 {
                continue;
            }
            let out_h = (h + pad[0] + pad[2] - eff.0) / stride.0 + 1;
            let out_w = (w + pad[1] + pad[3] - eff.1) / stride.1 + 1;
            let k = c_in / groups * kh * kw;
            let n = 2;
            let z_x = rng.below(256) as i32 - 128;
            // Half the cases with nonzero weight zero points (asymmetric or
            // uint8 weights).
            let zw_range = if case % 2 == 0 { 1 } else { 41 };
            let op = ConvOp {
                c_in,
                h,
                w,
                c_out,
                kh,
                kw,
                stride,
                pad_begin: (pad[0], pad[1]),
                dilation,
                groups,
                out_h,
                out_w,
                z_x,
                weight: (0..c_out * k)
                    .map(|_| (rng.below(255) as i32 - 127) as i8)
                    .collect(),
                weight_zero: (0..c_out)
                    .map(|_| rng.below(zw_range) as i32 - zw_range as i32 / 2)
                    .collect(),
                bias: (0..c_out).map(|_| rng.below(2001) as i32 - 1000).collect(),
                requant: (0..c_out)
                    .map(|_| Requant::new(0.001 + 0.01 * rng.uniform(), 3, -128, 127).unwrap())
                    .collect(),
            };
            let x: Vec<i8> = (0..n * c_in * h * w)
                .map(|_| rng.below(256) as u8 as i8)
                .collect();
            let mut y = vec![0i8; n * c_out * out_h * out_w];
            op.run("t", &x, n, &mut y).unwrap();
            let (cg, og) = (c_in / groups, c_out / groups);
            for img in 0..n {
                for o in 0..c_out {
                    let grp = o / og;
                    for oy in 0..out_h {
                        for ox in 0..out_w {
                            let mut acc = op.bias[o] as i64;
                            for ci in 0..cg {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy = (oy * stride.0 + ky * dilation.0) as i64
                                            - pad[0] as i64;
                                        let ix = (ox * stride.1 + kx * dilation.1) as i64
                                            - pad[1] as i64;
                                        if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                            continue;
                                        }
                                        let c = grp * cg + ci;
                                        let xv = x[((img * c_in + c) * h + iy as usize) * w
                                            + ix as usize];
                                        let wv = op.weight[((o * cg + ci) * kh + ky) * kw + kx]
                                            as i64
                                            - op.weight_zero[o] as i64;
                                        acc += (xv as i64 - z_x as i64) * wv;
                                    }
                                }
                            }
                            let want = op.requant[o].apply(acc as i32);
                            let got = y[((img * c_out + o) * out_h + oy) * out_w + ox];
                            assert_eq!(
                                got, want,
                                "case {case}: image {img} channel {o} ({oy}, {ox})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The direct depthwise path (group == C_in) gives the same bytes as the
    /// im2col path, on random shapes: multipliers 1-3, kernels 1x1 to 7x7,
    /// strides 1-3, dilations, asymmetric padding (some taps only ever see
    /// padding), zero weights, and a case whose accumulator overflows int32
    /// (both paths must report it).
    #[test]
    fn depthwise_matches_the_grouped_path() {
        let mut rng = Rng::new(9);
        let mut case = 0;
        while case < 60 {
            let c_in = 2 + rng.below(5) as usize;
            let m = 1 + rng.below(3) as usize;
            let k = [1, 3, 5, 7][rng.below(4) as usize];
            let (kh, kw) = (k, [k, 1, 3][rng.below(3) as usize]);
            let (h, w) = (1 + rng.below(15) as usize, 1 + rng.below(15) as usize);
            let stride = (1 + rng.below(3) as usize, 1 + rng.below(3) as usize);
            let dilation = (1 + rng.below(2) as usize, 1 + rng.below(2) as usize);
            // The last case has no padding, so output (0, 0) reads the input.
            let last = case == 59;
            let pad = [0; 4].map(|_| if last { 0 } else { rng.below(4) as usize });
            let eff = (dilation.0 * (kh - 1) + 1, dilation.1 * (kw - 1) + 1);
            if h + pad[0] + pad[2] < eff.0 || w + pad[1] + pad[3] < eff.1 {
                continue;
            }
            case += 1;
            let out_h = (h + pad[0] + pad[2] - eff.0) / stride.0 + 1;
            let out_w = (w + pad[1] + pad[3] - eff.1) / stride.1 + 1;
            let c_out = c_in * m;
            let n = 1 + rng.below(3) as usize;
            let big = last;
            let mut op = ConvOp {
                c_in,
                h,
                w,
                c_out,
                kh,
                kw,
                stride,
                pad_begin: (pad[0], pad[1]),
                dilation,
                groups: c_in,
                out_h,
                out_w,
                z_x: rng.below(256) as i32 - 128,
                weight: (0..c_out * kh * kw)
                    .map(|_| {
                        if rng.below(8) == 0 {
                            0
                        } else {
                            (rng.below(255) as i32 - 127) as i8
                        }
                    })
                    .collect(),
                weight_zero: (0..c_out)
                    .map(|_| {
                        if case % 2 == 0 {
                            0
                        } else {
                            rng.below(21) as i32 - 10
                        }
                    })
                    .collect(),
                bias: (0..c_out)
                    .map(|_| {
                        if big {
                            i32::MAX - 10
                        } else {
                            rng.below(2001) as i32 - 1000
                        }
                    })
                    .collect(),
                requant: (0..c_out)
                    .map(|_| Requant::new(0.001 + 0.01 * rng.uniform(), 3, -128, 127).unwrap())
                    .collect(),
            };
            assert!(op.is_depthwise());
            let mut x: Vec<i8> = (0..n * c_in * h * w)
                .map(|_| rng.below(256) as u8 as i8)
                .collect();
            if big {
                // Every product positive: bias + acc leaves the int32 range.
                op.z_x = -128;
                op.weight.iter_mut().for_each(|v| *v = 100);
                x.iter_mut().for_each(|v| *v = 127);
            }
            let (mut got, mut want) = (
                vec![0i8; n * c_out * out_h * out_w],
                vec![0i8; n * c_out * out_h * out_w],
            );
            let a = op.run("t", &x, n, &mut got);
            let b = op.run_grouped("t", &x, &mut want);
            assert_eq!(a.is_ok(), b.is_ok(), "case {case}: {a:?} vs {b:?}");
            assert_eq!(a.is_err(), big, "case {case}: {a:?}");
            if a.is_ok() {
                assert_eq!(got, want, "case {case}: {op:?}");
            }
        }
    }

    #[test]
    fn max_pool_ignores_padding() {
        let op = PoolOp {
            c: 1,
            h: 2,
            w: 2,
            kh: 3,
            kw: 3,
            stride: (2, 2),
            dilation: (1, 1),
            pad_begin: (1, 1),
            out_h: 1,
            out_w: 1,
        };
        let mut y = [0i8; 1];
        op.run(&[-100, -90, -128, -120], 1, &mut y);
        assert_eq!(y, [-90]);
    }

    /// QLinearConcat: equal parameters copy; otherwise every table entry
    /// is the nearest output value of the dequantized input, computed here
    /// in f64 (exact halves do not occur with these scales); images keep
    /// their slices in input order.
    #[test]
    fn concat_requantizes_by_table_and_copies_equal_parameters() {
        assert!(ConcatInput::new(4, 0.05, 3, 0.05, 3).table.is_none());
        let (s_x, z_x, s_y, z_y) = (0.0371f32, -7, 0.0513f32, 11);
        let p = ConcatInput::new(2, s_x, z_x, s_y, z_y);
        let t = p.table.as_ref().unwrap();
        for q in -128i32..=127 {
            let want = ((q - z_x) as f64 * s_x as f64 / s_y as f64).round() + z_y as f64;
            let want = want.clamp(-128.0, 127.0) as i8;
            assert_eq!(t[(q + 128) as usize], want, "q = {q}");
        }
        let copy = ConcatInput::new(1, 0.1, 0, 0.1, 0);
        // Two images: [a0 a1 | b0], [a2 a3 | b1].
        let (a, b) = ([-128i8, 0, 5, 127], [9i8, -9]);
        let mut y = [0i8; 6];
        concat(&[(&p, &a), (&copy, &b)], &mut y, 2);
        let tq = |q: i8| t[(q as i32 + 128) as usize];
        assert_eq!(y, [tq(-128), tq(0), 9, tq(5), tq(127), -9]);
    }
}
