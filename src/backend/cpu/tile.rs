//! Register-tiled SGEMM micro-kernels for the convolution lowering, one build
//! per instruction set ([`Isa`]), in two forms:
//!
//! - *Broadcast* (`C = A B`, the reduction dimension outer in both
//!   operands): `A` packed in panels of `MR` rows (`a[k * MR + i]`); each step broadcasts `MR`
//!   values of `A` against `NR / LANES` vectors of `B` into an `MR x NR`
//!   block of accumulators held in registers. `B` is row-major (row stride
//!   `ldb`): a tile reads `NR` consecutive floats of each of its rows.
//!   Forward and backward-data convolutions, `B` the column buffer or `dy`.
//! - *Dot* (`C += A Bᵀ`, the reduction dimension contiguous in both
//!   operands): `DR x DC` dot products at once, each kept as 16 lane partial
//!   sums and reduced at the end. Backward-weight, where both `dy` and the
//!   column buffer run along output positions.
//!
//! Summation order (bit reproducibility): a broadcast-kernel output element
//! is one chain of fused multiply-adds over `k = 0, 1, ...` (continued from
//! its previous value when accumulating), whatever the tile shape, so every
//! build and every blocking gives the same bits. A dot-kernel element keeps
//! 16 lane partials (`lane = k % 16`; the AVX2 build holds them in two
//! registers) added in a fixed tree: also the same bits in every build.

use super::isa::Isa;

/// Lanes of the dot kernel's partial sums (in every build).
pub const DOT_LANES: usize = 16;

/// `dst[..src.len()] = src` for the short runs of the convolution layouts
/// (image rows, tile rows): fixed-size block moves, which the compiler
/// inlines, instead of a `memmove` call whose set-up costs as much as
/// moving a 28-float row.
#[inline(always)]
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn blocks<const B: usize>(dst: &mut [f32], src: &[f32]) {
        // Whole blocks, then one block ending at the last element (it may
        // overlap the previous one); `src.len() >= B`.
        let n = src.len();
        let mut i = 0;
        while i + B <= n {
            dst[i..i + B].copy_from_slice(&src[i..i + B]);
            i += B;
        }
        if i < n {
            dst[n - B..n].copy_from_slice(&src[n - B..]);
        }
    }
    let n = src.len();
    let dst = &mut dst[..n];
    match n {
        16.. => blocks::<16>(dst, src),
        8.. => blocks::<8>(dst, src),
        4.. => blocks::<4>(dst, src),
        // At most three elements: moved one by one.
        _ => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v),
    }
}

/// Rows and columns of the broadcast kernel's tile on this processor.
pub fn broadcast_tile() -> (usize, usize) {
    broadcast_tile_on(Isa::detected())
}

fn broadcast_tile_on(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (8, 48),
        Isa::Avx2Fma => (4, 24),
        Isa::Portable => (4, 16),
    }
}

/// Rows (of `A`) and columns (rows of `B`) of the dot kernel's tile.
fn dot_tile_on(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (4, 6),
        Isa::Avx2Fma => (3, 2),
        Isa::Portable => (2, 2),
    }
}

/// Packs rows `0..m` of the row-major `src` (element `(i, k)` at
/// `src[i * rs + k * cs]`, `k < kk`) into zero-padded panels of `mr` rows:
/// element `(i, k)` at `dst[(i / mr) * kk * mr + k * mr + i % mr]`.
pub fn pack_rows(
    src: &[f32],
    (rs, cs): (usize, usize),
    m: usize,
    kk: usize,
    mr: usize,
) -> Vec<f32> {
    let panels = m.div_ceil(mr);
    let mut dst = vec![0.0f32; panels * kk * mr];
    for (p, panel) in dst.chunks_exact_mut(kk * mr).enumerate() {
        for i in 0..mr.min(m - p * mr) {
            let row = p * mr + i;
            for k in 0..kk {
                panel[k * mr + i] = src[row * rs + k * cs];
            }
        }
    }
    dst
}

/// Where a GEMM's `C` lives in a larger buffer. Column `j` falls in
/// segment `s = j / seg` at `r = j % seg`, which is row `y = r / pitch`,
/// column `x = r % pitch` of that segment; only `x < width` and `y < height`
/// are stored, element `(i, j)` at
/// `c0 + s * seg_stride + i * ldc + y * width + x`. So `C` may be
/// row-major with row stride `ldc` ([`Dest::rows`]), a band of NCHW images
/// side by side ([`Dest::images`]: `seg` positions of each, images
/// `seg_stride` apart, `ldc` the plane size), or images computed on a
/// padded grid ([`Dest::padded`]) whose pad columns and rows are dropped.
#[derive(Clone, Copy, Debug)]
pub struct Dest {
    pub c0: usize,
    pub ldc: usize,
    pub seg: usize,
    pub seg_stride: usize,
    pub pitch: usize,
    pub width: usize,
    pub height: usize,
}

impl Dest {
    pub fn rows(ldc: usize) -> Dest {
        Dest::images(0, ldc, usize::MAX, 0)
    }

    pub fn images(c0: usize, ldc: usize, seg: usize, seg_stride: usize) -> Dest {
        Dest {
            c0,
            ldc,
            seg,
            seg_stride,
            pitch: seg,
            width: seg,
            height: 1,
        }
    }

    /// Images on a grid of `height` rows of `pitch` columns each, `seg`
    /// columns apart, of which `width` columns of the first `height` rows
    /// are stored (densely, `height * width` per image plane).
    pub fn padded(
        c0: usize,
        ldc: usize,
        (seg, seg_stride): (usize, usize),
        (pitch, width, height): (usize, usize, usize),
    ) -> Dest {
        Dest {
            c0,
            ldc,
            seg,
            seg_stride,
            pitch,
            width,
            height,
        }
    }

    /// Where column `j` of row 0 is stored, and how many columns from
    /// `j` on are stored contiguously after it; or how many to skip.
    fn run(&self, j: usize) -> Result<(usize, usize), usize> {
        let (s, r) = (j / self.seg, j % self.seg);
        let (y, x) = (r / self.pitch, r % self.pitch);
        if y >= self.height {
            Err(self.seg - r)
        } else if x >= self.width {
            Err(self.pitch - x)
        } else {
            let at = self.c0 + s * self.seg_stride + y * self.width + x;
            Ok((at, (self.width - x).min(self.seg - r)))
        }
    }
}

/// The rows of a broadcast GEMM's `B` in its buffer: row `k` starts at
/// `k * ldb` ([`BRows::Strided`]) or at `offsets[k]` (rows that overlap,
/// as the shifted views of one padded image in an implicit convolution).
#[derive(Clone, Copy, Debug)]
pub enum BRows<'a> {
    Strided(usize),
    Offsets(&'a [usize]),
}

/// `C = A B + bias` (`bias[i]` added to row `i` after the sum, when given)
/// for `A` of `m` rows packed by [`pack_rows`] with the [`broadcast_tile`]
/// height and `B` of `n` columns whose rows lie in its buffer as `rows`
/// says; each row must be readable up to `n` rounded up to the tile width
/// (the last tiles read, and drop, the columns up to there). Whole tiles
/// stored contiguously in `dest` are stored by the kernel; the others
/// through a scratch tile.
pub fn broadcast_gemm(
    dims: (usize, usize, usize),
    a: &[f32],
    b: (&[f32], BRows),
    c: (&mut [f32], Dest),
    bias: Option<&[f32]>,
) {
    broadcast_gemm_on(Isa::detected(), dims, a, b, c, bias)
}

fn broadcast_gemm_on(
    isa: Isa,
    (m, n, kk): (usize, usize, usize),
    a: &[f32],
    (b, rows): (&[f32], BRows),
    (c, dest): (&mut [f32], Dest),
    bias: Option<&[f32]>,
) {
    assert!(isa.supported(), "broadcast_gemm: {isa:?} does not run here");
    let (mr, nr) = broadcast_tile_on(isa);
    let (mp, np) = (m.div_ceil(mr), n.div_ceil(nr));
    let strided: Vec<usize>;
    let offsets = match rows {
        BRows::Strided(ldb) => {
            assert!(ldb >= np * nr, "broadcast_gemm: row stride below the tiles");
            strided = (0..kk).map(|k| k * ldb).collect();
            &strided[..]
        }
        BRows::Offsets(o) => &o[..kk],
    };
    let last = offsets.iter().max().map_or(0, |&o| o + np * nr);
    assert!(
        a.len() >= mp * kk * mr && b.len() >= last && bias.is_none_or(|b| b.len() >= m),
        "broadcast_gemm: short operands"
    );
    let mut tile = [0.0f32; 8 * 48];
    let mut runs: Vec<(usize, usize, usize)> = Vec::with_capacity(nr);
    for jp in 0..np {
        let j0 = jp * nr;
        let nv = nr.min(n - j0);
        // The stored runs of this column tile: (tile column, at, len).
        runs.clear();
        let mut j = j0;
        while j < j0 + nv {
            match dest.run(j) {
                Ok((at, len)) => {
                    let len = len.min(j0 + nv - j);
                    runs.push((j - j0, at, len));
                    j += len;
                }
                Err(skip) => j += skip,
            }
        }
        let whole_cols = runs.len() == 1 && runs[0].2 == nr;
        for ip in 0..mp {
            let i0 = ip * mr;
            let mv = mr.min(m - i0);
            let mut add = [0.0f32; 8];
            if let Some(bias) = bias {
                add[..mv].copy_from_slice(&bias[i0..i0 + mv]);
            }
            let whole = whole_cols && mv == mr;
            let (out, ldc) = if whole {
                let at = runs[0].1 + i0 * dest.ldc;
                assert!(
                    at + (mr - 1) * dest.ldc + nr <= c.len(),
                    "broadcast_gemm: C too small"
                );
                (c[at..].as_mut_ptr(), dest.ldc)
            } else {
                (tile.as_mut_ptr(), nr)
            };
            let a_panel = a[ip * kk * mr..].as_ptr();
            let b_panel = (b[j0..].as_ptr(), offsets.as_ptr());
            // SAFETY: `a_panel` holds `kk` steps of `mr` values and every
            // row of `b_panel` `nr` floats (the asserts above), `out` `mr`
            // rows of `nr` at stride `ldc` (the second, or the scratch
            // tile), and `isa` runs on this processor (the first assert).
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => x86::broadcast_avx512(kk, a_panel, b_panel, (out, ldc), &add),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2Fma => x86::broadcast_avx2(kk, a_panel, b_panel, (out, ldc), &add),
                    _ => broadcast_portable(kk, a_panel, b_panel, (out, ldc), &add),
                }
            }
            if !whole {
                for t in 0..mv {
                    let row = &tile[t * nr..][..nr];
                    for &(jt, at, len) in &runs {
                        let at = at + (i0 + t) * dest.ldc;
                        copy_short(&mut c[at..at + len], &row[jt..jt + len]);
                    }
                }
            }
        }
    }
}

/// Floats of the lane partials of an `m x n` block of dot products
/// ([`dot_accumulate`]), to be zeroed before the first use.
pub fn dot_partials_len(m: usize, n: usize) -> usize {
    dot_partials_len_on(Isa::detected(), m, n)
}

fn dot_partials_len_on(isa: Isa, m: usize, n: usize) -> usize {
    let (dr, dc) = dot_tile_on(isa);
    m.next_multiple_of(dr) * n.next_multiple_of(dc) * DOT_LANES
}

/// Adds `Σ_k A[i][k] B[j][k]` (`i < m`, `j < n`, `k < kp`; `A` rows at
/// `a[i * lda..]`, `B` rows placed as [`BRows`] says) to the lane partials of
/// `(i, j)`: lane `l` takes the `k` with `k % 16 == l`. `kp` must be a
/// multiple of [`DOT_LANES`] (pad both operands with zeros). Call it once
/// per block of `k`, then [`dot_reduce`] once.
pub fn dot_accumulate(
    dims: (usize, usize, usize),
    a: (&[f32], usize),
    b: (&[f32], BRows),
    partials: &mut [f32],
) {
    dot_accumulate_on(Isa::detected(), dims, a, b, partials)
}

fn dot_accumulate_on(
    isa: Isa,
    (m, n, kp): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, b_at): (&[f32], BRows),
    partials: &mut [f32],
) {
    assert!(isa.supported(), "dot_accumulate: {isa:?} does not run here");
    assert_eq!(
        kp % DOT_LANES,
        0,
        "dot_accumulate: k not padded to the lanes"
    );
    if m == 0 || n == 0 {
        return;
    }
    let b_row = |j: usize| match b_at {
        BRows::Strided(ldb) => j * ldb,
        BRows::Offsets(o) => o[j],
    };
    let b_last = (0..n).map(b_row).max().unwrap_or(0) + kp;
    assert!(
        a.len() >= (m - 1) * lda + kp
            && b.len() >= b_last
            && partials.len() >= dot_partials_len_on(isa, m, n),
        "dot_accumulate: buffers too small"
    );
    let (dr, dc) = dot_tile_on(isa);
    let row_stride = n.next_multiple_of(dc) * DOT_LANES;
    // Rows past the edge repeat the last one, into the partials' padding.
    let rows = |i0: usize, count: usize, len: usize, at: &dyn Fn(usize) -> usize| -> [usize; 6] {
        std::array::from_fn(|t| {
            if t < count {
                at((i0 + t).min(len - 1))
            } else {
                0
            }
        })
    };
    let tile = |i0: usize, j0: usize, partials: &mut [f32]| {
        let (a_rows, b_rows) = (rows(i0, dr, m, &|i| i * lda), rows(j0, dc, n, &b_row));
        let p = partials[i0 * row_stride + j0 * DOT_LANES..].as_mut_ptr();
        let (a, b) = ((a.as_ptr(), &a_rows), (b.as_ptr(), &b_rows));
        // SAFETY: every row offset plus `kp` is inside its operand and
        // the `dr x dc` partials from `p` (row stride `row_stride`) are
        // inside `partials` (the assert above; padded to whole tiles);
        // `isa` runs on this processor (the first assert).
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => x86::dot_avx512(kp, a, b, (p, row_stride)),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => x86::dot_avx2(kp, a, b, (p, row_stride)),
                _ => dot_portable::<2, 2>(kp, a, b, (p, row_stride)),
            }
        }
    };
    // Shifted views (`Offsets`) of a grid share most of their floats, so a
    // few grid channels cover many tiles of B: keep the A tile in L1 and
    // stream B. Strided rows are distinct: keep the B tile and stream A.
    // Each tile's partials are independent, so the order changes no bits.
    if matches!(b_at, BRows::Offsets(_)) {
        for i0 in (0..m).step_by(dr) {
            for j0 in (0..n).step_by(dc) {
                tile(i0, j0, partials);
            }
        }
    } else {
        for j0 in (0..n).step_by(dc) {
            for i0 in (0..m).step_by(dr) {
                tile(i0, j0, partials);
            }
        }
    }
}

/// `dst[j * ds + i] = src[i * ss + j]` for `i < rows`, `j < cols`: the
/// layout changes of the channels-last backward-weight, with 8x8 (then
/// 4x8) AVX transposes for whole blocks where the processor has AVX.
pub fn transpose(
    (src, ss): (&[f32], usize),
    (rows, cols): (usize, usize),
    (dst, ds): (&mut [f32], usize),
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        src.len() >= (rows - 1) * ss + cols && dst.len() >= (cols - 1) * ds + rows,
        "transpose: buffers too small"
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if Isa::detected() != Isa::Portable {
        while done + 8 <= rows {
            let mut j = 0;
            while j + 8 <= cols {
                // SAFETY: rows `done..done + 8` of 8 floats from `j` are in
                // `src`, and rows `j..j + 8` of 8 from `done` in `dst` (the
                // assert above); AVX2 or AVX-512 implies AVX.
                unsafe {
                    t8x8(
                        src[done * ss + j..].as_ptr(),
                        ss,
                        dst[j * ds + done..].as_mut_ptr(),
                        ds,
                    )
                };
                j += 8;
            }
            for j in j..cols {
                for i in done..done + 8 {
                    dst[j * ds + i] = src[i * ss + j];
                }
            }
            done += 8;
        }
        // Four rows (AVX2's panels of `dy` are four rows high).
        if done + 4 <= rows {
            let mut j = 0;
            while j + 8 <= cols {
                // SAFETY: as above, for rows `done..done + 4`.
                unsafe {
                    t4x8(
                        src[done * ss + j..].as_ptr(),
                        ss,
                        dst[j * ds + done..].as_mut_ptr(),
                        ds,
                    )
                };
                j += 8;
            }
            for j in j..cols {
                for i in done..done + 4 {
                    dst[j * ds + i] = src[i * ss + j];
                }
            }
            done += 4;
        }
    }
    for j in 0..cols {
        for i in done..rows {
            dst[j * ds + i] = src[i * ss + j];
        }
    }
}

/// 8x8 transpose: row `i` of the output (at `dst + i * ds`) is column `i`
/// of the input (rows at `src + i * ss`).
///
/// # Safety
/// The eight rows of eight floats must be readable / writable, and the
/// processor must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(super) unsafe fn t8x8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let o = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, v) in o.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ds), v);
        }
    }
}

/// 4x8 transpose: row `j < 8` of the output (4 floats at `dst + j * ds`)
/// is column `j` of the input (4 rows of 8 at `src + i * ss`).
///
/// # Safety
/// As [`t8x8`], for four rows of eight floats in and eight rows of four
/// out.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn t4x8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let r: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        // Columns (j, j + 4) in the low and high halves.
        let u = [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
        ];
        for (j, v) in u.into_iter().enumerate() {
            _mm_storeu_ps(dst.add(j * ds), _mm256_castps256_ps128(v));
            _mm_storeu_ps(dst.add((j + 4) * ds), _mm256_extractf128_ps::<1>(v));
        }
    }
}

/// `C[i][j] += ` the lane sum of the partials of `(i, j)` ([`lane_tree`]),
/// `C` row-major with row stride `ldc`.
pub fn dot_reduce(dims: (usize, usize), partials: &[f32], c: (&mut [f32], usize)) {
    dot_reduce_on(Isa::detected(), dims, partials, c)
}

fn dot_reduce_on(
    isa: Isa,
    (m, n): (usize, usize),
    partials: &[f32],
    (c, ldc): (&mut [f32], usize),
) {
    let (_, dc) = dot_tile_on(isa);
    let row_stride = n.next_multiple_of(dc) * DOT_LANES;
    for i in 0..m {
        for j in 0..n {
            let lanes = &partials[i * row_stride + j * DOT_LANES..][..DOT_LANES];
            c[i * ldc + j] += lane_tree(lanes.try_into().unwrap());
        }
    }
}

/// Adds 16 lane partials in the fixed tree of every build: halves folded
/// onto each other (lane `l` plus lane `l + 8`, then `+ 4`, `+ 2`, `+ 1`).
/// The depthwise backward-weight reduces its lanes with it too.
#[inline(always)]
pub(super) fn lane_tree(mut v: [f32; DOT_LANES]) -> f32 {
    let mut half = DOT_LANES / 2;
    while half > 0 {
        for l in 0..half {
            v[l] += v[l + half];
        }
        half /= 2;
    }
    v[0]
}

/// 4 x 16 tile in plain loops (`mul_add`: a fused multiply-add, as in the
/// vector builds).
///
/// # Safety
/// As [`x86::broadcast_avx512`] for a 4 x 16 tile.
unsafe fn broadcast_portable(
    kk: usize,
    a: *const f32,
    (b, rows): (*const f32, *const usize),
    (c, ldc): (*mut f32, usize),
    add: &[f32; 8],
) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0.0f32; NR]; MR];
    for k in 0..kk {
        let (av, bv) = (a.add(k * MR), b.add(*rows.add(k)));
        for (i, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*av.add(i)).mul_add(*bv.add(j), *v);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            *c.add(i * ldc + j) = v + add[i];
        }
    }
}

/// `R x C` dot products in plain loops, 16 lane partials each.
///
/// # Safety
/// As [`x86::dot_avx512`] for an `R x C` tile.
unsafe fn dot_portable<const R: usize, const C: usize>(
    kp: usize,
    (a, a_rows): (*const f32, &[usize; 6]),
    (b, b_rows): (*const f32, &[usize; 6]),
    (p, ps): (*mut f32, usize),
) {
    for (i, &ar) in a_rows.iter().take(R).enumerate() {
        for (j, &br) in b_rows.iter().take(C).enumerate() {
            let part = p.add(i * ps + j * DOT_LANES);
            for k in (0..kp).step_by(DOT_LANES) {
                for l in 0..DOT_LANES {
                    let (x, y) = (*a.add(ar + k + l), *b.add(br + k + l));
                    *part.add(l) = x.mul_add(y, *part.add(l));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::DOT_LANES;
    use std::arch::x86_64::*;

    /// One build of the broadcast kernel: `MR` rows of `NV` vectors of `L`
    /// lanes, `kk` steps (row `k` of `B` at `b + rows[k]`) of one load per
    /// vector of `B`, one broadcast per
    /// row of `A` and `MR * NV` FMAs; `add[i]` added to row `i` on the way
    /// out.
    macro_rules! broadcast_kernel {
        ($(#[$doc:meta])* $name:ident, $feat:literal, $mr:literal, $nv:literal, $l:literal,
         $vec:ty, $zero:ident, $load:ident, $set1:ident, $fma:ident, $add:ident, $store:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(
                kk: usize,
                a: *const f32,
                (b, rows): (*const f32, *const usize),
                (c, ldc): (*mut f32, usize),
                add: &[f32; 8],
            ) {
                const MR: usize = $mr;
                const NV: usize = $nv;
                const L: usize = $l;
                let mut acc = [[$zero(); NV]; MR];
                let mut ap = a;
                for k in 0..kk {
                    let bp = b.add(*rows.add(k));
                    let bv: [$vec; NV] = std::array::from_fn(|v| $load(bp.add(v * L)));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = $set1(*ap.add(i));
                        for (v, r) in row.iter_mut().enumerate() {
                            *r = $fma(av, bv[v], *r);
                        }
                    }
                    ap = ap.add(MR);
                }
                for (i, row) in acc.iter().enumerate() {
                    let bias = $set1(add[i]);
                    for (v, r) in row.iter().enumerate() {
                        $store(c.add(i * ldc + v * L), $add(*r, bias));
                    }
                }
            }
        };
    }

    broadcast_kernel!(
        /// 8 x 48 tile: 24 accumulators, 3 loads of `B` and 8 broadcasts of
        /// `A` per 24 FMAs.
        ///
        /// # Safety
        /// `a` holds `kk * 8` floats, `rows` `kk` offsets, each `b + rows[k]`
        /// 48 floats,
        /// `c` 8 rows of 48 at stride `ldc`; the processor runs AVX-512F.
        broadcast_avx512, "avx512f", 8, 3, 16, __m512, _mm512_setzero_ps, _mm512_loadu_ps,
        _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps
    );

    broadcast_kernel!(
        /// 4 x 24 tile: 12 accumulators, 3 loads of `B` and 4 broadcasts of
        /// `A` per 12 FMAs.
        ///
        /// # Safety
        /// As [`broadcast_avx512`] for 4 x 24 (`a` holds `kk * 4`); the
        /// processor runs AVX2 and FMA.
        broadcast_avx2, "avx2,fma", 4, 3, 8, __m256, _mm256_setzero_ps, _mm256_loadu_ps,
        _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps
    );

    /// 4 x 6 dot products, one register of 16 lane partials each, loaded
    /// from and stored back to the partials at `p` (row stride `ps`).
    ///
    /// # Safety
    /// `a + a_rows[i]` (`i < 4`) and `b + b_rows[j]` (`j < 6`) hold `kp`
    /// floats; `p + i * ps + j * 16` 16 floats; AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(
        kp: usize,
        (a, a_rows): (*const f32, &[usize; 6]),
        (b, b_rows): (*const f32, &[usize; 6]),
        (p, ps): (*mut f32, usize),
    ) {
        const R: usize = 4;
        const C: usize = 6;
        let part = |i: usize, j: usize| p.add(i * ps + j * DOT_LANES);
        let mut acc: [[__m512; C]; R] =
            std::array::from_fn(|i| std::array::from_fn(|j| _mm512_loadu_ps(part(i, j))));
        for k in (0..kp).step_by(DOT_LANES) {
            let av: [__m512; R] = std::array::from_fn(|i| _mm512_loadu_ps(a.add(a_rows[i] + k)));
            for j in 0..C {
                let bv = _mm512_loadu_ps(b.add(b_rows[j] + k));
                for i in 0..R {
                    acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm512_storeu_ps(part(i, j), *v);
            }
        }
    }

    /// 3 x 2 dot products, each as two registers of 8 lanes (lanes 0-7 and
    /// 8-15 of the 16 partials).
    ///
    /// # Safety
    /// As [`dot_avx512`] for `i < 3`, `j < 2`; AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // `h` picks the half in `acc` and in memory
    pub(super) unsafe fn dot_avx2(
        kp: usize,
        (a, a_rows): (*const f32, &[usize; 6]),
        (b, b_rows): (*const f32, &[usize; 6]),
        (p, ps): (*mut f32, usize),
    ) {
        const R: usize = 3;
        const C: usize = 2;
        let part = |i: usize, j: usize, h: usize| p.add(i * ps + j * DOT_LANES + h * 8);
        let mut acc: [[[__m256; 2]; C]; R] = std::array::from_fn(|i| {
            std::array::from_fn(|j| std::array::from_fn(|h| _mm256_loadu_ps(part(i, j, h))))
        });
        for k in (0..kp).step_by(DOT_LANES) {
            for h in 0..2 {
                let o = k + h * 8;
                let av: [__m256; R] =
                    std::array::from_fn(|i| _mm256_loadu_ps(a.add(a_rows[i] + o)));
                for j in 0..C {
                    let bv = _mm256_loadu_ps(b.add(b_rows[j] + o));
                    for i in 0..R {
                        acc[i][j][h] = _mm256_fmadd_ps(av[i], bv, acc[i][j][h]);
                    }
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, halves) in row.iter().enumerate() {
                for (h, v) in halves.iter().enumerate() {
                    _mm256_storeu_ps(part(i, j, h), *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn draw(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    /// Every build of the broadcast kernel gives, bit for bit, one fused
    /// multiply-add chain per element over `k` in order, plus the bias:
    /// edge tiles in both dimensions, segments (images side by side) that
    /// split tiles, padded grids whose pad columns and rows are dropped,
    /// `B` rows given as overlapping offsets, and a destination larger than
    /// `C` left untouched outside it.
    #[test]
    fn broadcast_gemm_is_one_fma_chain_per_element_in_every_build() {
        let mut rng = Rng::new(11);
        // m, n, kk, seg, (pitch, width, height) of the grid, offset rows
        for (m, n, kk, seg, grid, shifted) in [
            (8usize, 48usize, 5usize, usize::MAX, None, false),
            (13, 100, 37, 49, None, false),
            (3, 7, 1, 3, None, true),
            (16, 96, 144, 96, None, false),
            // 7x7 images on an 8-wide grid with one pad row: 64 per image
            (9, 3 * 64 - 8, 20, 64, Some((8usize, 7usize, 7usize)), true),
            (8, 48, 3, 48, Some((6, 6, 8)), true),
            (5, 2 * 30 - 5, 11, 30, Some((5, 3, 4)), false),
        ] {
            let a = draw(&mut rng, m * kk);
            let ldb = n.next_multiple_of(48);
            let offsets: Vec<usize> = (0..kk)
                .map(|k| {
                    if shifted {
                        (k * 7) % 23 + k / 3
                    } else {
                        k * ldb
                    }
                })
                .collect();
            let b = draw(&mut rng, offsets.iter().max().unwrap() + ldb);
            let bias = draw(&mut rng, m);
            let images = n.div_ceil(seg.min(n));
            let (pitch, width, height) = grid.unwrap_or((seg.min(n), seg.min(n), 1));
            let plane = width * height;
            let seg_stride = m * plane + 5;
            let dest = Dest::padded(3, plane, (seg, seg_stride), (pitch, width, height));
            // Where `(i, j)` is stored, if it is.
            let place = |i: usize, j: usize| -> Option<usize> {
                let (s, r) = (j / seg, j % seg);
                let (y, x) = (r / pitch, r % pitch);
                (y < height && x < width).then(|| 3 + s * seg_stride + i * plane + y * width + x)
            };
            let len = 3 + images * seg_stride;
            let mut want = vec![f32::NAN; len];
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0.0f32;
                    for (k, &o) in offsets.iter().enumerate() {
                        acc = a[i * kk + k].mul_add(b[o + j], acc);
                    }
                    if let Some(at) = place(i, j) {
                        want[at] = acc + bias[i];
                    }
                }
            }
            let rows = if shifted {
                BRows::Offsets(&offsets)
            } else {
                BRows::Strided(ldb)
            };
            for isa in Isa::available() {
                let (mr, _) = broadcast_tile_on(isa);
                let packed = pack_rows(&a, (kk, 1), m, kk, mr);
                let mut c = vec![f32::NAN; len];
                broadcast_gemm_on(
                    isa,
                    (m, n, kk),
                    &packed,
                    (&b, rows),
                    (&mut c, dest),
                    Some(&bias),
                );
                for (t, (&got, &w)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        got.to_bits() == w.to_bits() || (got.is_nan() && w.is_nan()),
                        "{isa:?} {m}x{n}x{kk}: c[{t}] = {got}, want {w}"
                    );
                }
            }
        }
    }

    /// Every build of the dot kernel gives the same bits as 16 lane
    /// partials of fused multiply-adds (`lane = k % 16`, across two calls)
    /// added in the fixed tree, on edge tiles in both dimensions, with `B`
    /// rows strided or at overlapping offsets.
    /// The blocked transpose moves every element to its place, whole 8x8
    /// blocks and edges alike, and writes nothing else.
    #[test]
    fn transpose_moves_every_element() {
        for (rows, cols, ss, ds) in [
            (8, 8, 8, 8),
            (19, 13, 21, 24),
            (3, 30, 30, 8),
            (16, 49, 49, 16),
            (4, 20, 20, 4),
            (13, 17, 19, 16),
        ] {
            let src: Vec<f32> = (0..(rows - 1) * ss + cols).map(|v| v as f32).collect();
            let mut dst = vec![-1.0f32; (cols - 1) * ds + rows + 5];
            transpose((&src, ss), (rows, cols), (&mut dst, ds));
            for (at, &v) in dst.iter().enumerate() {
                let (j, i) = (at / ds, at % ds);
                let want = if j < cols && i < rows {
                    src[i * ss + j]
                } else {
                    -1.0
                };
                assert_eq!(v, want, "{rows}x{cols} (ss {ss}, ds {ds}) at {at}");
            }
        }
    }

    #[test]
    fn dot_kernel_lanes_and_tree_are_the_same_in_every_build() {
        let mut rng = Rng::new(12);
        for (m, n, kp, shifted) in [
            (4usize, 6usize, 16usize, false),
            (7, 13, 48, true),
            (1, 1, 32, false),
            (16, 144, 64, false),
            (9, 27, 80, true),
        ] {
            let lda = kp + 3;
            let offsets: Vec<usize> = (0..n)
                .map(|j| {
                    if shifted {
                        (j * 5) % 17 + j / 2
                    } else {
                        j * (kp + 1)
                    }
                })
                .collect();
            let a = draw(&mut rng, m * lda);
            let b = draw(&mut rng, offsets.iter().max().unwrap() + kp);
            let half = kp / 2 / DOT_LANES * DOT_LANES;
            let mut want = vec![0.5f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut lanes = [0.0f32; DOT_LANES];
                    for k in 0..kp {
                        let l = k % DOT_LANES;
                        lanes[l] = a[i * lda + k].mul_add(b[offsets[j] + k], lanes[l]);
                    }
                    want[i * n + j] += lane_tree(lanes);
                }
            }
            for isa in Isa::available() {
                let mut parts = vec![0.0f32; dot_partials_len_on(isa, m, n)];
                // Two blocks of k: the partials carry over.
                let b_rows = if shifted {
                    BRows::Offsets(&offsets)
                } else {
                    BRows::Strided(kp + 1)
                };
                dot_accumulate_on(isa, (m, n, half), (&a, lda), (&b, b_rows), &mut parts);
                dot_accumulate_on(
                    isa,
                    (m, n, kp - half),
                    (&a[half..], lda),
                    (&b[half..], b_rows),
                    &mut parts,
                );
                let mut c = vec![0.5f32; m * n];
                dot_reduce_on(isa, (m, n), &parts, (&mut c, n));
                for (t, (&got, &w)) in c.iter().zip(&want).enumerate() {
                    assert_eq!(
                        got.to_bits(),
                        w.to_bits(),
                        "{isa:?} {m}x{n}x{kp}: c[{t}] = {got}, want {w}"
                    );
                }
            }
        }
    }
}
