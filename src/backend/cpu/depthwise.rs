//! Direct depthwise convolution (`groups == c_in`, output channel `o` reads
//! input channel `o / m` with `m = c_out / c_in`): forward, backward-data and
//! backward-weight, parallel over (image, channel) planes.
//!
//! The grouped GEMM lowering would run one GEMM of `m x (KH*KW) x pixels`
//! per channel; here every plane is convolved directly. Two layouts:
//! planes of more than 400 pixels go one at a time through the *flat-grid*
//! loops below; smaller ones (MobileNet's 14x14 and 7x7 layers), where
//! per-plane bookkeeping would dominate, go 16 channels at a time through
//! the *channel-block* loops (channels in the vector lanes; see that
//! section). The flat-grid loops are a set of shifted multiply-adds over
//! contiguous memory:
//!
//! - The zero-padded input plane is split into `sh * sw` *phase planes*
//!   (`P[rr][rc][i][j] = padded[i*sh + rr][j*sw + rc]`), each `hq x wq`.
//!   Tap `(ki, kj)` then reads phase `((ki*dh) % sh, (kj*dw) % sw)` at a
//!   constant offset `a * wq + b` (`a = ki*dh / sh`, `b = kj*dw / sw`) from
//!   the output position, with unit stride, for any stride and dilation.
//! - Outputs are computed on a flat grid of `oh` rows of width `wq`
//!   (`p = oy * wq + ox`; the columns `ox >= ow` are scratch and dropped on
//!   the copy-out), so one vector loop runs over whole planes, small ones
//!   (7x7) included, with no bounds checks inside.
//! - Forward: `y[p] = sum_t w_t * P_t[p + off_t]`, blocks of up to 128
//!   outputs held in registers while all taps are applied. Backward-data is
//!   the same loop on each phase of the padded input gradient, reading a
//!   flat copy of `dy` at negative offsets (its gather form: each element of
//!   `dx` is written once, no scatter). Backward-weight is a dot product
//!   per tap, `dw_t = sum_p dy[p] * P_t[p + off_t]`.
//!
//! Summation order (bit reproducibility): every output element accumulates
//! its taps in `(ki, kj)` order (backward-data: `(j, ki, kj)`, `j` the
//! multiplier index) with fused multiply-adds, in both layouts (which
//! therefore give the same bits), as do the CUDA kernels. Backward-weight
//! on the flat grid keeps 16 lane accumulators per tap (lane `l` takes the
//! flat positions `p` with `p % 16 == l`, image after image) and adds the
//! lanes in a fixed tree, one task per input channel; in channel blocks it
//! sums each channel sequentially, image by image. Nothing depends on the
//! thread count, and the AVX-512, AVX2+FMA and portable builds of the loops
//! (chosen at run time) perform the same operations lane by lane, so they
//! agree bit for bit.

use super::conv::{bias_grad, inside};
pub use super::isa::Isa;
use super::tile::lane_tree;
#[cfg(target_arch = "x86_64")]
use super::tile::t8x8;
use crate::backend::Conv2dGeom;
use rayon::prelude::*;
use std::ops::Range;

/// Lanes of the canonical accumulators (one AVX-512 register, two AVX2
/// ones). Flat buffers are padded to a multiple of it.
const L: usize = 16;

/// Which loops run: the flat-grid ones (planes one at a time) or the
/// channel-block ones (16 channels in the vector lanes, for small planes).
/// `Auto` picks by plane size; the others are for tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Auto,
    Flat,
    ChannelBlocks,
}

impl Layout {
    fn channel_blocks(self, g: &Conv2dGeom) -> bool {
        match self {
            Layout::Auto => channel_blocks(g),
            Layout::Flat => false,
            Layout::ChannelBlocks => true,
        }
    }
}

/// Sizes and tap offsets shared by the three passes.
struct Plan {
    m: usize,
    kk: usize,
    hw: usize,
    oh: usize,
    ow: usize,
    ohw: usize,
    /// Phase plane width (the height is not needed once planned).
    wq: usize,
    /// Number of phase planes, `sh * sw`.
    nph: usize,
    /// Floats per phase plane in the scratch buffers (data and slack).
    plane: usize,
    /// Flat output grid `oh * wq`, rounded up to `L`.
    out_pad: usize,
    /// Flat phase plane `hq * wq`, rounded up to `L`.
    q_pad: usize,
    /// Largest tap offset; the front slack of the flat `dy` copy.
    max_off: usize,
    /// Offset of each tap's input in the phase buffer (`phase * plane +
    /// a * wq + b`), in `(ki, kj)` order (forward, backward-weight).
    fwd_off: Vec<usize>,
    /// Backward-data, per phase of dx: the offsets into the flat `dy`
    /// copies (`j * dyb_len + max_off - a * wq - b`) and weight indices
    /// (`j * kk + t`) of its taps, in `(j, ki, kj)` order.
    bwd_off: Vec<Vec<usize>>,
    bwd_w: Vec<Vec<usize>>,
    /// Channel-block path: each tap's offset in the padded input
    /// (`ki*dh * wp + kj*dw`), and for each input pixel the `(dy pixel,
    /// weight)` indices of its backward-data taps in `(j, ki, kj)` order
    /// (`cb_gather[cb_gather_at[p]..cb_gather_at[p + 1]]`).
    cb_off: Vec<usize>,
    cb_gather: Vec<(u32, u32)>,
    cb_gather_at: Vec<u32>,
    /// Valid rows and columns of each phase plane (the rest is padding).
    rows: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

impl Plan {
    fn new(g: &Conv2dGeom, cb: bool) -> Plan {
        let (sh, sw) = g.stride;
        let (oh, ow) = (g.out_h(), g.out_w());
        let hq = (g.h + 2 * g.pad.0).div_ceil(sh);
        let wq = (g.w + 2 * g.pad.1).div_ceil(sw);
        let mut taps = Vec::with_capacity(g.kh * g.kw);
        let mut phase_taps = vec![Vec::new(); sh * sw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let (dy, dx) = (ki * g.dilation.0, kj * g.dilation.1);
                let phase = (dy % sh) * sw + dx % sw;
                phase_taps[phase].push(taps.len());
                taps.push((phase, (dy / sh) * wq + dx / sw));
            }
        }
        let max_off = taps.iter().map(|t| t.1).max().unwrap_or(0);
        let out_pad = round_up(oh * wq, L);
        let q_pad = round_up(hq * wq, L);
        let plane = round_up((out_pad + max_off).max(q_pad), L);
        let m = g.depthwise_multiplier();
        let kk = g.kh * g.kw;
        let dyb_len = max_off + q_pad;
        let fwd_off = taps.iter().map(|&(ph, off)| ph * plane + off).collect();
        let (mut bwd_off, mut bwd_w) = (Vec::new(), Vec::new());
        for ids in &phase_taps {
            let (mut o, mut wi) = (Vec::new(), Vec::new());
            for j in 0..m {
                for &t in ids {
                    o.push(j * dyb_len + max_off - taps[t].1);
                    wi.push(j * kk + t);
                }
            }
            bwd_off.push(o);
            bwd_w.push(wi);
        }
        let wp = g.w + 2 * g.pad.1;
        let mut cb_off = Vec::with_capacity(kk);
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                cb_off.push(ki * g.dilation.0 * wp + kj * g.dilation.1);
            }
        }
        let (mut cb_gather, mut cb_gather_at) = (Vec::new(), vec![0u32]);
        if cb {
            for iy in 0..g.h {
                for ix in 0..g.w {
                    for j in 0..m {
                        for ki in 0..g.kh {
                            let Some(ty) = (iy + g.pad.0).checked_sub(ki * g.dilation.0) else {
                                break;
                            };
                            if ty % sh != 0 || ty / sh >= oh {
                                continue;
                            }
                            for kj in 0..g.kw {
                                let Some(tx) = (ix + g.pad.1).checked_sub(kj * g.dilation.1) else {
                                    break;
                                };
                                if tx % sw != 0 || tx / sw >= ow {
                                    continue;
                                }
                                let yi = (j * oh + ty / sh) * ow + tx / sw;
                                cb_gather.push((yi as u32, (j * kk + ki * g.kw + kj) as u32));
                            }
                        }
                    }
                    cb_gather_at.push(cb_gather.len() as u32);
                }
            }
        }
        let rows = (0..sh)
            .map(|rr| inside(rr as isize - g.pad.0 as isize, sh, g.h, hq))
            .collect();
        let cols = (0..sw)
            .map(|rc| inside(rc as isize - g.pad.1 as isize, sw, g.w, wq))
            .collect();
        Plan {
            m,
            kk,
            hw: g.h * g.w,
            oh,
            ow,
            ohw: oh * ow,
            wq,
            nph: sh * sw,
            plane,
            out_pad,
            q_pad,
            max_off,
            fwd_off,
            bwd_off,
            bwd_w,
            cb_off,
            cb_gather,
            cb_gather_at,
            rows,
            cols,
        }
    }

    /// Length of one flat `dy` copy for backward-data (front slack, grid).
    fn dyb_len(&self) -> usize {
        self.max_off + self.q_pad
    }

    /// Input planes per rayon task: about 32K multiply-adds each, so that
    /// small planes (7x7) are not one task apiece.
    fn planes_per_task(&self) -> usize {
        ((1 << 15) / (self.m * self.ohw * self.kk).max(1)).max(1)
    }
}

/// Per-task scratch buffers, zeroed at creation and reused for every plane
/// of one plan: the passes write only the data positions of the phase
/// planes and flat grids, so their padding and slack stay zero.
struct Scratch {
    /// Phase planes (`nph * plane`): the padded input, or the padded input
    /// gradient in backward-data.
    phases: Vec<f32>,
    /// Flat output grid (forward) or flat `dy` copies (backward).
    flat: Vec<f32>,
    /// Weights of the taps of one phase (backward-data).
    wts: Vec<f32>,
}

impl Scratch {
    fn new(p: &Plan, flat: usize) -> Scratch {
        Scratch {
            phases: vec![0.0; p.nph * p.plane],
            flat: vec![0.0; flat],
            wts: Vec::with_capacity(p.m * p.kk),
        }
    }
}

// ---- the loops (inlined into each instruction set's wrapper) -------------------

/// `dst = src` (equal lengths) without a library call for short rows: a
/// 7-wide row is two overlapping 4-wide moves, not a `memcpy`.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    assert_eq!(n, src.len());
    macro_rules! overlapped {
        ($k:literal) => {{
            dst[..$k].copy_from_slice(&src[..$k]);
            dst[n - $k..].copy_from_slice(&src[n - $k..]);
        }};
    }
    match n {
        0 => {}
        1..=3 => {
            // Element by element: a loop would become a memcpy call.
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..=7 => overlapped!(4),
        8..=15 => overlapped!(8),
        16..=31 => overlapped!(16),
        32..=63 => overlapped!(32),
        _ => dst.copy_from_slice(src),
    }
}

/// Writes the phase planes of one zero-padded input plane `x` (`h x w`)
/// into `buf`. Only the data positions are written: they are the same for
/// every plane of a plan, so the padding and slack of a scratch buffer,
/// zeroed when it is allocated, stay zero.
#[inline(always)]
fn build_phases(p: &Plan, g: &Conv2dGeom, x: &[f32], buf: &mut [f32]) {
    let (sh, sw) = g.stride;
    for rr in 0..sh {
        for rc in 0..sw {
            let ph = &mut buf[(rr * sw + rc) * p.plane..][..p.plane];
            let (rows, cols) = (p.rows[rr].clone(), p.cols[rc].clone());
            if cols.is_empty() {
                continue;
            }
            // First input column, read by phase column `cols.start`.
            let x0 = cols.start * sw + rc - g.pad.1;
            for i in rows {
                let iy = i * sh + rr - g.pad.0;
                let src = &x[iy * g.w..][..g.w][x0..];
                let d = &mut ph[i * p.wq..][cols.clone()];
                match sw {
                    1 => copy_row(d, &src[..d.len()]),
                    2 => {
                        let pairs = d.len().min(src.len() / 2);
                        for (v, pair) in d[..pairs].iter_mut().zip(src.chunks_exact(2)) {
                            *v = pair[0];
                        }
                        if pairs < d.len() {
                            d[pairs] = src[2 * pairs];
                        }
                    }
                    _ => {
                        for (v, &e) in d.iter_mut().zip(src.iter().step_by(sw)) {
                            *v = e;
                        }
                    }
                }
            }
        }
    }
}

/// `out[p0 + i] = sum over taps t of w[t] * src[off[t] + p0 + i]`, `i < B`,
/// the `B` sums kept in registers across the taps.
#[inline(always)]
fn corr_block<const B: usize>(src: &[f32], off: &[usize], w: &[f32], p0: usize, out: &mut [f32]) {
    let mut acc = [0.0f32; B];
    for (&o, &wv) in off.iter().zip(w) {
        let s: &[f32; B] = src[o + p0..][..B].try_into().unwrap();
        for i in 0..B {
            acc[i] = s[i].mul_add(wv, acc[i]);
        }
    }
    out[p0..p0 + B].copy_from_slice(&acc);
}

/// [`corr_block`] over all of `out` (a multiple of `L` long), in blocks of
/// `BMAX`, then 64, 32 and 16.
#[inline(always)]
fn corr<const BMAX: usize>(src: &[f32], off: &[usize], w: &[f32], out: &mut [f32]) {
    let n = out.len();
    let mut p = 0;
    while n - p >= BMAX {
        corr_block::<BMAX>(src, off, w, p, out);
        p += BMAX;
    }
    if BMAX > 64 && n - p >= 64 {
        corr_block::<64>(src, off, w, p, out);
        p += 64;
    }
    if BMAX > 32 && n - p >= 32 {
        corr_block::<32>(src, off, w, p, out);
        p += 32;
    }
    while p < n {
        corr_block::<L>(src, off, w, p, out);
        p += L;
    }
}

/// Forward of a run of whole input planes `xc` (plane index `first` on)
/// into their output planes `yc` (`m` per input plane).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_task<const BMAX: usize>(
    p: &Plan,
    g: &Conv2dGeom,
    first: usize,
    xc: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    yc: &mut [f32],
    s: &mut Scratch,
) {
    let ylen = p.m * p.ohw;
    for (k, (y, x)) in yc
        .chunks_exact_mut(ylen)
        .zip(xc.chunks_exact(p.hw))
        .enumerate()
    {
        let c = (first + k) % g.c_in;
        build_phases(p, g, x, &mut s.phases);
        for (j, yp) in y.chunks_exact_mut(p.ohw).enumerate() {
            let o = c * p.m + j;
            let out = &mut s.flat[..p.out_pad];
            corr::<BMAX>(&s.phases, &p.fwd_off, &w[o * p.kk..][..p.kk], out);
            match bias {
                Some(b) => {
                    let b = b[o];
                    for (yr, or) in yp.chunks_exact_mut(p.ow).zip(out.chunks(p.wq)) {
                        yr.iter_mut().zip(or).for_each(|(v, &a)| *v = a + b);
                    }
                }
                None => {
                    for (yr, or) in yp.chunks_exact_mut(p.ow).zip(out.chunks(p.wq)) {
                        copy_row(yr, &or[..p.ow]);
                    }
                }
            }
        }
    }
}

/// Backward-data of a run of whole input-gradient planes `dxc` (plane
/// index `first` on) from their output gradient planes `dyc`.
#[inline(always)]
fn bwd_data_task<const BMAX: usize>(
    p: &Plan,
    g: &Conv2dGeom,
    first: usize,
    dyc: &[f32],
    w: &[f32],
    dxc: &mut [f32],
    s: &mut Scratch,
) {
    let (sh, sw) = g.stride;
    let (dyb_len, ylen) = (p.dyb_len(), p.m * p.ohw);
    for (k, (dx, dy)) in dxc
        .chunks_exact_mut(p.hw)
        .zip(dyc.chunks_exact(ylen))
        .enumerate()
    {
        let c = (first + k) % g.c_in;
        let wc = &w[c * p.m * p.kk..][..p.m * p.kk];
        // Flat copies of dy: front slack, rows of width wq, zeros elsewhere
        // (only the data positions are written, as in `build_phases`).
        for (j, dyp) in dy.chunks_exact(p.ohw).enumerate() {
            let grid = &mut s.flat[j * dyb_len + p.max_off..][..p.oh * p.wq];
            for (gr, dr) in grid.chunks_exact_mut(p.wq).zip(dyp.chunks_exact(p.ow)) {
                copy_row(&mut gr[..p.ow], dr);
            }
        }
        // Each phase of the padded dx: dP[q] = sum_t w_t * dy'[q - off_t].
        for (r, (off, wi)) in p.bwd_off.iter().zip(&p.bwd_w).enumerate() {
            s.wts.clear();
            s.wts.extend(wi.iter().map(|&i| wc[i]));
            let out = &mut s.phases[r * p.plane..][..p.q_pad];
            corr::<BMAX>(&s.flat, off, &s.wts, out);
        }
        // Un-pad and interleave the phases into dx.
        for iy in 0..g.h {
            let pr = iy + g.pad.0;
            let (rr, i) = (pr % sh, pr / sh);
            let row = &mut dx[iy * g.w..][..g.w];
            for rc in 0..sw {
                let ix0 = (rc + sw - g.pad.1 % sw) % sw;
                if ix0 >= g.w {
                    continue;
                }
                let j0 = (ix0 + g.pad.1) / sw;
                let src = &s.phases[(rr * sw + rc) * p.plane + i * p.wq + j0..];
                if sw == 1 {
                    copy_row(row, &src[..g.w]);
                } else {
                    for (d, &v) in row[ix0..].iter_mut().step_by(sw).zip(src) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// `acc[t][l] += sum over blocks b of dy[16b + l] * src[offs[t] + 16b + l]`
/// for `T` taps at once, the accumulators kept in registers.
#[inline(always)]
fn dw_group<const T: usize>(dy: &[f32], src: &[f32], offs: &[usize], acc: &mut [[f32; L]]) {
    let offs: [usize; T] = offs.try_into().unwrap();
    let mut a: [[f32; L]; T] = (&*acc).try_into().unwrap();
    for (b, d) in dy.chunks_exact(L).enumerate() {
        let p0 = b * L;
        for t in 0..T {
            let s: &[f32; L] = src[offs[t] + p0..][..L].try_into().unwrap();
            for i in 0..L {
                a[t][i] = d[i].mul_add(s[i], a[t][i]);
            }
        }
    }
    acc.copy_from_slice(&a);
}

/// [`dw_group`] for any number of taps up to 12.
#[inline(always)]
fn dw_taps(dy: &[f32], src: &[f32], offs: &[usize], acc: &mut [[f32; L]]) {
    macro_rules! by_len {
        ($($n:literal)*) => {
            match offs.len() {
                $($n => dw_group::<$n>(dy, src, offs, acc),)*
                n => unreachable!("tap group of {n}"),
            }
        };
    }
    by_len!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// Backward-weight of input channel `c`: the lane accumulators `acc`
/// (`m * kk`) of its output channels, over all images in order.
#[inline(always)]
fn bwd_weight_channel<const GMAX: usize>(
    p: &Plan,
    g: &Conv2dGeom,
    c: usize,
    x: &[f32],
    dy: &[f32],
    acc: &mut [[f32; L]],
    s: &mut Scratch,
) {
    let groups = p.kk.div_ceil(GMAX);
    for n in 0..g.n {
        let xp = &x[(n * g.c_in + c) * p.hw..][..p.hw];
        let dyc = &dy[(n * g.c_out + c * p.m) * p.ohw..][..p.m * p.ohw];
        build_phases(p, g, xp, &mut s.phases);
        for (j, dyp) in dyc.chunks_exact(p.ohw).enumerate() {
            // The flat grid of dy (data positions only, as in `build_phases`).
            let flat = &mut s.flat[..p.out_pad];
            for (gr, dr) in flat.chunks_mut(p.wq).zip(dyp.chunks_exact(p.ow)) {
                copy_row(&mut gr[..p.ow], dr);
            }
            // Taps in `groups` nearly equal runs of at most GMAX.
            let mut t0 = 0;
            for k in 0..groups {
                let t1 = t0 + (p.kk - t0).div_ceil(groups - k);
                let a = &mut acc[j * p.kk + t0..j * p.kk + t1];
                dw_taps(flat, &s.phases, &p.fwd_off[t0..t1], a);
                t0 = t1;
            }
        }
    }
}

// ---- small planes: channels in the vector lanes -----------------------------------
//
// For planes of at most `CB_MAX_HW` pixels the flat-grid loops spend more on
// per-plane bookkeeping (row copies, short vector runs) than on arithmetic.
// There, 16 channels of one image go through together, transposed to
// pixel-major order (`T[pixel][lane]`, lane = channel within the block), so
// every multiply-add is a 16-channel vector operation and strides need no
// phase split. Forward and backward-data accumulate each element's taps in
// the same order as the flat-grid loops (skipping the taps that read
// padding, which adds only zeros), so they give the same bits. Backward-
// weight sums each channel's products sequentially, image by image, pixel by
// pixel: a different order from the flat grid's lane scheme, fixed by the
// geometry.

/// Largest plane (input or output pixels) that takes the channel-block path.
const CB_MAX_HW: usize = 400;

/// Whether `g` takes the channel-block path.
fn channel_blocks(g: &Conv2dGeom) -> bool {
    g.h * g.w <= CB_MAX_HW && g.out_h() * g.out_w() <= CB_MAX_HW
}

/// One lane vector on a 64-byte boundary: a zmm load of a `[f32; L]` that
/// straddles two cache lines costs about twice an aligned one (measured:
/// up to 2x on whole passes, depending on where the allocator put the
/// buffers).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Lanes([f32; L]);

/// A zeroed buffer of `len` 64-byte-aligned lane vectors, used as a slice
/// of `[f32; L]`.
struct LaneBuf(Vec<Lanes>);

impl LaneBuf {
    fn new(len: usize) -> LaneBuf {
        LaneBuf(vec![Lanes([0.0; L]); len])
    }
}

impl std::ops::Deref for LaneBuf {
    type Target = [[f32; L]];
    fn deref(&self) -> &[[f32; L]] {
        // SAFETY: `Lanes` is `repr(C)` around one `[f32; L]` with no
        // padding (64 bytes either way); only the alignment is stricter.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len()) }
    }
}

impl std::ops::DerefMut for LaneBuf {
    fn deref_mut(&mut self) -> &mut [[f32; L]] {
        // SAFETY: as in `deref`.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len()) }
    }
}

/// Per-task buffers of the channel-block path (zeroed at creation; only
/// data positions are written, so the padding stays zero). Lanes past a
/// partial block's channels may hold an earlier block's values: lanes are
/// independent and those are never stored.
struct CbScratch {
    /// Padded input, `(h + 2 ph) x (w + 2 pw)` pixels of `L` lanes.
    xin: LaneBuf,
    /// Output gradients (`m` planes of `oh x ow` pixels) or outputs.
    ys: LaneBuf,
    /// Input gradients, `h x w` pixels; also the unpadded transpose of the
    /// input on its way into `xin`.
    dx: LaneBuf,
    /// Weights, `m * kk` taps of `L` lanes.
    w: LaneBuf,
}

impl CbScratch {
    fn new(g: &Conv2dGeom) -> CbScratch {
        let (hp, wp) = (g.h + 2 * g.pad.0, g.w + 2 * g.pad.1);
        let m = g.depthwise_multiplier();
        CbScratch {
            xin: LaneBuf::new(hp * wp),
            ys: LaneBuf::new(m * g.out_h() * g.out_w()),
            dx: LaneBuf::new(g.h * g.w),
            w: LaneBuf::new(m * g.kh * g.kw),
        }
    }
}

/// `dst[p][c] = src[c * stride + p]` for `c < nc`, `p < npix` (channels into
/// lanes), with 8x8 AVX transposes for whole blocks when `SIMD`.
#[inline(always)]
fn to_lanes<const SIMD: bool>(
    src: &[f32],
    stride: usize,
    nc: usize,
    npix: usize,
    dst: &mut [[f32; L]],
) {
    assert!(nc <= L && dst.len() >= npix && (nc == 0 || src.len() >= (nc - 1) * stride + npix));
    let mut c = 0;
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        while c + 8 <= nc {
            let mut p = 0;
            while p + 8 <= npix {
                // SAFETY: rows c..c+8 of 8 floats from p are inside `src`
                // (assert above); the 8 destination pixels hold lanes c..c+8.
                unsafe {
                    t8x8(
                        src.as_ptr().add(c * stride + p),
                        stride,
                        dst[p..p + 8].as_mut_ptr().cast::<f32>().add(c),
                        L,
                    )
                };
                p += 8;
            }
            for q in p..npix {
                for k in c..c + 8 {
                    dst[q][k] = src[k * stride + q];
                }
            }
            c += 8;
        }
    }
    for k in c..nc {
        for (d, &v) in dst[..npix].iter_mut().zip(&src[k * stride..][..npix]) {
            d[k] = v;
        }
    }
}

/// `dst[c * stride + p] = src[p][c]` for `c < nc`, `p < npix` (lanes back
/// into channel planes), the inverse of [`to_lanes`].
#[inline(always)]
fn from_lanes<const SIMD: bool>(
    src: &[[f32; L]],
    nc: usize,
    npix: usize,
    dst: &mut [f32],
    stride: usize,
) {
    assert!(nc <= L && src.len() >= npix && (nc == 0 || dst.len() >= (nc - 1) * stride + npix));
    let mut c = 0;
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        while c + 8 <= nc {
            let mut p = 0;
            while p + 8 <= npix {
                // SAFETY: as in `to_lanes`, with the roles exchanged.
                unsafe {
                    t8x8(
                        src[p..p + 8].as_ptr().cast::<f32>().add(c),
                        L,
                        dst.as_mut_ptr().add(c * stride + p),
                        stride,
                    )
                };
                p += 8;
            }
            for q in p..npix {
                for k in c..c + 8 {
                    dst[k * stride + q] = src[q][k];
                }
            }
            c += 8;
        }
    }
    for k in c..nc {
        for (d, v) in dst[k * stride..][..npix].iter_mut().zip(&src[..npix]) {
            *d = v[k];
        }
    }
}

/// Transposes `nc` planes of `x` (`[c][h][w]`) into the padded pixel-major
/// buffer (through `tmp`, `h * w` pixels).
#[inline(always)]
fn cb_load_x<const SIMD: bool>(
    g: &Conv2dGeom,
    nc: usize,
    x: &[f32],
    tmp: &mut [[f32; L]],
    xin: &mut [[f32; L]],
) {
    let (hw, wp) = (g.h * g.w, g.w + 2 * g.pad.1);
    to_lanes::<SIMD>(x, hw, nc, hw, tmp);
    for (iy, row) in tmp[..hw].chunks_exact(g.w).enumerate() {
        xin[(iy + g.pad.0) * wp + g.pad.1..][..g.w].copy_from_slice(row);
    }
}

/// Weights of the block's channels `c0..c0 + nc`, lane-major:
/// `out[j * kk + t][c] = w[(c0 + c) * m + j][t]` (lanes past `nc` keep
/// whatever they held: no output reads them).
#[inline(always)]
fn cb_load_w(p: &Plan, c0: usize, nc: usize, w: &[f32], out: &mut [[f32; L]]) {
    for (jt, o) in out[..p.m * p.kk].iter_mut().enumerate() {
        let (j, t) = (jt / p.kk, jt % p.kk);
        for (c, v) in o[..nc].iter_mut().enumerate() {
            *v = w[((c0 + c) * p.m + j) * p.kk + t];
        }
    }
}

/// `acc[b] = sum over taps t of w[t] * xin[base + b * step + d[t]]` for
/// `B` outputs at once (taps in order).
#[inline(always)]
fn cb_block<const B: usize>(
    xin: &[[f32; L]],
    d: &[usize],
    w: &[[f32; L]],
    base: usize,
    step: usize,
) -> [[f32; L]; B] {
    let mut acc = [[0.0f32; L]; B];
    for (&dt, wt) in d.iter().zip(w) {
        for (b, a) in acc.iter_mut().enumerate() {
            let xv = &xin[base + b * step + dt];
            for l in 0..L {
                a[l] = xv[l].mul_add(wt[l], a[l]);
            }
        }
    }
    acc
}

/// Forward of channels `c0..c0 + nc` of one image.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cb_fwd<const OX: usize, const SIMD: bool>(
    p: &Plan,
    g: &Conv2dGeom,
    c0: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    s: &mut CbScratch,
) {
    let nc = x.len() / p.hw;
    let wp = g.w + 2 * g.pad.1;
    cb_load_x::<SIMD>(g, nc, x, &mut s.dx, &mut s.xin);
    cb_load_w(p, c0, nc, w, &mut s.w);
    for j in 0..p.m {
        let wj = &s.w[j * p.kk..][..p.kk];
        for oy in 0..p.oh {
            let row = oy * g.stride.0 * wp;
            let out = &mut s.ys[(j * p.oh + oy) * p.ow..][..p.ow];
            let mut ox = 0;
            while ox + OX <= p.ow {
                let acc = cb_block::<OX>(&s.xin, &p.cb_off, wj, row + ox * g.stride.1, g.stride.1);
                out[ox..ox + OX].copy_from_slice(&acc);
                ox += OX;
            }
            // The rest of the row as one block (independent accumulators,
            // not a chain of single outputs).
            let (base, st, rest) = (row + ox * g.stride.1, g.stride.1, &mut out[ox..]);
            macro_rules! tail {
                ($($n:literal)*) => {
                    match rest.len() {
                        0 => {}
                        $($n => rest.copy_from_slice(&cb_block::<$n>(&s.xin, &p.cb_off, wj, base, st)),)*
                        n => unreachable!("tail of {n} outputs"),
                    }
                };
            }
            tail!(1 2 3 4 5 6 7);
        }
    }
    // Transpose back: y[c * m + j][pixel] = ys[j][pixel][c], then the bias.
    for j in 0..p.m {
        let src = &s.ys[j * p.ohw..][..p.ohw];
        from_lanes::<SIMD>(src, nc, p.ohw, &mut y[j * p.ohw..], p.m * p.ohw);
    }
    if let Some(b) = bias {
        for (k, plane) in y.chunks_exact_mut(p.ohw).enumerate() {
            let b = b[c0 * p.m + k];
            plane.iter_mut().for_each(|v| *v += b);
        }
    }
}

/// Backward-data of channels `c0..c0 + nc` of one image (gather form: the
/// taps of each input pixel from the plan's table, in `(j, ki, kj)` order).
#[inline(always)]
fn cb_bwd_data<const SIMD: bool>(
    p: &Plan,
    c0: usize,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    s: &mut CbScratch,
) {
    let nc = dx.len() / p.hw;
    cb_load_w(p, c0, nc, w, &mut s.w);
    for j in 0..p.m {
        let dst = &mut s.ys[j * p.ohw..][..p.ohw];
        to_lanes::<SIMD>(&dy[j * p.ohw..], p.m * p.ohw, nc, p.ohw, dst);
    }
    for (pix, acc) in s.dx.iter_mut().enumerate() {
        let (t0, t1) = (
            p.cb_gather_at[pix] as usize,
            p.cb_gather_at[pix + 1] as usize,
        );
        let mut a = [0.0f32; L];
        for &(yi, wi) in &p.cb_gather[t0..t1] {
            let (dv, wt) = (&s.ys[yi as usize], &s.w[wi as usize]);
            for l in 0..L {
                a[l] = dv[l].mul_add(wt[l], a[l]);
            }
        }
        *acc = a;
    }
    from_lanes::<SIMD>(&s.dx, nc, p.hw, dx, p.hw);
}

/// Backward-weight of channel block `c0..c0 + nc` over all images: `acc`
/// holds `m * kk` lane vectors (lane = channel).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cb_bwd_weight<const SIMD: bool>(
    p: &Plan,
    g: &Conv2dGeom,
    c0: usize,
    nc: usize,
    x: &[f32],
    dy: &[f32],
    acc: &mut [[f32; L]],
    s: &mut CbScratch,
) {
    let wp = g.w + 2 * g.pad.1;
    for n in 0..g.n {
        let xb = &x[(n * g.c_in + c0) * p.hw..][..nc * p.hw];
        cb_load_x::<SIMD>(g, nc, xb, &mut s.dx, &mut s.xin);
        let dyb = &dy[(n * g.c_out + c0 * p.m) * p.ohw..][..nc * p.m * p.ohw];
        for j in 0..p.m {
            let dst = &mut s.ys[j * p.ohw..][..p.ohw];
            to_lanes::<SIMD>(&dyb[j * p.ohw..], p.m * p.ohw, nc, p.ohw, dst);
        }
        for j in 0..p.m {
            let a = &mut acc[j * p.kk..][..p.kk];
            for oy in 0..p.oh {
                for ox in 0..p.ow {
                    let dv = s.ys[(j * p.oh + oy) * p.ow + ox];
                    let base = oy * g.stride.0 * wp + ox * g.stride.1;
                    for (at, &dt) in a.iter_mut().zip(&p.cb_off) {
                        let xv = &s.xin[base + dt];
                        for l in 0..L {
                            at[l] = dv[l].mul_add(xv[l], at[l]);
                        }
                    }
                }
            }
        }
    }
}

// ---- one wrapper per instruction set ---------------------------------------------

/// Most registers-worth of outputs (forward) and taps (backward-weight) per
/// instruction set: 8 accumulator registers, and up to 9 (AVX-512) or 10
/// (AVX2, two registers a tap) for the tap accumulators.
macro_rules! wrappers {
    ($name:ident, $bmax:literal, $gmax:literal, $ox:literal, $simd:literal $(, $feat:literal)?) => {
        mod $name {
            use super::*;
            $(#[target_feature(enable = $feat)])?
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn fwd(
                p: &Plan, g: &Conv2dGeom, first: usize, x: &[f32], w: &[f32],
                bias: Option<&[f32]>, y: &mut [f32], s: &mut Scratch,
            ) {
                fwd_task::<$bmax>(p, g, first, x, w, bias, y, s)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn bwd_data(
                p: &Plan, g: &Conv2dGeom, first: usize, dy: &[f32], w: &[f32], dx: &mut [f32],
                s: &mut Scratch,
            ) {
                bwd_data_task::<$bmax>(p, g, first, dy, w, dx, s)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn bwd_weight(
                p: &Plan, g: &Conv2dGeom, c: usize, x: &[f32], dy: &[f32], acc: &mut [[f32; L]],
                s: &mut Scratch,
            ) {
                bwd_weight_channel::<$gmax>(p, g, c, x, dy, acc, s)
            }
            $(#[target_feature(enable = $feat)])?
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn cb_fwd(
                p: &Plan, g: &Conv2dGeom, c0: usize, x: &[f32], w: &[f32],
                bias: Option<&[f32]>, y: &mut [f32], s: &mut CbScratch,
            ) {
                super::cb_fwd::<$ox, $simd>(p, g, c0, x, w, bias, y, s)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn cb_bwd_data(
                p: &Plan, c0: usize, dy: &[f32], w: &[f32], dx: &mut [f32], s: &mut CbScratch,
            ) {
                super::cb_bwd_data::<$simd>(p, c0, dy, w, dx, s)
            }
            $(#[target_feature(enable = $feat)])?
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn cb_bwd_weight(
                p: &Plan, g: &Conv2dGeom, c0: usize, nc: usize, x: &[f32], dy: &[f32],
                acc: &mut [[f32; L]], s: &mut CbScratch,
            ) {
                super::cb_bwd_weight::<$simd>(p, g, c0, nc, x, dy, acc, s)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
wrappers!(avx512, 128, 9, 8, true, "avx512f,fma");
#[cfg(target_arch = "x86_64")]
wrappers!(avx2, 64, 5, 4, true, "avx2,fma");
wrappers!(portable, 64, 4, 4, false);

/// Calls `$f` of the module for `$isa` (a `#[target_feature]` function: the
/// caller has checked that the processor supports it).
macro_rules! dispatch {
    ($isa:expr, $f:ident($($arg:expr),*)) => {
        // SAFETY: `Isa` values other than Portable are only used after
        // `Isa::supported` confirmed the features.
        unsafe {
            match $isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512::$f($($arg),*),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => avx2::$f($($arg),*),
                _ => portable::$f($($arg),*),
            }
        }
    };
}

fn checked(isa: Isa) -> Isa {
    assert!(
        isa.supported(),
        "{isa:?} is not supported by this processor"
    );
    isa
}

// ---- the three passes ----------------------------------------------------------------

pub fn forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    forward_with(Isa::detected(), Layout::Auto, g, x, w, bias, y)
}

pub fn forward_with(
    isa: Isa,
    layout: Layout,
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let isa = checked(isa);
    let cb = layout.channel_blocks(g);
    let p = Plan::new(g, cb);
    if p.ohw == 0 || y.is_empty() {
        return;
    }
    if cb {
        let (ylen, xlen) = (g.c_out * p.ohw, g.c_in * p.hw);
        y.par_chunks_mut(ylen)
            .zip(x.par_chunks(xlen))
            .for_each(|(yi, xi)| {
                yi.par_chunks_mut(L * p.m * p.ohw)
                    .zip(xi.par_chunks(L * p.hw))
                    .enumerate()
                    .for_each_init(
                        || CbScratch::new(g),
                        |s, (b, (yb, xb))| dispatch!(isa, cb_fwd(&p, g, b * L, xb, w, bias, yb, s)),
                    )
            });
        return;
    }
    let per = p.planes_per_task();
    y.par_chunks_mut(p.m * p.ohw * per)
        .zip(x.par_chunks(p.hw * per))
        .enumerate()
        .for_each_init(
            || Scratch::new(&p, p.out_pad),
            |s, (task, (yc, xc))| dispatch!(isa, fwd(&p, g, task * per, xc, w, bias, yc, s)),
        );
}

pub fn backward_data(g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    backward_data_with(Isa::detected(), Layout::Auto, g, dy, w, dx)
}

pub fn backward_data_with(
    isa: Isa,
    layout: Layout,
    g: &Conv2dGeom,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) {
    let isa = checked(isa);
    let cb = layout.channel_blocks(g);
    let p = Plan::new(g, cb);
    if p.hw == 0 || dx.is_empty() {
        return;
    }
    if cb {
        let (ylen, xlen) = (g.c_out * p.ohw, g.c_in * p.hw);
        dx.par_chunks_mut(xlen)
            .zip(dy.par_chunks(ylen))
            .for_each(|(dxi, dyi)| {
                dxi.par_chunks_mut(L * p.hw)
                    .zip(dyi.par_chunks(L * p.m * p.ohw))
                    .enumerate()
                    .for_each_init(
                        || CbScratch::new(g),
                        |s, (b, (dxb, dyb))| dispatch!(isa, cb_bwd_data(&p, b * L, dyb, w, dxb, s)),
                    )
            });
        return;
    }
    let per = p.planes_per_task();
    dx.par_chunks_mut(p.hw * per)
        .zip(dy.par_chunks(p.m * p.ohw * per))
        .enumerate()
        .for_each_init(
            || Scratch::new(&p, p.m * p.dyb_len()),
            |s, (task, (dxc, dyc))| dispatch!(isa, bwd_data(&p, g, task * per, dyc, w, dxc, s)),
        );
}

pub fn backward_weight(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    backward_weight_with(Isa::detected(), Layout::Auto, g, x, dy, dw, dbias)
}

pub fn backward_weight_with(
    isa: Isa,
    layout: Layout,
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    let isa = checked(isa);
    let cb = layout.channel_blocks(g);
    let p = Plan::new(g, cb);
    let kw = p.m * p.kk;
    if kw > 0 && p.ohw > 0 && cb {
        // One task per block of L channels, images in order.
        dw.par_chunks_mut(L * kw).enumerate().for_each(|(b, dwb)| {
            let nc = dwb.len() / kw;
            let mut acc = vec![[0.0f32; L]; kw];
            let mut s = CbScratch::new(g);
            dispatch!(
                isa,
                cb_bwd_weight(&p, g, b * L, nc, x, dy, &mut acc, &mut s)
            );
            for (c, dwc) in dwb.chunks_exact_mut(kw).enumerate() {
                for (d, a) in dwc.iter_mut().zip(&acc) {
                    *d = a[c];
                }
            }
        });
    } else if kw > 0 {
        // One task per input channel, images in order: the sums do not
        // depend on the thread count.
        dw.par_chunks_mut(kw).enumerate().for_each(|(c, dwc)| {
            let mut acc = vec![[0.0f32; L]; kw];
            if p.ohw > 0 {
                let mut s = Scratch::new(&p, p.out_pad);
                dispatch!(isa, bwd_weight(&p, g, c, x, dy, &mut acc, &mut s));
            }
            for (d, a) in dwc.iter_mut().zip(&acc) {
                *d = lane_tree(*a);
            }
        });
    }
    if let Some(db) = dbias {
        bias_grad(g, dy, db);
    }
}

/// Whether the forward pass sums integer operands exactly: with `|x| <= 255`
/// (an int8 value minus an int8 zero point) and `|w| <= 128`, every partial
/// sum of the `kh * kw` taps stays below 2^24, so each f32 multiply-add is
/// exact and the result is the exact integer, in any order.
pub fn exact_for_int8(g: &Conv2dGeom) -> bool {
    255 * 128 * g.kh * g.kw < 1 << 24
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn geom(
        (n, c, h, w, m): (usize, usize, usize, usize, usize),
        (kh, kw): (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        dilation: (usize, usize),
    ) -> Conv2dGeom {
        Conv2dGeom {
            n,
            c_in: c,
            h,
            w,
            c_out: c * m,
            kh,
            kw,
            stride,
            pad,
            dilation,
            groups: c,
        }
        .validate()
        .unwrap()
    }

    /// Odd shapes, small and large planes; channel counts below, at and
    /// above one block of 16 (and of 8, the transpose size).
    fn shapes() -> Vec<Conv2dGeom> {
        vec![
            geom((3, 5, 9, 7, 1), (3, 3), (2, 2), (1, 1), (2, 2)),
            geom((2, 3, 17, 40, 2), (5, 5), (1, 2), (2, 1), (1, 1)),
            geom((2, 17, 7, 7, 1), (3, 3), (1, 1), (1, 1), (1, 1)),
            geom((1, 2, 30, 9, 3), (7, 7), (2, 1), (3, 3), (1, 1)),
            geom((2, 9, 13, 11, 1), (3, 3), (2, 2), (1, 1), (1, 1)),
            geom((1, 33, 5, 6, 2), (3, 1), (3, 2), (2, 0), (1, 1)),
            geom((2, 8, 10, 9, 1), (1, 1), (2, 2), (0, 0), (1, 1)),
            geom((1, 4, 3, 3, 1), (2, 2), (1, 1), (3, 3), (1, 1)),
        ]
    }

    /// Direct depthwise convolution in f64: `(y, dx, dw)`.
    fn naive(g: &Conv2dGeom, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let (oh, ow, m) = (g.out_h(), g.out_w(), g.depthwise_multiplier());
        let (mut y, mut dx, mut dw) = (
            vec![0.0; g.y_len()],
            vec![0.0; g.x_len()],
            vec![0.0; g.w_len()],
        );
        for n in 0..g.n {
            for o in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((n * g.c_out + o) * oh + oy) * ow + ox;
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize
                                    - g.pad.0 as isize;
                                let ix = (ox * g.stride.1 + kj * g.dilation.1) as isize
                                    - g.pad.1 as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi =
                                    ((n * g.c_in + o / m) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = (o * g.kh + ki) * g.kw + kj;
                                y[yi] += x[xi] as f64 * w[wi] as f64;
                                dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                dw[wi] += dy[yi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Both layouts on every instruction set this processor runs, against
    /// the direct f64 convolution; forward and backward-data give the same
    /// bits on all of them (same taps in the same order), backward-weight
    /// the same bits across instruction sets and thread counts within a
    /// layout.
    #[test]
    fn layouts_and_instruction_sets_agree() {
        let mut rng = Rng::new(77);
        let isas = Isa::available();
        for g in shapes() {
            let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal()).collect() };
            let (x, w, b, dy) = (
                draw(g.x_len()),
                draw(g.w_len()),
                draw(g.c_out),
                draw(g.y_len()),
            );
            let [ry, rdx, rdw] = naive(&g, &x, &w, &dy);
            let ohw = g.out_h() * g.out_w();
            let mut first_fd: Option<(Vec<u32>, Vec<u32>)> = None;
            for layout in [Layout::Flat, Layout::ChannelBlocks] {
                let mut first_w: Option<Vec<u32>> = None;
                for &isa in &isas {
                    let what = format!("{layout:?} {isa:?} {g:?}");
                    let mut y = vec![f32::NAN; g.y_len()];
                    forward_with(isa, layout, &g, &x, &w, Some(&b), &mut y);
                    let mut dx = vec![f32::NAN; g.x_len()];
                    backward_data_with(isa, layout, &g, &dy, &w, &mut dx);
                    let mut dw = vec![f32::NAN; g.w_len()];
                    backward_weight_with(isa, layout, &g, &x, &dy, &mut dw, None);
                    for (i, &v) in y.iter().enumerate() {
                        let want = ry[i] + b[(i / ohw) % g.c_out] as f64;
                        assert!(
                            (v as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "y[{i}] {what}"
                        );
                    }
                    for (i, &v) in dx.iter().enumerate() {
                        assert!(
                            (v as f64 - rdx[i]).abs() <= 1e-5 * (1.0 + rdx[i].abs()),
                            "dx[{i}] {what}"
                        );
                    }
                    for (i, &v) in dw.iter().enumerate() {
                        assert!(
                            (v as f64 - rdw[i]).abs() <= 1e-4 * (1.0 + rdw[i].abs()),
                            "dw[{i}] {what}"
                        );
                    }
                    match &first_fd {
                        None => first_fd = Some((bits(&y), bits(&dx))),
                        Some((fy, fdx)) => {
                            assert!(bits(&y) == *fy, "forward bits differ: {what}");
                            assert!(bits(&dx) == *fdx, "backward-data bits differ: {what}");
                        }
                    }
                    match &first_w {
                        None => first_w = Some(bits(&dw)),
                        Some(f) => assert!(bits(&dw) == *f, "backward-weight bits differ: {what}"),
                    }
                }
                let want = first_w.unwrap();
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut dw = vec![f32::NAN; g.w_len()];
                    pool.install(|| {
                        backward_weight_with(isas[0], layout, &g, &x, &dy, &mut dw, None)
                    });
                    assert!(
                        bits(&dw) == want,
                        "backward-weight, {threads} threads: {layout:?} {g:?}"
                    );
                }
            }
        }
    }
}
