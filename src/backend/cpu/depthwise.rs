//! Direct depthwise convolution (`groups == c_in`, output channel `o` reads
//! input channel `o / m` with `m = c_out / c_in`): forward, backward-data and
//! backward-weight, parallel over (image, channel) planes.
//!
//! The grouped GEMM lowering would run one GEMM of `m x (KH*KW) x pixels`
//! per channel; here every plane is convolved directly, as a set of shifted
//! multiply-adds over contiguous memory:
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
//! multiplier index) with fused multiply-adds; backward-weight keeps 16
//! lane accumulators per tap (lane `l` takes the flat positions `p` with
//! `p % 16 == l`, image after image) and adds the lanes in a fixed tree, one
//! task per input channel. Nothing depends on the thread count, and the
//! AVX-512, AVX2+FMA and portable builds of the loops (chosen at run time)
//! perform the same operations lane by lane, so they agree bit for bit.

use super::conv::{bias_grad, inside};
use crate::backend::Conv2dGeom;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// Lanes of the canonical accumulators (one AVX-512 register, two AVX2
/// ones). Flat buffers are padded to a multiple of it.
const L: usize = 16;

/// The instruction set the loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    /// No target features (FMA through `f32::mul_add`, a library call on
    /// x86-64 processors without FMA).
    Portable,
}

impl Isa {
    fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2Fma => false,
            Isa::Portable => true,
        }
    }

    /// Every instruction set this processor runs, best first.
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2Fma, Isa::Portable]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    /// The best supported one, or a lower one named by `QAT_CPU_ISA`
    /// (`avx2` or `portable`; for benchmarking the other machines' paths).
    pub fn detected() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::available()[0];
            let wanted = match std::env::var("QAT_CPU_ISA").as_deref() {
                Ok("avx2") => Isa::Avx2Fma,
                Ok("portable") => Isa::Portable,
                _ => best,
            };
            if wanted.supported() {
                wanted
            } else {
                best
            }
        })
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
    /// `(phase, offset)` of each tap, in `(ki, kj)` order.
    taps: Vec<(usize, usize)>,
    /// Taps (indices into `taps`) reading each phase, in order.
    phase_taps: Vec<Vec<usize>>,
    /// Valid rows and columns of each phase plane (the rest is padding).
    rows: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

impl Plan {
    fn new(g: &Conv2dGeom) -> Plan {
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
        let rows = (0..sh)
            .map(|rr| inside(rr as isize - g.pad.0 as isize, sh, g.h, hq))
            .collect();
        let cols = (0..sw)
            .map(|rc| inside(rc as isize - g.pad.1 as isize, sw, g.w, wq))
            .collect();
        Plan {
            m: g.depthwise_multiplier(),
            kk: g.kh * g.kw,
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
            taps,
            phase_taps,
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

/// Per-task scratch buffers.
struct Scratch {
    /// Phase planes (`nph * plane`): the padded input, or the padded input
    /// gradient in backward-data.
    phases: Vec<f32>,
    /// Flat output grid (forward) or flat `dy` copies (backward).
    flat: Vec<f32>,
    /// `(absolute offset, weight)` of the taps of one output.
    taps: Vec<(usize, f32)>,
}

impl Scratch {
    fn new(p: &Plan, flat: usize) -> Scratch {
        Scratch {
            phases: vec![0.0; p.nph * p.plane],
            flat: vec![0.0; flat],
            taps: Vec::with_capacity(p.m * p.kk),
        }
    }
}

// ---- the loops (inlined into each instruction set's wrapper) -------------------

/// Writes the phase planes of one zero-padded input plane `x` (`h x w`).
#[inline(always)]
fn build_phases(p: &Plan, g: &Conv2dGeom, x: &[f32], buf: &mut [f32]) {
    let (sh, sw) = g.stride;
    for rr in 0..sh {
        for rc in 0..sw {
            let ph = &mut buf[(rr * sw + rc) * p.plane..][..p.plane];
            let (rows, cols) = (p.rows[rr].clone(), p.cols[rc].clone());
            ph[..rows.start * p.wq].fill(0.0);
            ph[rows.end * p.wq..].fill(0.0);
            if cols.is_empty() {
                ph[rows.start * p.wq..rows.end * p.wq].fill(0.0);
                continue;
            }
            // First input column, read by phase column `cols.start`.
            let x0 = cols.start * sw + rc - g.pad.1;
            for i in rows {
                let iy = i * sh + rr - g.pad.0;
                let src = &x[iy * g.w..][..g.w];
                let dst = &mut ph[i * p.wq..][..p.wq];
                dst[..cols.start].fill(0.0);
                dst[cols.end..].fill(0.0);
                let d = &mut dst[cols.clone()];
                if sw == 1 {
                    d.copy_from_slice(&src[x0..x0 + d.len()]);
                } else {
                    for (k, v) in d.iter_mut().enumerate() {
                        *v = src[x0 + k * sw];
                    }
                }
            }
        }
    }
}

/// `out[p0 + i] = sum over taps of w * src[off + p0 + i]`, `i < B`, the `B`
/// sums kept in registers across the taps.
#[inline(always)]
fn corr_block<const B: usize>(src: &[f32], taps: &[(usize, f32)], p0: usize, out: &mut [f32]) {
    let mut acc = [0.0f32; B];
    for &(off, wv) in taps {
        let s: &[f32; B] = src[off + p0..][..B].try_into().unwrap();
        for i in 0..B {
            acc[i] = s[i].mul_add(wv, acc[i]);
        }
    }
    out[p0..p0 + B].copy_from_slice(&acc);
}

/// [`corr_block`] over all of `out` (a multiple of `L` long), in blocks of
/// `BMAX`, then 64, 32 and 16.
#[inline(always)]
fn corr<const BMAX: usize>(src: &[f32], taps: &[(usize, f32)], out: &mut [f32]) {
    let n = out.len();
    let mut p = 0;
    while n - p >= BMAX {
        corr_block::<BMAX>(src, taps, p, out);
        p += BMAX;
    }
    if BMAX > 64 && n - p >= 64 {
        corr_block::<64>(src, taps, p, out);
        p += 64;
    }
    if BMAX > 32 && n - p >= 32 {
        corr_block::<32>(src, taps, p, out);
        p += 32;
    }
    while p < n {
        corr_block::<L>(src, taps, p, out);
        p += L;
    }
}

/// Forward of input plane `x` into its `m` output planes `y` (`m * ohw`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_plane<const BMAX: usize>(
    p: &Plan,
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    s: &mut Scratch,
) {
    build_phases(p, g, x, &mut s.phases);
    for (j, yp) in y.chunks_exact_mut(p.ohw).enumerate() {
        s.taps.clear();
        s.taps.extend(
            p.taps
                .iter()
                .zip(&w[j * p.kk..][..p.kk])
                .map(|(&(ph, off), &wv)| (ph * p.plane + off, wv)),
        );
        let out = &mut s.flat[..p.out_pad];
        corr::<BMAX>(&s.phases, &s.taps, out);
        let b = bias.map_or(0.0, |b| b[j]);
        for (yr, or) in yp.chunks_exact_mut(p.ow).zip(out.chunks(p.wq)) {
            if bias.is_some() {
                yr.iter_mut().zip(or).for_each(|(v, &a)| *v = a + b);
            } else {
                yr.copy_from_slice(&or[..p.ow]);
            }
        }
    }
}

/// Backward-data of input plane `dx` from its `m` output gradient planes
/// `dy` (`m * ohw`).
#[inline(always)]
fn bwd_data_plane<const BMAX: usize>(
    p: &Plan,
    g: &Conv2dGeom,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    s: &mut Scratch,
) {
    let (sh, sw) = g.stride;
    let dyb_len = p.dyb_len();
    // Flat copies of dy: front slack, rows of width wq, zeros elsewhere.
    for (j, dyp) in dy.chunks_exact(p.ohw).enumerate() {
        let buf = &mut s.flat[j * dyb_len..][..dyb_len];
        let (front, grid) = buf.split_at_mut(p.max_off);
        front.fill(0.0);
        for (oy, gr) in grid.chunks_mut(p.wq).enumerate() {
            if oy < p.oh {
                gr[..p.ow].copy_from_slice(&dyp[oy * p.ow..][..p.ow]);
                gr[p.ow..].fill(0.0);
            } else {
                gr.fill(0.0);
            }
        }
    }
    // Each phase of the padded dx: dP[q] = sum_t w_t * dy'[q - off_t].
    for (r, tap_ids) in p.phase_taps.iter().enumerate() {
        s.taps.clear();
        for j in 0..p.m {
            for &t in tap_ids {
                s.taps
                    .push((j * dyb_len + p.max_off - p.taps[t].1, w[j * p.kk + t]));
            }
        }
        let out = &mut s.phases[r * p.plane..][..p.q_pad];
        corr::<BMAX>(&s.flat, &s.taps, out);
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
                row.copy_from_slice(&src[..g.w]);
            } else {
                for (d, &v) in row[ix0..].iter_mut().step_by(sw).zip(src) {
                    *d = v;
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

/// Backward-weight of input channel `c`: adds image `n`'s contribution to
/// the lane accumulators `acc` (`m * kk`) of its output channels.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_weight_plane<const GMAX: usize>(
    p: &Plan,
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    acc: &mut [[f32; L]],
    offs: &mut Vec<usize>,
    s: &mut Scratch,
) {
    build_phases(p, g, x, &mut s.phases);
    let groups = p.kk.div_ceil(GMAX);
    for (j, dyp) in dy.chunks_exact(p.ohw).enumerate() {
        let flat = &mut s.flat[..p.out_pad];
        flat.fill(0.0);
        for (gr, dr) in flat.chunks_mut(p.wq).zip(dyp.chunks_exact(p.ow)) {
            gr[..p.ow].copy_from_slice(dr);
        }
        // Taps in `groups` nearly equal runs of at most GMAX.
        let mut t0 = 0;
        for k in 0..groups {
            let t1 = t0 + (p.kk - t0).div_ceil(groups - k);
            offs.clear();
            offs.extend(p.taps[t0..t1].iter().map(|&(ph, off)| ph * p.plane + off));
            dw_taps(
                flat,
                &s.phases,
                offs,
                &mut acc[j * p.kk + t0..j * p.kk + t1],
            );
            t0 = t1;
        }
    }
}

/// The lanes of one accumulator, added in a fixed tree.
fn lane_sum(a: &[f32; L]) -> f32 {
    let mut s = *a;
    let mut h = L / 2;
    while h > 0 {
        for i in 0..h {
            s[i] += s[i + h];
        }
        h /= 2;
    }
    s[0]
}

// ---- one wrapper per instruction set ---------------------------------------------

/// Most registers-worth of outputs (forward) and taps (backward-weight) per
/// instruction set: 8 accumulator registers, and up to 9 (AVX-512) or 10
/// (AVX2, two registers a tap) for the tap accumulators.
macro_rules! wrappers {
    ($name:ident, $bmax:literal, $gmax:literal $(, $feat:literal)?) => {
        mod $name {
            use super::*;
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn fwd(
                p: &Plan, g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>,
                y: &mut [f32], s: &mut Scratch,
            ) {
                fwd_plane::<$bmax>(p, g, x, w, bias, y, s)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn bwd_data(
                p: &Plan, g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32], s: &mut Scratch,
            ) {
                bwd_data_plane::<$bmax>(p, g, dy, w, dx, s)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn bwd_weight(
                p: &Plan, g: &Conv2dGeom, x: &[f32], dy: &[f32], acc: &mut [[f32; L]],
                offs: &mut Vec<usize>, s: &mut Scratch,
            ) {
                bwd_weight_plane::<$gmax>(p, g, x, dy, acc, offs, s)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
wrappers!(avx512, 128, 9, "avx512f,fma");
#[cfg(target_arch = "x86_64")]
wrappers!(avx2, 64, 5, "avx2,fma");
wrappers!(portable, 64, 4);

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
    forward_with(Isa::detected(), g, x, w, bias, y)
}

pub fn forward_with(
    isa: Isa,
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let isa = checked(isa);
    let p = Plan::new(g);
    if p.ohw == 0 || y.is_empty() {
        return;
    }
    let per = p.planes_per_task();
    let (ylen, kw) = (p.m * p.ohw, p.m * p.kk);
    y.par_chunks_mut(ylen * per)
        .zip(x.par_chunks(p.hw * per))
        .enumerate()
        .for_each_init(
            || Scratch::new(&p, p.out_pad),
            |s, (task, (yc, xc))| {
                for (k, (yp, xp)) in yc
                    .chunks_exact_mut(ylen)
                    .zip(xc.chunks_exact(p.hw))
                    .enumerate()
                {
                    let c = (task * per + k) % g.c_in;
                    let (wc, bc) = (&w[c * kw..][..kw], bias.map(|b| &b[c * p.m..][..p.m]));
                    dispatch!(isa, fwd(&p, g, xp, wc, bc, yp, s));
                }
            },
        );
}

pub fn backward_data(g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    backward_data_with(Isa::detected(), g, dy, w, dx)
}

pub fn backward_data_with(isa: Isa, g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let isa = checked(isa);
    let p = Plan::new(g);
    if p.hw == 0 || dx.is_empty() {
        return;
    }
    let per = p.planes_per_task();
    let (ylen, kw) = (p.m * p.ohw, p.m * p.kk);
    dx.par_chunks_mut(p.hw * per)
        .zip(dy.par_chunks(ylen * per))
        .enumerate()
        .for_each_init(
            || Scratch::new(&p, p.m * p.dyb_len()),
            |s, (task, (dxc, dyc))| {
                for (k, (dxp, dyp)) in dxc
                    .chunks_exact_mut(p.hw)
                    .zip(dyc.chunks_exact(ylen))
                    .enumerate()
                {
                    let c = (task * per + k) % g.c_in;
                    dispatch!(isa, bwd_data(&p, g, dyp, &w[c * kw..][..kw], dxp, s));
                }
            },
        );
}

pub fn backward_weight(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    backward_weight_with(Isa::detected(), g, x, dy, dw, dbias)
}

pub fn backward_weight_with(
    isa: Isa,
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    let isa = checked(isa);
    let p = Plan::new(g);
    let kw = p.m * p.kk;
    if kw > 0 {
        // One task per input channel, images in order: the sums do not
        // depend on the thread count.
        dw.par_chunks_mut(kw).enumerate().for_each(|(c, dwc)| {
            let mut acc = vec![[0.0f32; L]; kw];
            if p.ohw > 0 {
                let mut s = Scratch::new(&p, p.out_pad);
                let mut offs = Vec::with_capacity(12);
                for n in 0..g.n {
                    let xp = &x[(n * g.c_in + c) * p.hw..][..p.hw];
                    let dyc = &dy[(n * g.c_out + c * p.m) * p.ohw..][..p.m * p.ohw];
                    dispatch!(isa, bwd_weight(&p, g, xp, dyc, &mut acc, &mut offs, &mut s));
                }
            }
            for (d, a) in dwc.iter_mut().zip(&acc) {
                *d = lane_sum(a);
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

    /// The AVX-512, AVX2 and portable loops give the same bits (those this
    /// processor runs), on every pass, and backward-weight gives the same
    /// bits whatever the number of threads.
    #[test]
    fn instruction_sets_and_thread_counts_agree_bit_for_bit() {
        let mut rng = Rng::new(77);
        let shapes = [
            geom((3, 5, 9, 7, 1), (3, 3), (2, 2), (1, 1), (2, 2)),
            geom((2, 3, 17, 40, 2), (5, 5), (1, 2), (2, 1), (1, 1)),
            geom((4, 6, 7, 7, 1), (3, 3), (1, 1), (1, 1), (1, 1)),
            geom((1, 2, 30, 9, 3), (7, 7), (2, 1), (3, 3), (1, 1)),
        ];
        let isas = Isa::available();
        for g in shapes {
            let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal()).collect() };
            let (x, w, b, dy) = (
                draw(g.x_len()),
                draw(g.w_len()),
                draw(g.c_out),
                draw(g.y_len()),
            );
            let mut first: Option<[Vec<f32>; 3]> = None;
            for &isa in &isas {
                let mut y = vec![f32::NAN; g.y_len()];
                forward_with(isa, &g, &x, &w, Some(&b), &mut y);
                let mut dx = vec![f32::NAN; g.x_len()];
                backward_data_with(isa, &g, &dy, &w, &mut dx);
                let mut dw = vec![f32::NAN; g.w_len()];
                backward_weight_with(isa, &g, &x, &dy, &mut dw, None);
                let got = [y, dx, dw];
                match &first {
                    None => first = Some(got),
                    Some(want) => {
                        for (k, (a, b)) in got.iter().zip(want).enumerate() {
                            let same = a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits());
                            assert!(
                                same,
                                "{isa:?} differs from {:?} in pass {k} for {g:?}",
                                isas[0]
                            );
                        }
                    }
                }
            }
            let want = &first.unwrap()[2];
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut dw = vec![f32::NAN; g.w_len()];
                pool.install(|| backward_weight(&g, &x, &dy, &mut dw, None));
                assert!(
                    dw.iter().zip(want).all(|(u, v)| u.to_bits() == v.to_bits()),
                    "backward-weight with {threads} threads differs for {g:?}"
                );
            }
        }
    }
}
