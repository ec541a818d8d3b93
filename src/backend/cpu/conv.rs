//! Convolution as GEMM on the register-tiled kernels of [`tile`]: the
//! batch is cut into jobs of a few images (or bands of one image's output
//! rows when an image is large), each job's column buffer (the images side
//! by side) built in cache and multiplied there; groups are separate GEMMs
//! over slices of it. Size-keeping unit-stride convolutions (3x3 pad 1,
//! 1x1) build no column buffer: its rows are shifted views of the job's
//! images laid out once on a padded [`Grid`] ([`implicit`]); so do the
//! forward passes of stride-2 3x3 convolutions, on a grid of the four
//! phases of each channel ([`phased`]).
//!
//! - Forward: `y = W col` on the broadcast kernel, tiles stored into `y`
//!   with the bias added.
//! - Backward-data: with unit stride and dilation, the forward pass of a
//!   convolution of `dy` with the flipped, transposed weight (no col2im);
//!   otherwise `dcol = Wᵀ dy` on the broadcast kernel, `dy` gathered into a
//!   band, then col2im.
//! - Backward-weight: `dW = dy colᵀ` on the dot kernel (both operands run
//!   along output positions; on the grid, `dy` laid out on it too): lane
//!   partials over a fixed run of jobs per thread, reduced, and the
//!   threads' sums added in order. Grid convolutions (unit-stride and
//!   [`phased`]) whose row of taps (`kw * cg` floats) fills a broadcast
//!   tile run on the broadcast kernel instead: the grid laid out channels
//!   last (a phased one as two row-phase planes whose positions hold both
//!   column phases), so a kernel row's taps of one pixel are contiguous,
//!   `dy` packed into panels, one GEMM per kernel row and job, added into
//!   the run's sum.
//!
//! im2col and col2im of unit-stride convolutions whose output is as wide as
//! the input (3x3 with padding 1) move each tap's row as one shifted block.
//!
//! Summation order (bit reproducibility): forward and backward-data
//! elements are one fused multiply-add chain over the reduction in order,
//! whatever the instruction set, job plan or thread count (col2im then
//! adds the taps in `(c, ki, kj)` order). A backward-weight element depends on the
//! job plan and the thread count (the lanes or the per-job chains, and the
//! runs), not on the instruction set or on scheduling.

use super::tile;
use crate::backend::Conv2dGeom;
use rayon::prelude::*;
use std::cell::RefCell;
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
    let ohw = g.out_h() * g.out_w();
    im2col_rows(g, x_img, group, 0..g.out_h(), (col, ohw, 0));
}

/// The input row read by output row `oy` at kernel row `ki` (when inside).
fn input_row(g: &Conv2dGeom, oy: usize, ki: usize) -> usize {
    oy * g.stride.0 + ki * g.dilation.0 - g.pad.0
}

/// Whether output row `oy` reads input row `oy + d` and output column `ox`
/// input column `ox + e` for every tap (unit strides, output as wide as the
/// input): then a column-buffer row is the input plane shifted by a constant
/// flat offset, copied in one piece and fixed up at the left and right
/// borders.
fn flat(g: &Conv2dGeom) -> bool {
    g.stride == (1, 1) && g.out_w() == g.w
}

/// For every tap `(ki, kj)` (index `ki * kw + kj`): the output rows and
/// columns that read inside the image, and the offset of its input column
/// from the output column.
fn taps(g: &Conv2dGeom) -> Vec<(Range<usize>, Range<usize>, isize)> {
    let mut t = Vec::with_capacity(g.kh * g.kw);
    for ki in 0..g.kh {
        let rows = inside(
            (ki * g.dilation.0) as isize - g.pad.0 as isize,
            g.stride.0,
            g.h,
            g.out_h(),
        );
        for kj in 0..g.kw {
            let offset = (kj * g.dilation.1) as isize - g.pad.1 as isize;
            t.push((
                rows.clone(),
                inside(offset, g.stride.1, g.w, g.out_w()),
                offset,
            ));
        }
    }
    t
}

/// The column buffer of the output rows `oys` of one image and group,
/// written into columns `j0..j0 + oys.len() * out_w` of the row-major `buf`
/// (row stride `ld`).
fn im2col_rows<T: Copy + Default>(
    g: &Conv2dGeom,
    x_img: &[T],
    group: usize,
    oys: Range<usize>,
    (buf, ld, j0): (&mut [T], usize, usize),
) {
    let ow = g.out_w();
    let np = oys.len() * ow;
    let cg = g.c_in_per_group();
    let zero = T::default();
    let (taps, flat) = (taps(g), flat(g));
    for c in 0..cg {
        let plane = &x_img[(group * cg + c) * g.h * g.w..][..g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let (rows, cols, offset) = taps[ki * g.kw + kj].clone();
                let r = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut buf[r * ld + j0..][..np];
                if flat {
                    // The band's output rows that read inside the image.
                    let lo = rows.start.clamp(oys.start, oys.end);
                    let hi = rows.end.clamp(lo, oys.end);
                    let (a, b) = ((lo - oys.start) * ow, (hi - oys.start) * ow);
                    dst[..a].fill(zero);
                    dst[b..].fill(zero);
                    if a == b || cols.is_empty() {
                        dst[a..b].fill(zero);
                        continue;
                    }
                    // From (lo, cols.start) to (hi - 1, cols.end - 1), in one
                    // copy; then the columns outside `cols` of every row.
                    let (first, last) = (a + cols.start, b - ow + cols.end);
                    let src0 = (input_row(g, lo, ki) * g.w + cols.start) as isize + offset;
                    dst[first..last].copy_from_slice(&plane[src0 as usize..][..last - first]);
                    for row in dst[a..b].chunks_exact_mut(ow) {
                        row[..cols.start].fill(zero);
                        row[cols.end..].fill(zero);
                    }
                    continue;
                }
                for (oy, out) in oys.clone().zip(dst.chunks_exact_mut(ow)) {
                    if !rows.contains(&oy) || cols.is_empty() {
                        out.fill(zero);
                        continue;
                    }
                    let src = &plane[input_row(g, oy, ki) * g.w..][..g.w];
                    out[..cols.start].fill(zero);
                    out[cols.end..].fill(zero);
                    // First input column read, for output column `cols.start`.
                    let x0 = (cols.start * g.stride.1) as isize + offset;
                    let src = &src[x0 as usize..];
                    let out = &mut out[cols.clone()];
                    match g.stride.1 {
                        1 => out.copy_from_slice(&src[..out.len()]),
                        // A constant stride, which LLVM vectorizes.
                        2 => {
                            let src = &src[..2 * out.len() - 1];
                            for (t, o) in out.iter_mut().enumerate() {
                                *o = src[2 * t];
                            }
                        }
                        s => out
                            .iter_mut()
                            .zip(src.iter().step_by(s))
                            .for_each(|(o, &v)| *o = v),
                    }
                }
            }
        }
    }
}

/// Adds columns `j0..j0 + oys.len() * out_w` of the row-major column buffer
/// `col` (row stride `ld`), the output rows `oys` of one image, back into
/// that image's gradient (the adjoint of [`im2col_rows`]). In the [`flat`]
/// case the columns that read outside the image are zeroed in `col` first,
/// so that each tap is one shifted add over the band.
fn col2im_rows(
    g: &Conv2dGeom,
    (col, ld, j0): (&mut [f32], usize, usize),
    group: usize,
    oys: Range<usize>,
    dx_img: &mut [f32],
) {
    let ow = g.out_w();
    let np = oys.len() * ow;
    let cg = g.c_in_per_group();
    let (taps, flat) = (taps(g), flat(g));
    for c in 0..cg {
        let plane = &mut dx_img[(group * cg + c) * g.h * g.w..][..g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let (rows, cols, offset) = taps[ki * g.kw + kj].clone();
                let src = &mut col[((c * g.kh + ki) * g.kw + kj) * ld + j0..][..np];
                if flat {
                    let lo = rows.start.clamp(oys.start, oys.end);
                    let hi = rows.end.clamp(lo, oys.end);
                    let (a, b) = ((lo - oys.start) * ow, (hi - oys.start) * ow);
                    if a == b || cols.is_empty() {
                        continue;
                    }
                    for row in src[a..b].chunks_exact_mut(ow) {
                        row[..cols.start].fill(0.0);
                        row[cols.end..].fill(0.0);
                    }
                    let (first, last) = (a + cols.start, b - ow + cols.end);
                    let dst0 = (input_row(g, lo, ki) * g.w + cols.start) as isize + offset;
                    plane[dst0 as usize..][..last - first]
                        .iter_mut()
                        .zip(&src[first..last])
                        .for_each(|(d, &v)| *d += v);
                    continue;
                }
                for (oy, src) in oys.clone().zip(src.chunks_exact(ow)) {
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

/// A job builds column buffers of at most about this many floats (512 KiB,
/// a core's share of L2) at a time...
const BAND_FLOATS: usize = 128 * 1024;
/// ... but of at least this many output positions, or the tiles' padding to
/// whole panels and the per-band packing dominate.
const MIN_BAND_COLS: usize = 256;

/// How a batch is cut into jobs: `images` consecutive images per job (the
/// last job may have fewer), each walked in bands of `rows` output rows
/// (all of them unless one image alone exceeds [`BAND_FLOATS`]); a band's
/// column buffer spans the job's images side by side.
#[derive(Clone, Copy)]
struct Plan {
    images: usize,
    rows: usize,
}

impl Plan {
    fn new(g: &Conv2dGeom) -> Plan {
        let (oh, ow) = (g.out_h(), g.out_w());
        let kk = g.c_in_per_group() * g.kh * g.kw;
        let per_image = kk * oh * ow;
        // At least four jobs per thread, to balance them.
        let cap = g.n.div_ceil(4 * rayon::current_num_threads()).max(1);
        if per_image > BAND_FLOATS && oh * ow >= MIN_BAND_COLS {
            let rows = (BAND_FLOATS / (kk * ow)).max(MIN_BAND_COLS.div_ceil(ow));
            Plan {
                images: 1,
                rows: rows.clamp(1, oh),
            }
        } else {
            let images = (BAND_FLOATS / per_image).max(MIN_BAND_COLS.div_ceil(oh * ow));
            Plan {
                images: images.clamp(1, cap),
                rows: oh,
            }
        }
    }

    fn bands(self, g: &Conv2dGeom) -> impl Iterator<Item = Range<usize>> {
        let (oh, rows) = (g.out_h(), self.rows);
        (0..oh).step_by(rows).map(move |r| r..(r + rows).min(oh))
    }

    /// The most columns of one band.
    fn max_cols(self, g: &Conv2dGeom) -> usize {
        self.images * self.rows * g.out_w()
    }

    /// The image ranges of the jobs.
    fn jobs(self, n: usize) -> impl Iterator<Item = Range<usize>> {
        (0..n)
            .step_by(self.images)
            .map(move |i| i..(i + self.images).min(n))
    }
}

thread_local! {
    /// Each thread's job buffers (column buffers, gathered bands), kept
    /// between calls and never cleared: a job writes every element it
    /// reads, except the columns past its band that the last tiles read and
    /// drop (the dot kernel's padding is zeroed by [`zero_tail`]).
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` on this thread's three job buffers, grown to `lens`.
fn with_scratch<R>(lens: [usize; 3], f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with_borrow_mut(|[a, b, c]| {
        for (v, &len) in [&mut *a, &mut *b, &mut *c].into_iter().zip(&lens) {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        }
        f(&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]])
    })
}

/// Gathers channels `ch0..ch0 + rows` of the band `p0..p0 + np` of the
/// NCHW images of `src` (`channels` channels of `plane` positions each)
/// into the row-major `buf` (row stride `ld`), images side by side.
fn gather_band(
    src: &[f32],
    (channels, plane, ch0, rows): (usize, usize, usize, usize),
    (np, p0): (usize, usize),
    (buf, ld): (&mut [f32], usize),
) {
    let images = src.len() / (channels * plane);
    for b in 0..images {
        for r in 0..rows {
            let from = &src[(b * channels + ch0 + r) * plane + p0..][..np];
            tile::copy_short(&mut buf[r * ld + b * np..], from);
        }
    }
}

/// Zeroes columns `cols..` of every row of a row-major buffer with row
/// stride `ld` (the dot kernel's padding, left over from a wider band).
fn zero_tail(buf: &mut [f32], rows: usize, ld: usize, cols: usize) {
    for r in 0..rows {
        buf[r * ld + cols..(r + 1) * ld].fill(0.0);
    }
}

/// Whether `g` keeps the image size with unit stride and dilation (an odd
/// kernel padded by `(k - 1) / 2`, as 3x3 pad 1 and 1x1 pad 0): then it
/// runs without im2col, on a [`Grid`].
fn implicit(g: &Conv2dGeom) -> bool {
    g.stride == (1, 1) && g.dilation == (1, 1) && g.kh == 2 * g.pad.0 + 1 && g.kw == 2 * g.pad.1 + 1
}

/// Whether `g` is a 3x3 convolution with stride 2 and pad 1 on planes of
/// even size: then its forward runs without im2col, on a [`Grid`] of the
/// four phases of each channel (`x[2r + p][2s + q]`, `p, q` in `0..2`), on
/// which every column-buffer row is again a shifted view; so does its
/// backward-weight with 16 or more input channels per group, on the
/// channels-last form of that grid ([`Grid::lay_out_channels_last`]).
fn phased(g: &Conv2dGeom) -> bool {
    g.stride == (2, 2)
        && g.dilation == (1, 1)
        && (g.kh, g.kw) == (3, 3)
        && g.pad == (1, 1)
        && g.h.is_multiple_of(2)
        && g.w.is_multiple_of(2)
}

/// A job's images of one group, each channel laid out once with its
/// padding, so that every column-buffer row of an [`implicit`] convolution
/// is a shifted view of it: row `(c, ki, kj)` starts at
/// `c * chan + ki * pitch + kj` ([`Grid::offsets`]), and GEMM column `j` is
/// output pixel `(y, x) = (j % seg / pitch, j % seg % pitch)` of image
/// `j / seg`. Each image row is followed by `pad.1` zeros (which serve as
/// the next row's left padding too) and each image by `pad.0` zero rows
/// (the next image's top padding); the columns of those are computed and
/// dropped. Per channel: `lead = pad.0 * pitch + pad.1` zeros, then the
/// images `seg` apart.
///
/// A [`phased`] convolution's grid holds four planes per channel (channel
/// `c`'s phase `(p, q)` is grid channel `4c + 2p + q`), each `h/2 x w/2`
/// with pad 1: tap `(ki, kj)` of output `(y, x)` reads input row `2y + ki
/// - 1`, which is phase `p = 1 - ki % 2`'s row `y + min(ki, 1) - 1`.
#[derive(Clone, Copy)]
struct Grid {
    phased: bool,
    pitch: usize,
    seg: usize,
    lead: usize,
    chan: usize,
    images: usize,
    /// GEMM columns: up to the last image's last pixel row.
    cols: usize,
}

impl Grid {
    fn new(g: &Conv2dGeom, images: usize) -> Grid {
        let phased = phased(g);
        let ((h, w), pad) = Grid::planes(g);
        let pitch = w + pad.1;
        let seg = (h + pad.0) * pitch;
        let lead = pad.0 * pitch + pad.1;
        Grid {
            phased,
            pitch,
            seg,
            lead,
            chan: lead + images * seg,
            images,
            cols: (images - 1) * seg + h * pitch,
        }
    }

    /// The size and padding of the planes laid out: the images', or their
    /// phases' for a [`phased`] convolution (the output's size either way).
    fn planes(g: &Conv2dGeom) -> ((usize, usize), (usize, usize)) {
        if phased(g) {
            ((g.h / 2, g.w / 2), (1, 1))
        } else {
            ((g.h, g.w), g.pad)
        }
    }

    /// Grid channels per image channel.
    fn per_channel(self) -> usize {
        if self.phased {
            4
        } else {
            1
        }
    }

    /// Images per job: a grid of at most [`BAND_FLOATS`] (several images
    /// of small planes; its rows are re-read `kh * kw` times from cache),
    /// at least four jobs per thread.
    fn images_per_job(g: &Conv2dGeom) -> usize {
        let ((h, w), pad) = Grid::planes(g);
        let phases = if phased(g) { 4 } else { 1 };
        let per_image = phases * g.c_in_per_group() * (h + pad.0) * (w + pad.1);
        let cap = g.n.div_ceil(4 * rayon::current_num_threads()).max(1);
        (BAND_FLOATS / per_image).clamp(1, cap)
    }

    /// Floats of the grid of `cg` channels whose rows are read `ld` columns
    /// long (the shifted views of the last channel run past it; zeros).
    fn len(self, cg: usize, ld: usize) -> usize {
        (cg * self.per_channel() - 1) * self.chan + 2 * self.lead + ld.max(self.cols)
    }

    /// The start of every column-buffer row, `(c, ki, kj)` in order.
    fn offsets(self, g: &Conv2dGeom) -> Vec<usize> {
        let mut o = Vec::with_capacity(g.c_in_per_group() * g.kh * g.kw);
        for c in 0..g.c_in_per_group() {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    o.push(if self.phased {
                        let phase = 2 * (1 - ki % 2) + (1 - kj % 2);
                        (4 * c + phase) * self.chan + ki.min(1) * self.pitch + kj.min(1)
                    } else {
                        c * self.chan + ki * self.pitch + kj
                    });
                }
            }
        }
        o
    }

    /// Lays out `channels` channels from `ch0` of the NCHW images `src`
    /// (`c_img` channels of `h x w`) on the grid: channel `c` in
    /// `dst[c * stride..][..stride]`, after `lead` zeros, zeros around and
    /// after its images, and zeros past the last channel. The column
    /// buffer's source is `(self.chan, self.lead)`; `dy` on the grid
    /// (GEMM columns, rows of `ld >= cols`) is `(ld, 0)`.
    fn lay_out(
        self,
        (h, w): (usize, usize),
        src: &[f32],
        (c_img, ch0, channels): (usize, usize, usize),
        (dst, stride, lead): (&mut [f32], usize, usize),
    ) {
        if self.phased {
            return self.lay_out_phases((h, w), src, (c_img, ch0, channels), (dst, stride, lead));
        }
        let plane = h * w;
        for c in 0..channels {
            let chan = &mut dst[c * stride..][..stride];
            chan[..lead].fill(0.0);
            for b in 0..self.images {
                let from = &src[(b * c_img + ch0 + c) * plane..][..plane];
                let img = &mut chan[lead + b * self.seg..];
                if self.pitch == w {
                    img[..plane].copy_from_slice(from);
                } else {
                    let rows = img[..h * self.pitch].chunks_exact_mut(self.pitch);
                    for (row, from) in rows.zip(from.chunks_exact(w)) {
                        tile::copy_short(row, from);
                        row[w..].fill(0.0);
                    }
                }
                let end = self.seg.min(img.len());
                img[h * self.pitch..end].fill(0.0);
            }
            chan[lead + self.cols..].fill(0.0);
        }
        dst[channels * stride..].fill(0.0);
    }

    /// Floats per grid position of a channels-last grid of `cg` channels:
    /// the `cg` channels, or a [`phased`] grid's two column phases of them
    /// (`[q][c]`, so the taps `kj = 0, 1, 2` of one output pixel, phase
    /// columns `(s - 1, q = 1), (s, 0), (s, 1)`, are `3 * cg` contiguous
    /// floats).
    fn channels_last_unit(self, cg: usize) -> usize {
        if self.phased {
            2 * cg
        } else {
            cg
        }
    }

    /// Floats of one plane of a channels-last grid (a [`phased`] grid has
    /// one per row phase) of `cg` channels, with the read-past of its last
    /// tap rows (`kw * cg` floats from a kernel row's start plus the last
    /// pixel's offset, read rounded up to [`CHANNELS_LAST_MIN_ROW`]).
    fn channels_last_plane(self, g: &Conv2dGeom, cg: usize) -> usize {
        let last = (self.images - 1) * self.seg + (g.out_h() - 1) * self.pitch + g.out_w() - 1;
        let first_row = if self.phased {
            (2 * self.pitch + 1) * cg
        } else {
            (g.kh - 1) * self.pitch * cg
        };
        first_row
            + last * self.channels_last_unit(cg)
            + (g.kw * cg).next_multiple_of(CHANNELS_LAST_MIN_ROW)
    }

    /// Floats of a channels-last grid of `cg` channels
    /// ([`Grid::lay_out_channels_last`]).
    fn channels_last_len(self, g: &Conv2dGeom, cg: usize) -> usize {
        let planes = if self.phased { 2 } else { 1 };
        planes * self.channels_last_plane(g, cg)
    }

    /// Where the taps of kernel row `ki` of the output pixel at grid
    /// column 0 start in a channels-last grid; pixel `p`'s are
    /// `p * channels_last_unit` further. Unit stride: `ki * pitch * cg`.
    /// [`phased`]: input row `2y + ki - 1` is row phase `p = 1 - ki % 2`,
    /// phase row `y + min(ki, 1) - 1`, and the `kj = 0` tap is column
    /// phase `q = 1` one position to the left (after `lead = pitch + 1`).
    fn channels_last_row(self, g: &Conv2dGeom, cg: usize, ki: usize) -> usize {
        if self.phased {
            let plane = (1 - ki % 2) * self.channels_last_plane(g, cg);
            plane + (2 * ki.min(1) * self.pitch + 1) * cg
        } else {
            ki * self.pitch * cg
        }
    }

    /// Lays out channels `ch0..ch0 + cg` of the NCHW images `src` (`c_img`
    /// channels of `h x w`) channels last: grid position `q` (as in
    /// [`Grid::lay_out`], after `lead` zeros) holds its `cg` channels at
    /// `dst[q * cg..]`, zeros at the padding. Tap `(ki, kj)` of output
    /// column `p` reads position `p + ki * pitch + kj`, so the taps of one
    /// kernel row are the `kw * cg` floats from `(p + ki * pitch) * cg`.
    /// A [`phased`] grid holds two planes, one per row phase `p`, whose
    /// position `(r, s)` holds input pixels `(2r + p, 2s)` and `(2r + p, 2s
    /// + 1)`, `2 * cg` floats: one input row is one row of the plane.
    /// Each image goes through `tmp` (`h * w * cg` floats, pixel-major).
    fn lay_out_channels_last(
        self,
        (h, w): (usize, usize),
        src: &[f32],
        (c_img, ch0, cg): (usize, usize, usize),
        (dst, tmp): (&mut [f32], &mut [f32]),
    ) {
        let plane = h * w;
        let (phases, unit) = if self.phased { (2, 2 * cg) } else { (1, cg) };
        let stride = dst.len() / phases;
        let (rows, row) = (h / phases, w * cg);
        let gap = self.pitch * unit - row;
        for b in 0..self.images {
            let from = (&src[(b * c_img + ch0) * plane..], plane);
            tile::transpose(from, (cg, plane), (&mut tmp[..plane * cg], cg));
            for p in 0..phases {
                let pl = &mut dst[p * stride..][..stride];
                if b == 0 {
                    pl[..self.lead * unit].fill(0.0);
                }
                let img = &mut pl[(self.lead + b * self.seg) * unit..];
                for r in 0..rows {
                    let pixels = &tmp[(phases * r + p) * row..][..row];
                    let at = r * self.pitch * unit;
                    img[at..at + row].copy_from_slice(pixels);
                    // The last pad column of a phased grid is past its reads.
                    let gap_end = (at + row + gap).min(img.len());
                    img[at + row..gap_end].fill(0.0);
                }
                let start = (rows * self.pitch * unit).min(img.len());
                let end = (self.seg * unit).clamp(start, img.len().max(start));
                img[start..end].fill(0.0);
            }
        }
        for p in 0..phases {
            let pl = &mut dst[p * stride..][..stride];
            let tail = ((self.lead + self.images * self.seg) * unit).min(pl.len());
            pl[tail..].fill(0.0);
        }
    }

    /// [`Grid::lay_out`] of a [`phased`] grid: channel `c`'s phase `(p, q)`
    /// in grid channel `4c + 2p + q`, each of its rows `x[2r + p][q..;2]`.
    fn lay_out_phases(
        self,
        (h, w): (usize, usize),
        src: &[f32],
        (c_img, ch0, channels): (usize, usize, usize),
        (dst, stride, lead): (&mut [f32], usize, usize),
    ) {
        let (plane, hp, wp) = (h * w, h / 2, w / 2);
        for c in 0..channels {
            for phase in 0..4 {
                let (p, q) = (phase / 2, phase % 2);
                let chan = &mut dst[(4 * c + phase) * stride..][..stride];
                chan[..lead].fill(0.0);
                for b in 0..self.images {
                    let from = &src[(b * c_img + ch0 + c) * plane..][..plane];
                    let img = &mut chan[lead + b * self.seg..];
                    let rows = img[..hp * self.pitch].chunks_exact_mut(self.pitch);
                    for (r, row) in rows.enumerate() {
                        let line = &from[(2 * r + p) * w..][..w];
                        for (o, &v) in row[..wp].iter_mut().zip(line[q..].iter().step_by(2)) {
                            *o = v;
                        }
                        row[wp..].fill(0.0);
                    }
                    let end = self.seg.min(img.len());
                    img[hp * self.pitch..end].fill(0.0);
                }
                chan[lead + self.cols..].fill(0.0);
            }
        }
        dst[4 * channels * stride..].fill(0.0);
    }
}

/// The forward pass of an [`implicit`] convolution: `y = W B` with `B`'s
/// rows the shifted views of a [`Grid`], stored without its pad columns
/// and rows. Each output element is the same fused multiply-add chain as
/// through im2col (the same products, zeros where the tap falls outside).
fn forward_implicit(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let hw = oh * ow;
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let (mr, nr) = tile::broadcast_tile();
    let packed: Vec<Vec<f32>> = (0..g.groups)
        .map(|grp| tile::pack_rows(&w[grp * og * kk..], (kk, 1), og, kk, mr))
        .collect();
    let images = Grid::images_per_job(g);
    let x_img = g.c_in * g.h * g.w;
    y.par_chunks_mut(images * g.c_out * hw)
        .zip(x.par_chunks(images * x_img))
        .for_each(|(y_job, x_job)| {
            let grid = Grid::new(g, x_job.len() / x_img);
            let offsets = grid.offsets(g);
            let ld = grid.cols.next_multiple_of(nr);
            with_scratch([grid.len(cg, ld), 0, 0], |buf, _, _| {
                for (grp, w_grp) in packed.iter().enumerate() {
                    let dst = (&mut buf[..], grid.chan, grid.lead);
                    grid.lay_out((g.h, g.w), x_job, (g.c_in, grp * cg, cg), dst);
                    let dest = tile::Dest::padded(
                        grp * og * hw,
                        hw,
                        (grid.seg, g.c_out * hw),
                        (grid.pitch, ow, oh),
                    );
                    tile::broadcast_gemm(
                        (og, grid.cols, kk),
                        w_grp,
                        (buf, tile::BRows::Offsets(&offsets)),
                        (y_job, dest),
                        bias.map(|b| &b[grp * og..]),
                    );
                }
            })
        });
}

// Below, a band is output rows `oys` (positions `p0..p0 + np` of each
// plane) of a job's images, `cols = images * np` columns.

pub fn forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    if implicit(g) || phased(g) {
        forward_implicit(g, x, w, bias, y)
    } else {
        forward_lowered(g, x, w, bias, y)
    }
}

/// The forward pass through im2col.
fn forward_lowered(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (ow, ohw) = (g.out_w(), g.out_h() * g.out_w());
    let (og, kk) = (g.c_out_per_group(), g.c_in_per_group() * g.kh * g.kw);
    let (mr, nr) = tile::broadcast_tile();
    let plan = Plan::new(g);
    let ld_max = plan.max_cols(g).next_multiple_of(nr);
    let packed: Vec<Vec<f32>> = (0..g.groups)
        .map(|grp| tile::pack_rows(&w[grp * og * kk..], (kk, 1), og, kk, mr))
        .collect();
    let x_img = g.c_in * g.h * g.w;
    let jobs: Vec<Range<usize>> = plan.jobs(g.n).collect();
    y.par_chunks_mut(plan.images * g.c_out * ohw)
        .zip(jobs)
        .for_each(|(y_job, imgs)| {
            with_scratch([kk * ld_max, 0, 0], |band, _, _| {
                for grp in 0..g.groups {
                    for oys in plan.bands(g) {
                        let (p0, np) = (oys.start * ow, oys.len() * ow);
                        let cols = imgs.len() * np;
                        let ld = cols.next_multiple_of(nr);
                        for (b, i) in imgs.clone().enumerate() {
                            let x_i = &x[i * x_img..][..x_img];
                            im2col_rows(g, x_i, grp, oys.clone(), (band, ld, b * np));
                        }
                        let dest = tile::Dest::images(grp * og * ohw + p0, ohw, np, g.c_out * ohw);
                        tile::broadcast_gemm(
                            (og, cols, kk),
                            &packed[grp],
                            (band, tile::BRows::Strided(ld)),
                            (y_job, dest),
                            bias.map(|b| &b[grp * og..]),
                        );
                    }
                }
            })
        });
}

/// The convolution whose forward pass is `g`'s backward-data, for unit
/// stride and dilation: `dy` convolved with the flipped, transposed weight
/// ([`flipped_weight`]) and padding `k - 1 - pad`, which gives `dx` with
/// no col2im. `None` for the other geometries.
fn transposed(g: &Conv2dGeom) -> Option<Conv2dGeom> {
    let unit = g.stride == (1, 1) && g.dilation == (1, 1);
    (unit && g.pad.0 < g.kh && g.pad.1 < g.kw).then(|| Conv2dGeom {
        c_in: g.c_out,
        h: g.out_h(),
        w: g.out_w(),
        c_out: g.c_in,
        pad: (g.kh - 1 - g.pad.0, g.kw - 1 - g.pad.1),
        ..*g
    })
}

/// `w'[c][o][ki][kj] = w[o][c][kh-1-ki][kw-1-kj]` within each group: the
/// weight of [`transposed`].
fn flipped_weight(g: &Conv2dGeom, w: &[f32]) -> Vec<f32> {
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let taps = g.kh * g.kw;
    let mut out = vec![0.0f32; w.len()];
    for grp in 0..g.groups {
        for o in 0..og {
            for c in 0..cg {
                let src = &w[((grp * og + o) * cg + c) * taps..][..taps];
                let dst = &mut out[((grp * cg + c) * og + o) * taps..][..taps];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        }
    }
    out
}

pub fn backward_data(g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    if let Some(t) = transposed(g) {
        return forward(&t, dy, &flipped_weight(g, w), None, dx);
    }
    let (ow, ohw) = (g.out_w(), g.out_h() * g.out_w());
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let (mr, nr) = tile::broadcast_tile();
    let plan = Plan::new(g);
    let ld_max = plan.max_cols(g).next_multiple_of(nr);
    // Wᵀ (rows (c, ki, kj), reduction over the group's output channels).
    let packed: Vec<Vec<f32>> = (0..g.groups)
        .map(|grp| tile::pack_rows(&w[grp * og * kk..], (1, kk), kk, og, mr))
        .collect();
    let dy_img = g.c_out * ohw;
    let x_img = g.c_in * g.h * g.w;
    let jobs: Vec<Range<usize>> = plan.jobs(g.n).collect();
    let dcol_len = kk * plan.max_cols(g);
    dx.par_chunks_mut(plan.images * x_img)
        .zip(jobs)
        .for_each(|(dx_job, imgs)| {
            with_scratch([og * ld_max, dcol_len, 0], |band, dcol, _| {
                dx_job.fill(0.0); // col2im accumulates
                let dy_job = &dy[imgs.start * dy_img..imgs.end * dy_img];
                for (grp, w_grp) in packed.iter().enumerate() {
                    for oys in plan.bands(g) {
                        let (p0, np) = (oys.start * ow, oys.len() * ow);
                        let cols = imgs.len() * np;
                        let ld = cols.next_multiple_of(nr);
                        gather_band(dy_job, (g.c_out, ohw, grp * og, og), (np, p0), (band, ld));
                        let out = (&mut dcol[..], tile::Dest::rows(cols));
                        let b = (&band[..], tile::BRows::Strided(ld));
                        tile::broadcast_gemm((kk, cols, og), w_grp, b, out, None);
                        for (b, dx_i) in dx_job.chunks_exact_mut(x_img).enumerate() {
                            col2im_rows(g, (dcol, cols, b * np), grp, oys.clone(), dx_i);
                        }
                    }
                }
            })
        });
}

/// Backward-weight runs as broadcast GEMMs on a channels-last grid
/// ([`Grid::lay_out_channels_last`]) when a row of taps, `kw * cg`
/// contiguous floats there, is at least this long: a whole AVX-512 tile
/// (and two AVX2 ones), so every build takes the same path and gives the
/// same bits. Narrower convolutions (the stem) stay on the dot kernel.
const CHANNELS_LAST_MIN_ROW: usize = 48;

/// Floats in a 64-byte cache line.
const LINE_FLOATS: usize = 16;

/// Packs `dy` of channels `co0..co0 + og` of the NCHW `dy_job` (`c_out`
/// channels of `ohw` positions) into panels of `mr` rows for the broadcast
/// kernel: row `o`, step `k = b * ohw + pos` at
/// `a[(o / mr) * kk * mr + k * mr + o % mr]`, zero rows past `og`.
fn pack_dy(
    dy_job: &[f32],
    (c_out, ohw, co0, og): (usize, usize, usize, usize),
    mr: usize,
    a: &mut [f32],
) {
    let images = dy_job.len() / (c_out * ohw);
    let kk = images * ohw;
    for (ip, panel) in a[..og.div_ceil(mr) * kk * mr]
        .chunks_exact_mut(kk * mr)
        .enumerate()
    {
        let rows = mr.min(og - ip * mr);
        if rows < mr {
            panel.fill(0.0);
        }
        for b in 0..images {
            let from = (&dy_job[(b * c_out + co0 + ip * mr) * ohw..], ohw);
            tile::transpose(from, (rows, ohw), (&mut panel[b * ohw * mr..], mr));
        }
    }
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
    let plan = Plan::new(g);
    let (x_img, dy_img) = (g.c_in * g.h * g.w, g.c_out * ohw);
    let part_len = tile::dot_partials_len(og, kk);
    let lanes = tile::DOT_LANES;
    // One job's images into the lane partials of every group.
    let lowered_job = |imgs: &Range<usize>, [dy_band, col]: [&mut [f32]; 2], parts: &mut [f32]| {
        let dy_job = &dy[imgs.start * dy_img..imgs.end * dy_img];
        for grp in 0..g.groups {
            for oys in plan.bands(g) {
                let (p0, np) = (oys.start * ow, oys.len() * ow);
                let cols = imgs.len() * np;
                let kp = cols.next_multiple_of(lanes);
                gather_band(
                    dy_job,
                    (g.c_out, ohw, grp * og, og),
                    (np, p0),
                    (dy_band, kp),
                );
                for (b, i) in imgs.clone().enumerate() {
                    let x_i = &x[i * x_img..][..x_img];
                    im2col_rows(g, x_i, grp, oys.clone(), (col, kp, b * np));
                }
                zero_tail(dy_band, og, kp, cols);
                zero_tail(col, kk, kp, cols);
                tile::dot_accumulate(
                    (og, kk, kp),
                    (dy_band, kp),
                    (col, tile::BRows::Strided(kp)),
                    &mut parts[grp * part_len..][..part_len],
                );
            }
        }
    };
    // The same on a grid: `dy` laid out on it too (zeros at the pad
    // columns and rows), the column buffer's rows its shifted views.
    let implicit_job = |imgs: &Range<usize>, [dy_grid, buf]: [&mut [f32]; 2], parts: &mut [f32]| {
        let grid = Grid::new(g, imgs.len());
        let kp = grid.cols.next_multiple_of(lanes);
        let offsets = grid.offsets(g);
        let (x_job, dy_job) = (
            &x[imgs.start * x_img..imgs.end * x_img],
            &dy[imgs.start * dy_img..imgs.end * dy_img],
        );
        let (hw, buf) = ((g.h, g.w), &mut buf[..grid.len(cg, kp)]);
        for grp in 0..g.groups {
            grid.lay_out(
                hw,
                x_job,
                (g.c_in, grp * cg, cg),
                (buf, grid.chan, grid.lead),
            );
            let dst = (&mut dy_grid[..og * kp], kp, 0);
            grid.lay_out(hw, dy_job, (g.c_out, grp * og, og), dst);
            tile::dot_accumulate(
                (og, kk, kp),
                (dy_grid, kp),
                (buf, tile::BRows::Offsets(&offsets)),
                &mut parts[grp * part_len..][..part_len],
            );
        }
    };
    // The same as broadcast GEMMs on a channels-last grid, one per kernel
    // row `ki`: `t[o][kj * cg + c] = Σ_k dy[o][k] x[(p_k + ki * pitch) * cg
    // + kj * cg + c]`, one chain over the job's output pixels `k` in order
    // (`p_k` the grid column of pixel `k`), then added into `acc`.
    let (mr, _) = tile::broadcast_tile();
    let row = g.kw * cg;
    let channels_last_job = |imgs: &Range<usize>,
                             [a, xg]: [&mut [f32]; 2],
                             t: &mut [f32],
                             acc: &mut [f32],
                             offsets: &[usize]| {
        let grid = Grid::new(g, imgs.len());
        let (x_job, dy_job) = (
            &x[imgs.start * x_img..imgs.end * x_img],
            &dy[imgs.start * dy_img..imgs.end * dy_img],
        );
        let steps = imgs.len() * ohw;
        // The grid from a cache line: its pixels' taps start at multiples
        // of `cg` floats, which with 16 or 32 channels keeps the kernel's
        // loads of them from straddling lines (AVX2 went 7% slower on
        // 16 channels when the buffer started 16 bytes into a line).
        let skip = xg.as_ptr().align_offset(64).min(LINE_FLOATS);
        let (xg, tmp) = xg[skip..].split_at_mut(grid.channels_last_len(g, cg));
        for grp in 0..g.groups {
            let to = (&mut *xg, &mut *tmp);
            grid.lay_out_channels_last((g.h, g.w), x_job, (g.c_in, grp * cg, cg), to);
            pack_dy(dy_job, (g.c_out, ohw, grp * og, og), mr, a);
            for ki in 0..g.kh {
                let b = (
                    &xg[grid.channels_last_row(g, cg, ki)..],
                    tile::BRows::Offsets(&offsets[..steps]),
                );
                let out = (&mut t[..og * row], tile::Dest::rows(row));
                tile::broadcast_gemm((og, row, steps), a, b, out, None);
                for (o, t_o) in t.chunks_exact(row).take(og).enumerate() {
                    let dw_o = &mut acc[(grp * og + o) * kk..][..kk];
                    for (kj, t_kj) in t_o.chunks_exact(cg).enumerate() {
                        for (c, &v) in t_kj.iter().enumerate() {
                            dw_o[(c * g.kh + ki) * g.kw + kj] += v;
                        }
                    }
                }
            }
        }
    };
    let on_grid = implicit(g);
    let channels_last = (on_grid || phased(g)) && row >= CHANNELS_LAST_MIN_ROW;
    let (images, lens) = if channels_last {
        let images = Grid::images_per_job(g);
        let grid = Grid::new(g, images);
        let a_len = og.div_ceil(mr) * mr * images * ohw;
        let xg_len = LINE_FLOATS + grid.channels_last_len(g, cg) + g.h * g.w * cg;
        (images, [a_len, xg_len, og * row])
    } else if on_grid {
        let images = Grid::images_per_job(g);
        let grid = Grid::new(g, images);
        let kp = grid.cols.next_multiple_of(lanes);
        (images, [og * kp, grid.len(cg, kp), g.groups * part_len])
    } else {
        let kp = plan.max_cols(g).next_multiple_of(lanes);
        (plan.images, [og * kp, kk * kp, g.groups * part_len])
    };
    // Every job's grid columns of its pixels: the first job's, a prefix.
    let offsets: Vec<usize> = if channels_last {
        let grid = Grid::new(g, images);
        let pixel = |b: usize, pos: usize| b * grid.seg + pos / ow * grid.pitch + pos % ow;
        (0..images * ohw)
            .map(|k| pixel(k / ohw, k % ohw) * grid.channels_last_unit(cg))
            .collect()
    } else {
        Vec::new()
    };
    // Accumulates the jobs `jobs` into `acc` (dw layout), one after another.
    let add_jobs = |jobs: &[Range<usize>], acc: &mut [f32]| {
        if channels_last {
            return with_scratch(lens, |a, b, t| {
                for imgs in jobs {
                    channels_last_job(imgs, [&mut *a, &mut *b], t, acc, &offsets);
                }
            });
        }
        with_scratch(lens, |a, b, parts| {
            parts.fill(0.0);
            for imgs in jobs {
                if on_grid {
                    implicit_job(imgs, [&mut *a, &mut *b], parts);
                } else {
                    lowered_job(imgs, [&mut *a, &mut *b], parts);
                }
            }
            for (grp, p) in parts.chunks_exact(part_len).enumerate() {
                tile::dot_reduce((og, kk), p, (&mut acc[grp * og * kk..], kk));
            }
        })
    };
    // Fixed runs of consecutive jobs per thread, their sums added in order:
    // the same bits however rayon schedules them.
    let jobs: Vec<Range<usize>> = (0..g.n)
        .step_by(images)
        .map(|i| i..(i + images).min(g.n))
        .collect();
    let per = jobs.len().div_ceil(rayon::current_num_threads()).max(1);
    let partials: Vec<Vec<f32>> = jobs
        .par_chunks(per)
        .map(|run| {
            let mut acc = vec![0.0f32; dw.len()];
            add_jobs(run, &mut acc);
            acc
        })
        .collect();
    dw.fill(0.0);
    for p in &partials {
        dw.iter_mut().zip(p).for_each(|(d, v)| *d += v);
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

    /// Calls `f(xi, wi, yi)` for every multiply-add of the direct
    /// convolution: input, weight and output element indices.
    fn each_tap(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = (g.out_h(), g.out_w());
        let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
        for n in 0..g.n {
            for o in 0..g.c_out {
                let grp = o / og;
                for oy in 0..oh {
                    for ox in 0..ow {
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
                                    f(xi, wi, ((n * g.c_out + o) * oh + oy) * ow + ox);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Direct convolution in f64.
    fn naive(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let ohw = g.out_h() * g.out_w();
        let mut y: Vec<f64> = (0..g.n * g.c_out * ohw)
            .map(|i| bias.map_or(0.0, |b| b[i / ohw % g.c_out] as f64))
            .collect();
        each_tap(g, |xi, wi, yi| y[yi] += x[xi] as f64 * w[wi] as f64);
        y
    }

    fn assert_close(what: &str, g: &Conv2dGeom, got: &[f32], want: &[f64]) {
        assert_within(what, g, got, want, &vec![0.0; want.len()]);
    }

    /// As [`assert_close`], allowing two units of f32 rounding on the sum
    /// of the absolute values of the terms (`abs`) on top: the error bound
    /// of a long chain of f32 additions whose result cancels (the
    /// backward-weight sums thousands of products over a job's pixels in
    /// one chain). One term dropped or doubled is still far outside it.
    fn assert_within(what: &str, g: &Conv2dGeom, got: &[f32], want: &[f64], abs: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, ((&got, &want), &abs)) in got.iter().zip(want).zip(abs).enumerate() {
            let tol = 1e-5 * (1.0 + want.abs()) + f32::EPSILON as f64 * abs;
            assert!(
                (got as f64 - want).abs() <= tol,
                "{g:?} {what}[{i}] = {got}, want {want} (within {tol})"
            );
        }
    }

    fn geom(shape: Shape) -> Conv2dGeom {
        let (n, c_in, h, w, c_out, kh, kw, stride, pad, dilation, groups) = shape;
        Conv2dGeom {
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
        .unwrap()
    }

    type Shape = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        (usize, usize),
        (usize, usize),
        (usize, usize),
        usize,
    );

    /// Small and larger planes, odd batches, stride, unequal padding,
    /// dilation, groups, a 1x1 stride-2 case (not pointwise) and a 1x1
    /// pointwise one, multi-image jobs of 7x7 planes, and one image large
    /// enough to be cut into bands of rows.
    #[rustfmt::skip]
    const SHAPES: [Shape; 20] = [
        // n, c_in, h, w, c_out, kh, kw, stride, pad, dilation, groups
        (7, 64, 7, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        (9, 90, 5, 6, 4, 3, 2, (2, 1), (1, 0), (1, 1), 1),
        (5, 57, 9, 8, 3, 3, 3, (1, 2), (2, 1), (2, 1), 1),
        (3, 2, 4, 4, 5, 1, 1, (2, 2), (0, 0), (1, 1), 1),
        (2, 4, 6, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1), 2),
        (4, 3, 20, 17, 2, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        (1, 3, 5, 5, 2, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        (6, 12, 9, 7, 10, 1, 1, (1, 1), (0, 0), (1, 1), 2),
        (40, 8, 7, 7, 9, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        (2, 40, 30, 31, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        (3, 5, 8, 8, 4, 3, 3, (1, 1), (2, 2), (2, 2), 1),
        // Channels-last backward-weight: rows of taps of exactly one
        // AVX-512 tile with 19 outputs (two panels and a partial one),
        // 144 floats with groups, and a 1x1 convolution.
        (3, 16, 9, 9, 19, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        (5, 96, 6, 5, 10, 3, 3, (1, 1), (1, 1), (1, 1), 2),
        (4, 50, 6, 6, 9, 1, 1, (1, 1), (0, 0), (1, 1), 1),
        // Stride 2 on phases: one job, several, and two groups.
        (3, 6, 8, 10, 5, 3, 3, (2, 2), (1, 1), (1, 1), 1),
        (33, 4, 14, 14, 7, 3, 3, (2, 2), (1, 1), (1, 1), 1),
        (2, 4, 6, 4, 6, 3, 3, (2, 2), (1, 1), (1, 1), 2),
        // Stride 2, backward-weight channels last on the phases: a row of
        // taps of one AVX-512 tile on 5x4 phases, 96 floats with groups,
        // and several jobs.
        (5, 16, 10, 8, 7, 3, 3, (2, 2), (1, 1), (1, 1), 1),
        (3, 64, 6, 6, 10, 3, 3, (2, 2), (1, 1), (1, 1), 2),
        (21, 16, 14, 14, 5, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    ];

    /// The forward pass against a direct convolution in f64, with and
    /// without bias. Outputs start as NaN to catch unwritten elements.
    #[test]
    fn forward_matches_direct_convolution() {
        let mut rng = Rng::new(5);
        for shape in SHAPES {
            let g = geom(shape);
            let mut draw =
                |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect() };
            let x = draw(g.n * g.c_in * g.h * g.w);
            let wt = draw(g.c_out * g.c_in_per_group() * g.kh * g.kw);
            let b = draw(g.c_out);
            for bias in [None, Some(&b[..])] {
                let mut y = vec![f32::NAN; g.n * g.c_out * g.out_h() * g.out_w()];
                forward(&g, &x, &wt, bias, &mut y);
                assert_close("y", &g, &y, &naive(&g, &x, &wt, bias));
            }
        }
    }

    /// Backward-data and backward-weight (and the bias gradient) against the
    /// adjoints of the direct convolution in f64, outputs starting as NaN.
    #[test]
    fn backward_matches_direct_convolution() {
        let mut rng = Rng::new(6);
        for shape in SHAPES {
            let g = geom(shape);
            let mut draw =
                |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect() };
            let (x_len, w_len) = (
                g.n * g.c_in * g.h * g.w,
                g.c_out * g.c_in_per_group() * g.kh * g.kw,
            );
            let ohw = g.out_h() * g.out_w();
            let x = draw(x_len);
            let wt = draw(w_len);
            let dy = draw(g.n * g.c_out * ohw);
            let (mut want_dx, mut want_dw) = (vec![0.0f64; x_len], vec![0.0f64; w_len]);
            let mut abs_dw = vec![0.0f64; w_len];
            each_tap(&g, |xi, wi, yi| {
                want_dx[xi] += dy[yi] as f64 * wt[wi] as f64;
                want_dw[wi] += dy[yi] as f64 * x[xi] as f64;
                abs_dw[wi] += (dy[yi] as f64 * x[xi] as f64).abs();
            });
            let mut want_db = vec![0.0f64; g.c_out];
            for (i, &v) in dy.iter().enumerate() {
                want_db[i / ohw % g.c_out] += v as f64;
            }
            let mut dx = vec![f32::NAN; x_len];
            backward_data(&g, &dy, &wt, &mut dx);
            assert_close("dx", &g, &dx, &want_dx);
            let (mut dw, mut db) = (vec![f32::NAN; w_len], vec![f32::NAN; g.c_out]);
            backward_weight(&g, &x, &dy, &mut dw, Some(&mut db));
            assert_within("dw", &g, &dw, &want_dw, &abs_dw);
            assert_close("db", &g, &db, &want_db);
        }
    }

    /// The implicit forward pass gives the bits of the im2col one: the same
    /// products in the same order, zeros where a tap falls outside.
    #[test]
    fn implicit_forward_gives_the_lowered_bits() {
        let mut rng = Rng::new(8);
        let mut seen = 0;
        for shape in SHAPES
            .into_iter()
            .filter(|&s| implicit(&geom(s)) || phased(&geom(s)))
        {
            let g = geom(shape);
            let mut draw =
                |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect() };
            let x = draw(g.n * g.c_in * g.h * g.w);
            let wt = draw(g.c_out * g.c_in_per_group() * g.kh * g.kw);
            let b = draw(g.c_out);
            let len = g.n * g.c_out * g.out_h() * g.out_w();
            let (mut y, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            forward_implicit(&g, &x, &wt, Some(&b), &mut y);
            forward_lowered(&g, &x, &wt, Some(&b), &mut want);
            let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{g:?}: implicit and lowered forward differ");
            seen += 1;
        }
        assert!(seen >= 9, "only {seen} implicit shapes");
    }

    /// A forward output element does not depend on the batch it is computed
    /// in (jobs of other sizes, other bands): one image alone gives the same
    /// bits as in a batch of 40.
    #[test]
    fn forward_bits_do_not_depend_on_the_batch() {
        let mut rng = Rng::new(7);
        for shape in SHAPES {
            let g = geom(shape);
            let g40 = Conv2dGeom { n: 40, ..g };
            let x_img = g.c_in * g.h * g.w;
            let y_img = g.c_out * g.out_h() * g.out_w();
            let x: Vec<f32> = (0..40 * x_img).map(|_| rng.uniform() * 2.0 - 1.0).collect();
            let wt: Vec<f32> = (0..g.c_out * g.c_in_per_group() * g.kh * g.kw)
                .map(|_| rng.uniform() - 0.5)
                .collect();
            let b: Vec<f32> = (0..g.c_out).map(|_| rng.uniform()).collect();
            let mut y40 = vec![0.0f32; 40 * y_img];
            forward(&g40, &x, &wt, Some(&b), &mut y40);
            for i in [0, 17, 39] {
                let g1 = Conv2dGeom { n: 1, ..g };
                let mut y1 = vec![0.0f32; y_img];
                forward(&g1, &x[i * x_img..][..x_img], &wt, Some(&b), &mut y1);
                let want = &y40[i * y_img..][..y_img];
                let same = y1.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{g:?}: image {i} alone differs from its batch");
            }
        }
    }
}
