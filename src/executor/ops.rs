//! The integer kernels. Everything between the graph's QuantizeLinear and
//! DequantizeLinear is integer arithmetic: int8 x int8 products summed in
//! int32, the bias added and range-checked in int64, and requantization by
//! the spec's integer routines in `crate::quant` ([`Requant`] for R1,
//! [`AddRequant`] for S7, [`pool::global_avg_pool`] for S6). Float appears
//! only at the two graph boundaries, where the data is float by definition.
//! Each kernel is rayon-parallel over the images of the batch and, inside an
//! image, over channels.

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
                    // |x - z_x| <= 255 and |w| <= 128 with k bounded at
                    // validation, so the int32 sum cannot overflow.
                    let mut acc = vec![0i32; p_len];
                    for (kk, &wv) in self.weight[o * k..][..k].iter().enumerate() {
                        if wv == 0 {
                            continue;
                        }
                        let wv = wv as i32;
                        for (a, &c) in acc.iter_mut().zip(&col[kk * p_len..][..p_len]) {
                            *a += wv * c as i32;
                        }
                    }
                    let (b, rq) = (self.bias[o] as i64, &self.requant[o]);
                    for (out, &a) in yrow.iter_mut().zip(&acc) {
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
                })?;
        }
        Ok(())
    }

    pub fn run(&self, node: &str, x: &[i8], n: usize, y: &mut [i8]) -> Result<()> {
        let (xi, yi) = (
            self.c_in * self.h * self.w,
            self.c_out * self.out_h * self.out_w,
        );
        debug_assert!(x.len() == n * xi && y.len() == n * yi);
        y.par_chunks_mut(yi)
            .zip(x.par_chunks(xi))
            .try_for_each(|(y, x)| self.image(node, x, y))
    }
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
                            let iy = (oy * self.stride.0 + ky) as isize - self.pad_begin.0 as isize;
                            if iy < 0 || iy >= self.h as isize {
                                continue;
                            }
                            for kx in 0..self.kw {
                                let ix =
                                    (ox * self.stride.1 + kx) as isize - self.pad_begin.1 as isize;
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
                                        let wv = op.weight[((o * cg + ci) * kh + ky) * kw + kx];
                                        acc += (xv as i64 - z_x as i64) * wv as i64;
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

    #[test]
    fn max_pool_ignores_padding() {
        let op = PoolOp {
            c: 1,
            h: 2,
            w: 2,
            kh: 3,
            kw: 3,
            stride: (2, 2),
            pad_begin: (1, 1),
            out_h: 1,
            out_w: 1,
        };
        let mut y = [0i8; 1];
        op.run(&[-100, -90, -128, -120], 1, &mut y);
        assert_eq!(y, [-90]);
    }
}
