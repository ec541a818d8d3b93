//! The integer kernels. Everything between the graph's QuantizeLinear and
//! DequantizeLinear is integer arithmetic: int8 x int8 products summed in
//! int32, the bias added and range-checked in int64, and requantization by
//! the spec's integer routines in `crate::quant` ([`Requant`] for R1,
//! [`AddRequant`] for S7, [`pool::global_avg_pool`] for S6). Float appears
//! only at the two graph boundaries, where the data is float by definition.
//! Each kernel is rayon-parallel over the images of the batch and, inside an
//! image, over channels. QLinearConv runs on the packed int8 GEMM of
//! [`super::gemm`] over panels of output pixels of the whole batch (the
//! identities that make its unsigned-activation product the spec's
//! accumulator, and the plan-time bound that replaces S10.2's check where it
//! cannot fire, are in docs/INT8.md, "Fast convolution"). A depthwise
//! QLinearConv (`group == C_in`, one input channel per group) runs a direct
//! loop per output channel over the whole batch instead.

use super::gemm::{block_product, requant_row, Isa, PackedWeights, KG, MR, PX};
use crate::quant::fake::{dequantize, quantize};
use crate::quant::params::{ACT_QMAX, ACT_QMIN};
use crate::quant::{pool, AddRequant, Requant};
use crate::{bail, Result};
use rayon::prelude::*;
use std::sync::OnceLock;

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
    /// Weight zero point of each output channel (`[c_out]`, 0 for
    /// symmetric weights): the accumulator is
    /// `sum (w - weight_zero[o]) * (x - z_x) + bias[o]`.
    pub weight_zero: Vec<i32>,
    pub bias: Vec<i32>,
    /// R1 of each output channel.
    pub requant: Vec<Requant>,
    /// Packed weights and per-channel constants, derived from the fields
    /// above by [`ConvOp::prepare`] (at plan time, or on first use); leave
    /// it `Default::default()` when building a `ConvOp`.
    pub prepared: OnceLock<Prepared>,
}

/// What a [`ConvOp`] derives from its weights once.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The GEMM path's weights, one packed matrix per group (`None` for
    /// depthwise convolutions, which run the direct loop).
    packed: Option<PackedWeights>,
    /// `bias[o] - (128 + z_x) * sum_k w[o][k]`: the constant that turns the
    /// GEMM's `sum w * (x + 128)` into `sum w * (x - z_x) + bias`.
    bias_u8: Vec<i64>,
    /// Whether `acc + bias` of channel `o` fits int32 for every possible
    /// input (the bound of [`ConvOp::prepare`]), so that S10.2's check
    /// cannot fail and is skipped.
    safe: Vec<bool>,
    /// Whether some weight zero point is not 0.
    any_zw: bool,
    /// Whether every channel's `sum (w - z_w) * (x - z_x)` (without bias)
    /// fits int32 for every input, so the depthwise loop may accumulate in
    /// int32.
    dw_i32: bool,
}

/// Largest padded, phase-split input of a convolution, per image (the
/// per-tensor limit of validation).
const MAX_PADDED: usize = 1 << 26;

/// A raw pointer to the output that tasks writing disjoint parts share.
#[derive(Clone, Copy)]
struct OutPtr(*mut i8);
// SAFETY: every task writes a distinct set of (channel, pixel) positions.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `i` values in (a method, so closures capture the
    /// whole `Sync` wrapper).
    fn at(self, i: usize) -> *mut i8 {
        self.0.wrapping_add(i)
    }
}

/// Per-thread buffers of the GEMM path.
struct Scratch {
    panel: Vec<u8>,
    s: Box<[[i32; PX]; MR]>,
    d: [i32; PX],
    acc: [i32; PX],
    out: [i8; PX],
}

impl ConvOp {
    fn k(&self) -> usize {
        self.c_in / self.groups * self.kh * self.kw
    }

    /// Packs the weights and derives the per-channel constants (once).
    ///
    /// The overflow bound: with `d = x - z_x` in `[-128 - z_x, 127 - z_x]`
    /// (padding gives `d = 0`, inside that range) and `c_k = w_k - z_w`,
    /// `acc + bias` lies in `[bias + sum_k min(c_k d_lo, c_k d_hi), bias +
    /// sum_k max(c_k d_lo, c_k d_hi)]`, and both ends are reached by some
    /// input. A channel whose interval is inside int32 can never fail
    /// S10.2's check; the others are checked value by value in int64.
    pub fn prepare(&self) -> &Prepared {
        self.prepared.get_or_init(|| {
            let k = self.k();
            let (d_lo, d_hi) = (
                ACT_QMIN as i64 - self.z_x as i64,
                ACT_QMAX as i64 - self.z_x as i64,
            );
            let (i32_lo, i32_hi) = (i32::MIN as i64, i32::MAX as i64);
            let mut p = Prepared {
                packed: None,
                bias_u8: Vec::with_capacity(self.c_out),
                safe: Vec::with_capacity(self.c_out),
                any_zw: self.weight_zero.iter().any(|&z| z != 0),
                dw_i32: true,
            };
            for o in 0..self.c_out {
                let zw = self.weight_zero[o] as i64;
                let (mut t_lo, mut t_hi, mut sum) = (0i64, 0i64, 0i64);
                for &w in &self.weight[o * k..][..k] {
                    let c = w as i64 - zw;
                    t_lo += (c * d_lo).min(c * d_hi);
                    t_hi += (c * d_lo).max(c * d_hi);
                    sum += w as i64;
                }
                let b = self.bias[o] as i64;
                p.safe.push(t_lo + b >= i32_lo && t_hi + b <= i32_hi);
                p.dw_i32 &= t_lo >= i32_lo && t_hi <= i32_hi;
                p.bias_u8.push(b - (128 + self.z_x as i64) * sum);
            }
            if !self.is_depthwise() {
                let og = self.c_out / self.groups;
                p.packed = Some(PackedWeights::new(&self.weight, self.groups, og, k));
            }
            p
        })
    }

    /// Checks that the fields agree with each other and with the data, so
    /// that the kernels' indexing is in bounds.
    fn check(&self, node: &str, x: &[i8], n: usize, y: &[i8]) -> Result<()> {
        let k = self.k();
        let ok = self.groups >= 1
            && self.c_in.is_multiple_of(self.groups)
            && self.c_out.is_multiple_of(self.groups)
            && self.weight.len() == self.c_out * k
            && self.weight_zero.len() == self.c_out
            && self.bias.len() == self.c_out
            && self.requant.len() == self.c_out
            && k <= 65_000
            && x.len() == n * self.c_in * self.h * self.w
            && y.len() == n * self.c_out * self.out_h * self.out_w
            && self.stride.0.min(self.stride.1) >= 1
            && self.kh.min(self.kw) >= 1;
        if !ok {
            bail!(
                Onnx,
                "node '{node}' (QLinearConv): inconsistent convolution parameters or data sizes"
            );
        }
        if self.out_h > 0 && self.out_w > 0 {
            // The padded, phase-split input both paths read (a huge
            // dilation or stride with huge pads could make it enormous).
            let (_, _, plane) = self.wide_geometry();
            let size = (self.c_in * self.stride.0 * self.stride.1).checked_mul(plane);
            if size.is_none_or(|v| v > MAX_PADDED) {
                bail!(
                    Onnx,
                    "node '{node}' (QLinearConv): with strides {:?}, dilations {:?} and pads the \
                     padded input has more than {MAX_PADDED} values per image, which the int8 \
                     executor does not support",
                    self.stride,
                    self.dilation
                );
            }
        }
        Ok(())
    }

    /// The GEMM path's view of the input: every input plane padded (with
    /// `z_x`), shifted to bytes (`x + 128`) and split into `s0 * s1` stride
    /// phases, `phase[rp][cp][r][c] = padded[s0 r + rp][s1 c + cp]`. Output
    /// pixels are indexed on a wide grid of `out_h x w_ph` per image: with
    /// it, tap `(ky, kx)` of every pixel is one phase plane read at the
    /// pixel's own index plus a constant shift, so a panel row is a
    /// contiguous copy. Columns `ox >= out_w` of the wide grid are computed
    /// and dropped.
    fn phase_input(&self, x: &[i8], n: usize) -> Phases {
        let (s0, s1) = self.stride;
        let (d0, d1) = self.dilation;
        let (rows, w_ph, plane) = self.wide_geometry();
        let zu = (self.z_x + 128) as u8;
        let (h, w) = (self.h, self.w);
        let mut data = vec![zu; n * self.c_in * s0 * s1 * plane];
        data.par_chunks_mut(s0 * s1 * plane)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (ph, dst) in dst.chunks_exact_mut(plane).enumerate() {
                    let (rp, cp) = (ph / s1, ph % s1);
                    // Phase columns c whose input column s1 c + cp - pad1
                    // lies in the image.
                    let off = cp as isize - self.pad_begin.1 as isize;
                    let cols = valid(off, s1, w, w_ph);
                    for r in 0..rows {
                        let iy = (s0 * r + rp) as isize - self.pad_begin.0 as isize;
                        if iy < 0 || iy >= h as isize || cols.is_empty() {
                            continue;
                        }
                        let srow = &src[iy as usize * w..][..w];
                        let srow = &srow[(cols.start as isize * s1 as isize + off) as usize..];
                        let drow = &mut dst[r * w_ph..][cols.clone()];
                        if s1 == 1 {
                            for (d, &v) in drow.iter_mut().zip(srow) {
                                *d = v as u8 ^ 0x80;
                            }
                        } else {
                            for (d, &v) in drow.iter_mut().zip(srow.iter().step_by(s1)) {
                                *d = v as u8 ^ 0x80;
                            }
                        }
                    }
                }
            });
        // Where tap k of a pixel is read: its phase plane and shift.
        let taps = (0..self.c_in / self.groups)
            .flat_map(|ci| {
                (0..self.kh).flat_map(move |ky| {
                    (0..self.kw).map(move |kx| {
                        let ph = (ky * d0 % s0) * s1 + kx * d1 % s1;
                        (
                            (ci * s0 * s1 + ph) * plane,
                            ky * d0 / s0 * w_ph + kx * d1 / s1,
                        )
                    })
                })
            })
            .map(|(a, b)| a + b)
            .collect();
        Phases {
            data,
            w_ph,
            per_image: self.c_in * s0 * s1 * plane,
            per_group: self.c_in / self.groups * s0 * s1 * plane,
            taps,
        }
    }

    /// Packs wide-grid pixels `g0..g0 + len` of the whole batch (image
    /// after image) of group `grp` into `panel` (`[K4][PX][4]`, see
    /// [`super::gemm`]), 0 past `K` and past `len`.
    fn pack_panel(&self, ph: &Phases, grp: usize, g0: usize, len: usize, panel: &mut [u8]) {
        let p_wide = self.out_h * ph.w_ph;
        // The panel's runs of pixels inside one image: (first value of
        // the image's group, wide index, position, length).
        let mut segs = Vec::with_capacity(4);
        let mut pos = 0;
        while pos < len {
            let (img, p) = ((g0 + pos) / p_wide, (g0 + pos) % p_wide);
            let run = (len - pos).min(p_wide - p);
            segs.push((img * ph.per_image + grp * ph.per_group, p, pos, run));
            pos += run;
        }
        let zero = [0u8; PX];
        let mut rows = [[0u8; PX]; KG];
        let k = self.k();
        for (q, dst) in panel.chunks_exact_mut(PX * KG).enumerate() {
            let mut src: [&[u8]; KG] = [&zero; KG];
            if let [(base, p, _, PX)] = segs[..] {
                // One image, a whole panel: read the phase planes directly.
                for (j, s) in src.iter_mut().enumerate() {
                    if let Some(&t) = ph.taps.get(q * KG + j).filter(|_| q * KG + j < k) {
                        *s = &ph.data[base + t + p..][..PX];
                    }
                }
            } else {
                for (j, row) in rows.iter_mut().enumerate() {
                    *row = [0; PX];
                    if q * KG + j >= k {
                        continue;
                    }
                    let t = ph.taps[q * KG + j];
                    for &(base, p, pos, run) in &segs {
                        row[pos..pos + run].copy_from_slice(&ph.data[base + t + p..][..run]);
                    }
                }
                src = [&rows[0], &rows[1], &rows[2], &rows[3]];
            }
            interleave4(src, dst);
        }
    }

    /// Whether every group holds one input channel (`group == c_in > 1`).
    fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c_in
    }

    /// Adds the bias to the accumulators of output channel `o` in int64,
    /// checks the int32 range (S10.2) and requantizes into `y`: the path
    /// for channels whose bound does not rule out an overflow.
    fn finish_checked<A: Copy + Into<i64>>(
        &self,
        node: &str,
        o: usize,
        offset: i64,
        acc: &[A],
        y: &mut [i8],
    ) -> Result<()> {
        let rq = &self.requant[o];
        for (out, &a) in y.iter_mut().zip(acc) {
            let total = a.into() + offset;
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

    /// Output plane `o` of a depthwise convolution from its input plane `x`
    /// (`h x w`) into `acc`: for each kernel tap, `acc += (w - z_w) * (x -
    /// z_x)` over the run of output columns whose input lies inside the
    /// image (the padding adds 0), row by row.
    #[inline(always)]
    fn depthwise_acc<A>(&self, o: usize, x: &[i8], acc: &mut [A])
    where
        A: Copy + Default + std::ops::AddAssign + std::ops::Mul<Output = A> + From<i32>,
    {
        acc.fill(A::default());
        let kk = self.kh * self.kw;
        let (zx, zw) = (self.z_x, self.weight_zero[o]);
        for ky in 0..self.kh {
            let row_off = (ky * self.dilation.0) as isize - self.pad_begin.0 as isize;
            let rows = valid(row_off, self.stride.0, self.h, self.out_h);
            for kx in 0..self.kw {
                let wv = self.weight[o * kk + ky * self.kw + kx] as i32 - zw;
                let col_off = (kx * self.dilation.1) as isize - self.pad_begin.1 as isize;
                let cols = valid(col_off, self.stride.1, self.w, self.out_w);
                if wv == 0 || cols.is_empty() {
                    continue;
                }
                let wv = A::from(wv);
                // Input column of output column `cols.start`.
                let x0 = (cols.start * self.stride.1) as isize + col_off;
                for oy in rows.clone() {
                    let iy = ((oy * self.stride.0) as isize + row_off) as usize;
                    let src = &x[iy * self.w..][..self.w][x0 as usize..];
                    let arow = &mut acc[oy * self.out_w..][cols.clone()];
                    if self.stride.1 == 1 {
                        for (a, &v) in arow.iter_mut().zip(src) {
                            *a += wv * A::from(v as i32 - zx);
                        }
                    } else {
                        for (a, &v) in arow.iter_mut().zip(src.iter().step_by(self.stride.1)) {
                            *a += wv * A::from(v as i32 - zx);
                        }
                    }
                }
            }
        }
    }

    /// Rows and columns of the stride phases of the padded input, and the
    /// length of one phase plane: the geometry of the wide output grid
    /// ([`ConvOp::phase_input`]).
    fn wide_geometry(&self) -> (usize, usize, usize) {
        let (s0, s1) = self.stride;
        let (d0, d1) = self.dilation;
        let h_ext = s0 * (self.out_h - 1) + (self.kh - 1) * d0 + 1;
        let w_ext = s1 * (self.out_w - 1) + (self.kw - 1) * d1 + 1;
        let (rows, w_ph) = (h_ext.div_ceil(s0), w_ext.div_ceil(s1));
        (rows, w_ph, rows * w_ph + (self.kw - 1) * d1 / s1)
    }

    /// Output channel `o` of a depthwise convolution for all `n` images,
    /// on the wide grid (see [`ConvOp::phase_input`]): each image's input
    /// plane (channel `c` of `x`) as `x - z_x` (0 in the padding), split
    /// into stride phases and laid out `[phase][image][plane]` in `buf`,
    /// then for each tap one multiply-add over every image at once,
    /// `acc[i] += (w - z_w) * phase[shift + i]`; image `img`'s wide plane is
    /// `acc[img * plane..][..out_h * w_ph]`. Compiled for the path's vector
    /// width.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_wide(
        &self,
        isa: Isa,
        o: usize,
        c: usize,
        x: &[i8],
        n: usize,
        buf: &mut Vec<i16>,
        acc: &mut Vec<i32>,
    ) {
        #[inline(always)]
        fn body(
            op: &ConvOp,
            o: usize,
            c: usize,
            x: &[i8],
            n: usize,
            buf: &mut Vec<i16>,
            acc: &mut Vec<i32>,
        ) {
            let (s0, s1) = op.stride;
            let (d0, d1) = op.dilation;
            let (rows, w_ph, plane) = op.wide_geometry();
            let hw = op.h * op.w;
            buf.clear();
            buf.resize(s0 * s1 * n * plane, 0);
            for (i, dst) in buf.chunks_exact_mut(plane).enumerate() {
                let (ph, img) = (i / n, i % n);
                let x = &x[(img * op.c_in + c) * hw..][..hw];
                let (rp, cp) = (ph / s1, ph % s1);
                let off = cp as isize - op.pad_begin.1 as isize;
                let cols = valid(off, s1, op.w, w_ph);
                if cols.is_empty() {
                    continue;
                }
                for r in 0..rows {
                    let iy = (s0 * r + rp) as isize - op.pad_begin.0 as isize;
                    if iy < 0 || iy >= op.h as isize {
                        continue;
                    }
                    let src = &x[iy as usize * op.w..][..op.w];
                    let src = &src[(cols.start as isize * s1 as isize + off) as usize..];
                    let drow = &mut dst[r * w_ph..][cols.clone()];
                    if s1 == 1 {
                        for (d, &v) in drow.iter_mut().zip(src) {
                            *d = (v as i32 - op.z_x) as i16;
                        }
                    } else {
                        for (d, &v) in drow.iter_mut().zip(src.iter().step_by(s1)) {
                            *d = (v as i32 - op.z_x) as i16;
                        }
                    }
                }
            }
            // Every image's wide plane; past the last one's nothing is read.
            let len = (n - 1) * plane + op.out_h * w_ph;
            acc.clear();
            acc.resize(n * plane, 0);
            let kk = op.kh * op.kw;
            for ky in 0..op.kh {
                for kx in 0..op.kw {
                    let wv = op.weight[o * kk + ky * op.kw + kx] as i32 - op.weight_zero[o];
                    if wv == 0 {
                        continue;
                    }
                    let ph = (ky * d0 % s0) * s1 + kx * d1 % s1;
                    let shift = ky * d0 / s0 * w_ph + kx * d1 / s1;
                    let src = &buf[ph * n * plane + shift..][..len];
                    for (a, &v) in acc[..len].iter_mut().zip(src) {
                        *a += wv * v as i32;
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw")]
            unsafe fn avx512(
                op: &ConvOp,
                o: usize,
                c: usize,
                x: &[i8],
                n: usize,
                b: &mut Vec<i16>,
                a: &mut Vec<i32>,
            ) {
                body(op, o, c, x, n, b, a)
            }
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(
                op: &ConvOp,
                o: usize,
                c: usize,
                x: &[i8],
                n: usize,
                b: &mut Vec<i16>,
                a: &mut Vec<i32>,
            ) {
                body(op, o, c, x, n, b, a)
            }
            if isa == Isa::Avx512Vnni && isa.is_available() {
                // SAFETY: the features were detected.
                return unsafe { avx512(self, o, c, x, n, buf, acc) };
            }
            if isa == Isa::Avx2 && isa.is_available() {
                // SAFETY: the features were detected.
                return unsafe { avx2(self, o, c, x, n, buf, acc) };
            }
        }
        let _ = isa;
        body(self, o, c, x, n, buf, acc)
    }

    /// All images of a depthwise convolution, parallel over output
    /// channels (each task runs its channel for the whole batch).
    fn run_depthwise(&self, isa: Isa, node: &str, x: &[i8], n: usize, y: &mut [i8]) -> Result<()> {
        let (hw, ohw) = (self.h * self.w, self.out_h * self.out_w);
        if ohw == 0 || n == 0 {
            return Ok(());
        }
        let prep = self.prepare();
        let m = self.c_out / self.c_in;
        let out = OutPtr(y.as_mut_ptr());
        // SAFETY (for the writes below): `check` verified the output
        // length; each task writes only plane `o` of every image.
        let plane_out = |img: usize, o: usize| unsafe {
            std::slice::from_raw_parts_mut(out.at((img * self.c_out + o) * ohw), ohw)
        };
        (0..self.c_out).into_par_iter().try_for_each_init(
            || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |(acc, wide, buf, res), o| {
                let (c, bias) = (o / m, self.bias[o]);
                if !prep.dw_i32 || !prep.safe[o] {
                    // Checked, image by image, in int64 when int32 could
                    // overflow before the bias is added.
                    for img in 0..n {
                        let xp = &x[(img * self.c_in + c) * hw..][..hw];
                        let yp = plane_out(img, o);
                        if prep.dw_i32 {
                            acc.resize(ohw, 0i32);
                            self.depthwise_acc::<i32>(o, xp, acc);
                            self.finish_checked(node, o, bias as i64, acc, yp)?;
                        } else {
                            wide.resize(ohw, 0i64);
                            self.depthwise_acc::<i64>(o, xp, wide);
                            self.finish_checked(node, o, bias as i64, wide, yp)?;
                        }
                    }
                    return Ok(());
                }
                self.depthwise_wide(isa, o, c, x, n, buf, acc);
                // The bound: acc + bias is an int32, so wrapping is exact.
                acc.iter_mut().for_each(|a| *a = a.wrapping_add(bias));
                res.resize(acc.len(), 0i8);
                requant_row(isa, &self.requant[o], acc, res);
                let (_, w_ph, plane) = self.wide_geometry();
                for img in 0..n {
                    let yp = plane_out(img, o);
                    let rows = res[img * plane..].chunks(w_ph);
                    for (yr, r) in yp.chunks_exact_mut(self.out_w).zip(rows) {
                        yr.copy_from_slice(&r[..self.out_w]);
                    }
                }
                Ok(())
            },
        )
    }

    pub fn run(&self, node: &str, x: &[i8], n: usize, y: &mut [i8]) -> Result<()> {
        self.run_with(Isa::best(), node, x, n, y)
    }

    /// [`ConvOp::run`] on a chosen path (tests and benchmarks force each
    /// one; an unavailable path runs the scalar code).
    pub fn run_with(&self, isa: Isa, node: &str, x: &[i8], n: usize, y: &mut [i8]) -> Result<()> {
        self.check(node, x, n, y)?;
        if self.is_depthwise() {
            self.run_depthwise(isa, node, x, n, y)
        } else {
            self.run_gemm(isa, node, x, n, y)
        }
    }

    /// The general path: the whole batch's output pixels (on the wide grid
    /// of [`ConvOp::phase_input`]) in panels of [`PX`], each packed once and
    /// multiplied by every block of [`MR`] output channels of its group;
    /// parallel over (group, panel, block range) tasks.
    fn run_gemm(&self, isa: Isa, node: &str, x: &[i8], n: usize, y: &mut [i8]) -> Result<()> {
        let prep = self.prepare();
        let Some(packed) = prep.packed.as_ref() else {
            bail!(Onnx, "node '{node}': convolution weights were not packed");
        };
        if n * self.out_h * self.out_w == 0 {
            return Ok(());
        }
        let ph = self.phase_input(x, n);
        let (k, p_wide) = (self.k(), self.out_h * ph.w_ph);
        let total = n * p_wide;
        let og = self.c_out / self.groups;
        let panels = total.div_ceil(PX);
        let blocks = packed.blocks;
        // Enough tasks for every thread when the batch has few pixels.
        let want = 4 * rayon::current_num_threads();
        let chunks = want.div_ceil(self.groups * panels).clamp(1, blocks);
        let per_chunk = blocks.div_ceil(chunks);
        let k4 = packed.k4;
        let zu = 128 + self.z_x;
        let out = OutPtr(y.as_mut_ptr());
        (0..self.groups * panels * chunks)
            .into_par_iter()
            .try_for_each_init(
                || Scratch {
                    panel: vec![0u8; k4 * PX * KG],
                    s: Box::new([[0; PX]; MR]),
                    d: [0; PX],
                    acc: [0; PX],
                    out: [0; PX],
                },
                |sc, t| {
                    let (chunk, panel) = (t % chunks, t / chunks % panels);
                    let grp = t / chunks / panels;
                    let g0 = panel * PX;
                    let len = PX.min(total - g0);
                    self.pack_panel(&ph, grp, g0, len, &mut sc.panel);
                    if prep.any_zw {
                        // D[p] = sum_k (x - z_x) = sum_k u - K (128 + z_x).
                        sc.d = [0; PX];
                        for q in sc.panel.chunks_exact(PX * KG) {
                            for (d, u) in sc.d.iter_mut().zip(q.chunks_exact(KG)) {
                                *d += u.iter().map(|&v| v as i32).sum::<i32>();
                            }
                        }
                        sc.d.iter_mut().for_each(|d| *d -= k as i32 * zu);
                    }
                    for b in chunk * per_chunk..((chunk + 1) * per_chunk).min(blocks) {
                        block_product(isa, packed, grp, b, &sc.panel, &mut sc.s);
                        for r in 0..MR.min(og - b * MR) {
                            let o = grp * og + b * MR + r;
                            let (s, d) = (&sc.s[r][..len], &sc.d[..len]);
                            let y = &mut sc.out[..len];
                            let zw = self.weight_zero[o];
                            if prep.safe[o] {
                                // acc = S + bias_u8 - z_w D is an int32 (the
                                // bound), so wrapping int32 arithmetic is exact.
                                let acc = &mut sc.acc[..len];
                                let b = prep.bias_u8[o] as i32;
                                if prep.any_zw {
                                    for ((a, &s), &d) in acc.iter_mut().zip(s).zip(d) {
                                        *a = s.wrapping_add(b).wrapping_sub(zw.wrapping_mul(d));
                                    }
                                } else {
                                    for (a, &s) in acc.iter_mut().zip(s) {
                                        *a = s.wrapping_add(b);
                                    }
                                }
                                requant_row(isa, &self.requant[o], acc, y);
                            } else {
                                // Only the pixels of the output proper: the
                                // wide grid's extra columns may overflow.
                                let wide: Vec<i64> = s
                                    .iter()
                                    .zip(d)
                                    .map(|(&s, &d)| s as i64 - zw as i64 * d as i64)
                                    .collect();
                                self.finish_wide(node, o, prep.bias_u8[o], &wide, g0, ph.w_ph, y)?;
                            }
                            self.scatter(out, o, g0, ph.w_ph, y);
                        }
                    }
                    Ok(())
                },
            )
    }

    /// [`ConvOp::finish_checked`] on a panel row of the wide grid, checking
    /// only the pixels that are outputs.
    #[allow(clippy::too_many_arguments)]
    fn finish_wide(
        &self,
        node: &str,
        o: usize,
        offset: i64,
        acc: &[i64],
        g0: usize,
        w_ph: usize,
        y: &mut [i8],
    ) -> Result<()> {
        for (i, (&a, y)) in acc.iter().zip(y.iter_mut()).enumerate() {
            if (g0 + i) % w_ph < self.out_w {
                self.finish_checked(node, o, offset, &[a], std::slice::from_mut(y))?;
            }
        }
        Ok(())
    }

    /// Writes the requantized row of channel `o` for wide-grid pixels
    /// `g0..g0 + vals.len()` into the output, dropping the extra columns.
    fn scatter(&self, out: OutPtr, o: usize, g0: usize, w_ph: usize, vals: &[i8]) {
        let (p_img, p_wide) = (self.out_h * self.out_w, self.out_h * w_ph);
        let (mut img, rem) = (g0 / p_wide, g0 % p_wide);
        // SAFETY (both copies): `check` verified the output length, so each
        // run lies inside image `img`'s plane `o`; tasks own disjoint
        // (channel, pixel) sets.
        let copy = |src: &[i8], img: usize, at: usize| unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                out.at((img * self.c_out + o) * p_img + at),
                src.len(),
            );
        };
        if w_ph == self.out_w {
            // No extra columns: runs up to the end of each image's plane.
            let (mut p, mut pos) = (rem, 0);
            while pos < vals.len() {
                let run = (vals.len() - pos).min(p_wide - p);
                copy(&vals[pos..pos + run], img, p);
                (pos, p) = (pos + run, 0);
                img += 1;
            }
            return;
        }
        let (mut oy, mut ox) = (rem / w_ph, rem % w_ph);
        let mut pos = 0;
        while pos < vals.len() {
            let run = (vals.len() - pos).min(w_ph - ox);
            if ox < self.out_w {
                let len = run.min(self.out_w - ox);
                copy(&vals[pos..pos + len], img, oy * self.out_w + ox);
            }
            pos += run;
            ox += run;
            if ox == w_ph {
                ox = 0;
                oy += 1;
                if oy == self.out_h {
                    oy = 0;
                    img += 1;
                }
            }
        }
    }
}

/// The padded, phase-split input of the GEMM path
/// ([`ConvOp::phase_input`]).
struct Phases {
    data: Vec<u8>,
    /// Columns of the wide output grid (and of each phase plane).
    w_ph: usize,
    /// Bytes per image and per group of input channels.
    per_image: usize,
    per_group: usize,
    /// Offset of tap `k` from the pixel's index in its group's planes.
    taps: Vec<usize>,
}

/// `dst[4p + j] = src[j][p]` for the [`PX`] pixels of a panel row.
fn interleave4(src: [&[u8]; KG], dst: &mut [u8]) {
    let dst = &mut dst[..PX * KG];
    let src = src.map(|s| &s[..PX]);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86_64; every access is within the
        // PX-long slices above.
        unsafe {
            for i in 0..PX / 16 {
                let l = |j: usize| _mm_loadu_si128(src[j].as_ptr().add(16 * i) as *const __m128i);
                let (a, b, c, d) = (l(0), l(1), l(2), l(3));
                let (ab0, ab1) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
                let (cd0, cd1) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
                let p = dst.as_mut_ptr().add(64 * i) as *mut __m128i;
                _mm_storeu_si128(p, _mm_unpacklo_epi16(ab0, cd0));
                _mm_storeu_si128(p.add(1), _mm_unpackhi_epi16(ab0, cd0));
                _mm_storeu_si128(p.add(2), _mm_unpacklo_epi16(ab1, cd1));
                _mm_storeu_si128(p.add(3), _mm_unpackhi_epi16(ab1, cd1));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (p, d) in dst.chunks_exact_mut(KG).enumerate() {
        d.copy_from_slice(&[src[0][p], src[1][p], src[2][p], src[3][p]]);
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

/// QLinearAdd (S7) as a table: the 65,536 possible results, computed once
/// when the graph is loaded by the same [`AddRequant::apply`], then looked
/// up, which gives the same bytes at a fraction of the cost of the exact
/// division per element.
#[derive(Clone, PartialEq)]
pub struct AddTable {
    pub rq: AddRequant,
    table: Vec<i8>,
}

impl std::fmt::Debug for AddTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddTable").field("rq", &self.rq).finish()
    }
}

impl AddTable {
    pub fn new(rq: AddRequant) -> Self {
        let mut table = vec![0i8; 1 << 16];
        table.par_chunks_mut(256).enumerate().for_each(|(hi, row)| {
            for (lo, t) in row.iter_mut().enumerate() {
                *t = rq.apply(hi as u8 as i8, lo as u8 as i8);
            }
        });
        AddTable { rq, table }
    }

    /// `rq.apply(a, b)`.
    #[inline(always)]
    pub fn get(&self, a: i8, b: i8) -> i8 {
        self.table[(a as u8 as usize) << 8 | b as u8 as usize]
    }

    /// Element-wise over equally long slices.
    pub fn run(&self, a: &[i8], b: &[i8], y: &mut [i8]) -> Result<()> {
        const CHUNK: usize = 1 << 14;
        if a.len() != y.len() || b.len() != y.len() {
            bail!(
                Shape,
                "add of {} and {} elements into {}",
                a.len(),
                b.len(),
                y.len()
            );
        }
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                    *y = self.get(a, b);
                }
            });
        Ok(())
    }
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

    /// The scalar reference: the spec's accumulator by direct loops in
    /// int64, `sum (w - z_w) * (x - z_x) + bias` over the taps inside the
    /// image, S10.2's check, then `Requant::apply`.
    fn reference(op: &ConvOp, x: &[i8], n: usize) -> Result<Vec<i8>> {
        let (cg, og) = (op.c_in / op.groups, op.c_out / op.groups);
        let (h, w, kh, kw) = (op.h, op.w, op.kh, op.kw);
        let mut y = vec![0i8; n * op.c_out * op.out_h * op.out_w];
        for img in 0..n {
            for o in 0..op.c_out {
                let grp = o / og;
                for oy in 0..op.out_h {
                    for ox in 0..op.out_w {
                        let mut acc = op.bias[o] as i64;
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * op.stride.0 + ky * op.dilation.0) as i64
                                        - op.pad_begin.0 as i64;
                                    let ix = (ox * op.stride.1 + kx * op.dilation.1) as i64
                                        - op.pad_begin.1 as i64;
                                    if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                        continue;
                                    }
                                    let c = grp * cg + ci;
                                    let xv = x
                                        [((img * op.c_in + c) * h + iy as usize) * w + ix as usize];
                                    let wv = op.weight[((o * cg + ci) * kh + ky) * kw + kx];
                                    acc += (xv as i64 - op.z_x as i64)
                                        * (wv as i64 - op.weight_zero[o] as i64);
                                }
                            }
                        }
                        let Ok(acc) = i32::try_from(acc) else {
                            bail!(Onnx, "overflow in channel {o}");
                        };
                        y[((img * op.c_out + o) * op.out_h + oy) * op.out_w + ox] =
                            op.requant[o].apply(acc);
                    }
                }
            }
        }
        Ok(y)
    }

    /// A random convolution. `depthwise` makes `groups == c_in`; `edge`
    /// picks weights, inputs and zero points at the ends of their ranges;
    /// `zw` draws nonzero weight zero points.
    fn random_conv(rng: &mut Rng, depthwise: bool, edge: bool, zw: bool) -> Option<ConvOp> {
        let (c_in, c_out, groups) = if depthwise {
            let c = 1 + rng.below(6) as usize;
            (c, c * (1 + rng.below(3) as usize), c)
        } else {
            let g = [1, 1, 1, 2, 3][rng.below(5) as usize];
            let cg = 1 + rng.below(9) as usize;
            (g * cg, g * (1 + rng.below(20) as usize), g)
        };
        let k = [1, 2, 3, 5, 7][rng.below(5) as usize];
        let (kh, kw) = (k, [k, 1, 3][rng.below(3) as usize]);
        let (h, w) = (1 + rng.below(15) as usize, 1 + rng.below(15) as usize);
        let stride = (1 + rng.below(3) as usize, 1 + rng.below(3) as usize);
        let dilation = (1 + rng.below(2) as usize, 1 + rng.below(2) as usize);
        let pad = [0; 4].map(|_| rng.below(4) as usize);
        let eff = (dilation.0 * (kh - 1) + 1, dilation.1 * (kw - 1) + 1);
        if h + pad[0] + pad[2] < eff.0 || w + pad[1] + pad[3] < eff.1 {
            return None;
        }
        let out_h = (h + pad[0] + pad[2] - eff.0) / stride.0 + 1;
        let out_w = (w + pad[1] + pad[3] - eff.1) / stride.1 + 1;
        let kk = c_in / groups * kh * kw;
        let int8 = |rng: &mut Rng| -> i32 {
            if edge {
                [-128, 127, -127, 0][rng.below(4) as usize]
            } else {
                rng.below(256) as i32 - 128
            }
        };
        let z_x = int8(rng);
        let weight = (0..c_out * kk)
            .map(|_| {
                if rng.below(8) == 0 {
                    0
                } else {
                    int8(rng) as i8
                }
            })
            .collect();
        let weight_zero = (0..c_out)
            .map(|_| {
                if zw && rng.below(4) != 0 {
                    int8(rng)
                } else {
                    0
                }
            })
            .collect();
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
            weight,
            weight_zero,
            bias: (0..c_out)
                .map(|_| rng.below(200_001) as i32 - 100_000)
                .collect(),
            requant: (0..c_out)
                .map(|_| {
                    let m =
                        (0.00005 + 0.01 * rng.uniform()) * [1.0, 0.1, 10.0][rng.below(3) as usize];
                    Requant::new(m, int8(rng), -128, 127).unwrap()
                })
                .collect(),
            prepared: Default::default(),
        };
        Some(op)
    }

    /// Every dispatch path equals the scalar reference bit for bit on
    /// random convolutions: groups, depthwise with multipliers, kernels 1x1
    /// to 7x7 (odd K, K not a multiple of 4), strides, dilations,
    /// asymmetric padding (some taps only ever see padding), 1-4 images
    /// (panels span images), more than one channel block, edge values
    /// (-128/127 inputs, weights and zero points) and nonzero weight zero
    /// points.
    #[test]
    fn every_path_matches_the_reference() {
        let mut rng = Rng::new(4);
        let isas = Isa::available();
        let mut cases = 0;
        while cases < 400 {
            let (dw, edge, zw) = (cases % 3 == 0, cases % 4 == 1, cases % 2 == 1);
            let Some(op) = random_conv(&mut rng, dw, edge, zw) else {
                continue;
            };
            cases += 1;
            let n = 1 + rng.below(4) as usize;
            let x: Vec<i8> = (0..n * op.c_in * op.h * op.w)
                .map(|_| {
                    if edge {
                        [-128i8, 127][rng.below(2) as usize]
                    } else {
                        rng.below(256) as u8 as i8
                    }
                })
                .collect();
            let want = reference(&op, &x, n).unwrap();
            for &isa in &isas {
                let mut got = vec![0i8; want.len()];
                op.run_with(isa, "t", &x, n, &mut got).unwrap();
                assert_eq!(got, want, "{isa:?} case {cases}: {op:?}");
            }
        }
    }

    /// An accumulator that leaves int32 is an error on every path, and a
    /// channel whose bound is tight but never exceeded runs unchecked
    /// and matches the reference.
    #[test]
    fn overflow_is_reported_on_every_path() {
        for dw in [false, true] {
            let mut rng = Rng::new(5);
            let mut op = loop {
                if let Some(op) = random_conv(&mut rng, dw, false, false) {
                    if op.out_h * op.out_w > 1 && op.pad_begin == (0, 0) {
                        break op;
                    }
                }
            };
            // Every product positive and the bias near the top: over.
            op.z_x = -128;
            op.weight.iter_mut().for_each(|v| *v = 100);
            op.bias.iter_mut().for_each(|b| *b = i32::MAX - 10);
            let n = 2;
            let x = vec![127i8; n * op.c_in * op.h * op.w];
            for isa in Isa::available() {
                let op = op.clone();
                let mut y = vec![0i8; n * op.c_out * op.out_h * op.out_w];
                let e = op.run_with(isa, "t", &x, n, &mut y).unwrap_err();
                assert!(e.to_string().contains("overflows int32"), "{isa:?}: {e}");
                // Zero input: no overflow, though the bound allows one.
                let x0 = vec![-128i8; x.len()];
                op.run_with(isa, "t", &x0, n, &mut y).unwrap();
                assert_eq!(y, reference(&op, &x0, n).unwrap(), "{isa:?}");
                assert!(!op.prepare().safe[0]);
            }
        }
    }

    /// A dilation and pads so large that the padded input would be
    /// enormous are an error naming the node (not an allocation failure).
    #[test]
    fn enormous_padded_input_is_an_error() {
        let mut rng = Rng::new(8);
        let mut op = loop {
            if let Some(op) = random_conv(&mut rng, false, false, false) {
                break op;
            }
        };
        (op.h, op.w, op.kh, op.kw, op.dilation) = (1, 1, 2, 2, (65536, 65536));
        (op.pad_begin, op.out_h, op.out_w) = ((65536, 65536), 1, 1);
        let k = op.c_in / op.groups * 4;
        op.weight = vec![1; op.c_out * k];
        let x = vec![0i8; op.c_in];
        let mut y = vec![0i8; op.c_out];
        let e = op.run("big", &x, 1, &mut y).unwrap_err().to_string();
        assert!(e.contains("'big'") && e.contains("padded input"), "{e}");
    }

    /// Inconsistent fields are an error, not a panic.
    #[test]
    fn inconsistent_parameters_are_an_error() {
        let mut rng = Rng::new(6);
        let mut op = loop {
            if let Some(op) = random_conv(&mut rng, false, false, false) {
                break op;
            }
        };
        op.weight_zero.pop();
        let x = vec![0i8; op.c_in * op.h * op.w];
        let mut y = vec![0i8; op.c_out * op.out_h * op.out_w];
        assert!(op.run("t", &x, 1, &mut y).is_err());
    }

    /// The table path of QLinearAdd (large tensors) gives the bytes of
    /// `AddRequant::apply` on every pair of inputs, with and without ReLU.
    #[test]
    fn add_table_equals_the_spec_routine() {
        let mut rng = Rng::new(7);
        // Every (a, b) pair, four times over.
        let a: Vec<i8> = (0..1 << 18).map(|i| (i >> 8) as u8 as i8).collect();
        let b: Vec<i8> = (0..1 << 18).map(|i| i as u8 as i8).collect();
        for relu in [false, true] {
            let s = [0; 3].map(|_| 0.001 + 0.1 * rng.uniform());
            let z = [0; 3].map(|_| rng.below(256) as i32 - 128);
            let rq = AddRequant::new(s[0], z[0], s[1], z[1], s[2], z[2], relu).unwrap();
            let mut y = vec![0i8; a.len()];
            AddTable::new(rq).run(&a, &b, &mut y).unwrap();
            for i in 0..a.len() {
                assert_eq!(
                    y[i],
                    rq.apply(a[i], b[i]),
                    "relu {relu}: {} + {}",
                    a[i],
                    b[i]
                );
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
