//! Packed int8 GEMM with int32 accumulation, and R1 over a row of
//! accumulators: the fast core of the executor's QLinearConv.
//!
//! The product is `S[o][p] = sum_k w[o][k] * u[k][p]` with int8 weights `w`
//! and unsigned activations `u = x + 128` (the int8 input shifted to
//! 0..=255, which is what AVX-512 VNNI's `vpdpbusd`, u8 x s8, multiplies).
//! [`crate::executor::ops::ConvOp`] turns `S` into the spec's accumulator
//! with per-channel and per-pixel corrections (the identities are in
//! docs/INT8.md, "Fast convolution"). Every path computes the same exact
//! integers: `|S| <= 128 * 255 * K < 2^31` for `K <= 65000` (validation's
//! bound), every partial sum too, and no instruction used saturates
//! (`vpdpbusd`, not `vpdpbusds`; `vpmaddwd` on values that fit in 16 bits,
//! never `vpmaddubsw`, whose int16 pair sums saturate).
//!
//! Layouts (`K4 = ceil(K / 4)`, zero padded):
//! - weights of one block of [`MR`] output channels: `[K4][MR][4]` int8;
//! - one panel of [`PX`] output pixels: `[K4][PX][4]` uint8, i.e. the four
//!   consecutive `k` of a pixel side by side, which is one int32 lane of
//!   `vpdpbusd`.
//!
//! Three paths, chosen once at run time ([`Isa::best`]) and selectable for
//! tests ([`Isa::available`]): AVX-512 VNNI (`vpdpbusd`, 16 pixels per
//! register), AVX2 (`vpmaddwd` on the bytes zero-extended to int16, weights
//! sign-extended), and a portable scalar path. R1 ([`requant_row`]) has an
//! AVX-512 version that is the integer algorithm of
//! [`crate::quant::Requant::apply`] on 16 lanes; the other paths call
//! `Requant::apply`.

use crate::quant::Requant;
use std::sync::OnceLock;

/// Output channels per weight block (rows of the micro-kernel).
pub const MR: usize = 8;
/// Output pixels per activation panel (three 16-lane registers).
pub const PX: usize = 48;
/// Consecutive reduction indices per int32 lane.
pub const KG: usize = 4;

/// An instruction set the kernels can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512cd")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The paths this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest available path, or the one named by `QAT_EXECUTOR_ISA`
    /// (`scalar`, `avx2`, `avx512-vnni`; for benchmarks) when this CPU has
    /// it. Detected once.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let avail = Isa::available();
            std::env::var("QAT_EXECUTOR_ISA")
                .ok()
                .and_then(|v| avail.iter().copied().find(|i| i.name() == v))
                .unwrap_or(*avail.last().unwrap_or(&Isa::Scalar))
        })
    }
}

/// Weights of `groups` independent `[rows, k]` matrices, packed in blocks of
/// [`MR`] rows (see the module docs).
#[derive(Clone)]
pub struct PackedWeights {
    /// `ceil(k / 4)`.
    pub k4: usize,
    /// Blocks per group, `ceil(rows / MR)`.
    pub blocks: usize,
    data: Vec<i8>,
    /// The same values as int16 for the AVX2 path, made on its first use.
    wide: OnceLock<Vec<i16>>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeights {{ k4: {}, blocks: {}, {} bytes }}",
            self.k4,
            self.blocks,
            self.data.len()
        )
    }
}

impl PackedWeights {
    /// Packs `w` = `groups` consecutive row-major `[rows, k]` matrices.
    pub fn new(w: &[i8], groups: usize, rows: usize, k: usize) -> Self {
        debug_assert_eq!(w.len(), groups * rows * k);
        let (k4, blocks) = (k.div_ceil(KG), rows.div_ceil(MR));
        let block_len = k4 * MR * KG;
        let mut data = vec![0i8; groups * blocks * block_len];
        for g in 0..groups {
            for r in 0..rows {
                let (b, rr) = (r / MR, r % MR);
                let dst = &mut data[(g * blocks + b) * block_len..][..block_len];
                for (kk, &v) in w[(g * rows + r) * k..][..k].iter().enumerate() {
                    dst[((kk / KG) * MR + rr) * KG + kk % KG] = v;
                }
            }
        }
        PackedWeights {
            k4,
            blocks,
            data,
            wide: OnceLock::new(),
        }
    }

    /// Block `b` of group `g`: `[k4][MR][4]`.
    pub fn block(&self, g: usize, b: usize) -> &[i8] {
        let len = self.k4 * MR * KG;
        &self.data[(g * self.blocks + b) * len..][..len]
    }

    /// [`PackedWeights::block`] as int16.
    pub fn block16(&self, g: usize, b: usize) -> &[i16] {
        let len = self.k4 * MR * KG;
        let wide = self
            .wide
            .get_or_init(|| self.data.iter().map(|&v| v as i16).collect());
        &wide[(g * self.blocks + b) * len..][..len]
    }
}

/// `s[r][p] = sum_k w[r][k] * panel[k][p]` for block `b` of group `g`
/// and one panel, on the given path (an unavailable one runs the scalar
/// code).
pub fn block_product(
    isa: Isa,
    pw: &PackedWeights,
    g: usize,
    b: usize,
    panel: &[u8],
    s: &mut [[i32; PX]; MR],
) {
    let k4 = pw.k4;
    assert_eq!(panel.len(), k4 * PX * KG);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features were detected; the lengths match k4.
        Isa::Avx512Vnni if Isa::Avx512Vnni.is_available() => unsafe {
            x86::product_vnni(pw.block(g, b), panel, k4, s)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 if Isa::Avx2.is_available() => unsafe {
            x86::product_avx2(pw.block16(g, b), panel, k4, s)
        },
        _ => product_scalar(pw.block(g, b), panel, k4, s),
    }
}

fn product_scalar(w: &[i8], panel: &[u8], k4: usize, s: &mut [[i32; PX]; MR]) {
    *s = [[0; PX]; MR];
    for q in 0..k4 {
        let a = &panel[q * PX * KG..][..PX * KG];
        let wq = &w[q * MR * KG..][..MR * KG];
        for (r, row) in s.iter_mut().enumerate() {
            let wr: [i32; KG] = std::array::from_fn(|j| wq[r * KG + j] as i32);
            for (acc, u) in row.iter_mut().zip(a.chunks_exact(KG)) {
                *acc += wr[0] * u[0] as i32
                    + wr[1] * u[1] as i32
                    + wr[2] * u[2] as i32
                    + wr[3] * u[3] as i32;
            }
        }
    }
}

/// R1 of one output channel over a row of accumulators:
/// `out[i] = rq.apply(acc[i])`, bit for bit.
pub fn requant_row(isa: Isa, rq: &Requant, acc: &[i32], out: &mut [i8]) {
    assert_eq!(acc.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && Isa::Avx512Vnni.is_available() {
        // SAFETY: the features were detected above.
        unsafe { x86::requant_avx512(rq, acc, out) };
        return;
    }
    let _ = isa;
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = rq.apply(a);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KG, MR, PX};
    use crate::quant::Requant;
    use std::arch::x86_64::*;

    /// 48 pixels (3 registers) x 8 channels of `vpdpbusd`: 24 accumulators.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn product_vnni(w: &[i8], panel: &[u8], k4: usize, s: &mut [[i32; PX]; MR]) {
        let mut acc = [[_mm512_setzero_si512(); 3]; MR];
        let (mut ap, mut wp) = (panel.as_ptr(), w.as_ptr() as *const i32);
        for _ in 0..k4 {
            // SAFETY: the caller checked both lengths against k4.
            let a0 = _mm512_loadu_si512(ap as *const _);
            let a1 = _mm512_loadu_si512(ap.add(64) as *const _);
            let a2 = _mm512_loadu_si512(ap.add(128) as *const _);
            for (r, acc) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_epi32(wp.add(r).read_unaligned());
                acc[0] = _mm512_dpbusd_epi32(acc[0], a0, b);
                acc[1] = _mm512_dpbusd_epi32(acc[1], a1, b);
                acc[2] = _mm512_dpbusd_epi32(acc[2], a2, b);
            }
            ap = ap.add(PX * KG);
            wp = wp.add(MR);
        }
        for (row, acc) in s.iter_mut().zip(&acc) {
            for (v, a) in acc.iter().enumerate() {
                _mm512_storeu_si512(row.as_mut_ptr().add(16 * v) as *mut _, *a);
            }
        }
    }

    /// `vpmaddwd` on 4 pixels at a time: the panel's bytes zero-extended to
    /// int16 (lanes `p0:k0k1, p0:k2k3, p1:k0k1, ...`) times the block's four
    /// weights (int16, broadcast as one 64-bit value); the two lanes of a
    /// pixel are added at the end.
    #[target_feature(enable = "avx2")]
    pub unsafe fn product_avx2(w: &[i16], panel: &[u8], k4: usize, s: &mut [[i32; PX]; MR]) {
        for g in 0..PX / 4 {
            let mut acc = [_mm256_setzero_si256(); MR];
            let (mut ap, mut wp) = (panel.as_ptr().add(16 * g), w.as_ptr() as *const i64);
            for _ in 0..k4 {
                let a = _mm256_cvtepu8_epi16(_mm_loadu_si128(ap as *const _));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let b = _mm256_set1_epi64x(wp.add(r).read_unaligned());
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, b));
                }
                ap = ap.add(PX * KG);
                wp = wp.add(MR);
            }
            for (row, acc) in s.iter_mut().zip(&acc) {
                let mut t = [0i32; 8];
                _mm256_storeu_si256(t.as_mut_ptr() as *mut _, *acc);
                for i in 0..4 {
                    row[4 * g + i] = t[2 * i].wrapping_add(t[2 * i + 1]);
                }
            }
        }
    }

    /// `v / 2^sh` with round to nearest, ties to even, per 64-bit lane
    /// (`v < 2^62`, any `sh`; `sh >= 64` gives 0): `(v + max(half - 1 +
    /// odd, 0)) >> sh` with `half = 2^sh / 2` and `odd` the lowest bit of
    /// `v >> sh`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rne_shr_epi64(v: __m512i, sh: __m512i) -> __m512i {
        let one = _mm512_set1_epi64(1);
        let odd = _mm512_and_si512(_mm512_srlv_epi64(v, sh), one);
        let half = _mm512_srli_epi64(_mm512_sllv_epi64(one, sh), 1);
        let bias = _mm512_max_epi64(
            _mm512_add_epi64(_mm512_sub_epi64(half, one), odd),
            _mm512_setzero_si512(),
        );
        _mm512_srlv_epi64(_mm512_add_epi64(v, bias), sh)
    }

    /// The same on 32-bit lanes (`v <= 2^31`, `sh <= 8`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rne_shr_epi32(v: __m512i, sh: __m512i) -> __m512i {
        let one = _mm512_set1_epi32(1);
        let odd = _mm512_and_si512(_mm512_srlv_epi32(v, sh), one);
        let half = _mm512_srli_epi32(_mm512_sllv_epi32(one, sh), 1);
        let bias = _mm512_max_epi32(
            _mm512_add_epi32(_mm512_sub_epi32(half, one), odd),
            _mm512_setzero_si512(),
        );
        _mm512_srlv_epi32(_mm512_add_epi32(v, bias), sh)
    }

    /// Steps 2 and 3 of `Requant::apply` on 8 lanes of 64 bits: `a` is
    /// `fl32(|acc|)`'s significand (<= 2^24) and `k` its exponent.
    #[inline]
    #[target_feature(enable = "avx512f,avx512cd")]
    unsafe fn requant_half(a: __m512i, k: __m512i, mult: __m512i, exp: __m512i) -> __m512i {
        let zero = _mm512_setzero_si512();
        // 2. p = a * mult < 2^48, rounded to 24 bits: j = max(bits - 24, 0).
        let p = _mm512_mul_epu32(a, mult);
        let j = _mm512_max_epi64(
            _mm512_sub_epi64(_mm512_set1_epi64(40), _mm512_lzcnt_epi64(p)),
            zero,
        );
        let p = rne_shr_epi64(p, j);
        // 3. RNE(p * 2^e): a left shift (capped: 2^24 * 2^32 is far past
        //    any int8 bound) or a rounding right shift.
        let e = _mm512_add_epi64(_mm512_add_epi64(k, j), exp);
        let left = _mm512_min_epi64(_mm512_max_epi64(e, zero), _mm512_set1_epi64(32));
        let right = _mm512_max_epi64(_mm512_sub_epi64(zero, e), zero);
        let mag = _mm512_sllv_epi64(rne_shr_epi64(p, right), left);
        // Saturate at 2^20 (also > 127 + 128), so the magnitude fits 32 bits.
        _mm512_min_epu64(mag, _mm512_set1_epi64(1 << 20))
    }

    /// R1 on 16 lanes, dispatching on the channel's multiplier: the
    /// rounding-margin path when `14 <= -exp <= 63` (every practical
    /// multiplier, `2^-40 < M < 2^-14 * 2^24`), else the exact emulation.
    #[target_feature(enable = "avx512f,avx512bw,avx512cd")]
    pub unsafe fn requant_avx512(rq: &Requant, acc: &[i32], out: &mut [i8]) {
        let run = |acc: &[i32], out: &mut [i8]| {
            if (14..=63).contains(&-rq.exp) {
                requant_margin(rq, acc, out)
            } else {
                requant_exact(rq, acc, out)
            }
        };
        let whole = acc.len() / 16 * 16;
        run(&acc[..whole], &mut out[..whole]);
        if whole < acc.len() {
            // The tail through one padded vector.
            let (mut a, mut o) = ([0i32; 16], [0i8; 16]);
            let rest = acc.len() - whole;
            a[..rest].copy_from_slice(&acc[whole..]);
            run(&a, &mut o);
            out[whole..].copy_from_slice(&o[..rest]);
        }
    }

    /// R1 with an exact fixed-point product and a rounding margin
    /// (docs/INT8.md, "Fast convolution"): `P = |acc| * mult` is exact in
    /// 64 bits, `v = P / 2^sh` with `sh = -exp`. The float32 result `r` of
    /// R1 differs from `v` by at most `|v| * 2^-22.9`, under `2^-13` while
    /// `|v| < 512`; so where `v` is more than `2^-13` from a half-integer,
    /// `RNE(r)` is `v` rounded to nearest, `(P >> sh) + (frac > half)`. Lanes
    /// within the margin (exact ties included) and `|v| >= 512` saturate or
    /// take `Requant::apply`.
    #[target_feature(enable = "avx512f,avx512bw,avx512cd")]
    unsafe fn requant_margin(rq: &Requant, acc: &[i32], out: &mut [i8]) {
        let sh = -rq.exp as u32;
        let mult = _mm512_set1_epi64(rq.mult as i64);
        let count = _mm_set_epi64x(0, sh as i64);
        let frac_mask = _mm512_set1_epi64(((1u64 << sh) - 1) as i64);
        let half = _mm512_set1_epi64((1u64 << (sh - 1)) as i64);
        let margin = _mm512_set1_epi64((1u64 << (sh - 13)) as i64);
        let cap = _mm512_set1_epi64(1024);
        let one = _mm512_set1_epi64(1);
        let (z, lo, hi) = (
            _mm512_set1_epi32(rq.zero_point),
            _mm512_set1_epi32(rq.lo),
            _mm512_set1_epi32(rq.hi),
        );
        let lo32 = _mm512_set1_epi64(0xffff_ffff);
        let zero = _mm512_setzero_si512();
        // Magnitude (capped at 1024, past every int8 bound) and whether the
        // lane is clear of the margin, on 8 lanes of 64 bits.
        let half_lanes = |a: __m512i| -> (__m512i, __mmask8) {
            let p = _mm512_mul_epu32(a, mult);
            let q = _mm512_srl_epi64(p, count);
            let frac = _mm512_and_si512(p, frac_mask);
            let up = _mm512_cmpgt_epu64_mask(frac, half);
            let mag = _mm512_min_epu64(_mm512_mask_add_epi64(q, up, q, one), cap);
            let dist = _mm512_abs_epi64(_mm512_sub_epi64(frac, half));
            let clear = _mm512_cmpgt_epu64_mask(dist, margin)
                | _mm512_cmpge_epu64_mask(q, _mm512_set1_epi64(512));
            (mag, clear)
        };
        let chunks = acc.len() / 16;
        for c in 0..chunks {
            let v = _mm512_loadu_si512(acc.as_ptr().add(16 * c) as *const _);
            let neg = _mm512_cmplt_epi32_mask(v, zero);
            let a = _mm512_abs_epi32(v);
            let (even, ce) = half_lanes(_mm512_and_si512(a, lo32));
            let (odd, co) = half_lanes(_mm512_srli_epi64(a, 32));
            let mag = _mm512_or_si512(even, _mm512_slli_epi64(odd, 32));
            let y = _mm512_mask_sub_epi32(mag, neg, zero, mag);
            let y = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, z), lo), hi);
            let dst = out.as_mut_ptr().add(16 * c);
            _mm_storeu_si128(dst as *mut _, _mm512_cvtsepi32_epi8(y));
            if ce & co != 0xff {
                // Within the margin: lane 2i is even bit i, 2i + 1 odd bit i.
                for i in 0..8 {
                    if ce >> i & 1 == 0 {
                        *dst.add(2 * i) = rq.apply(acc[16 * c + 2 * i]);
                    }
                    if co >> i & 1 == 0 {
                        *dst.add(2 * i + 1) = rq.apply(acc[16 * c + 2 * i + 1]);
                    }
                }
            }
        }
        for i in 16 * chunks..acc.len() {
            out[i] = rq.apply(acc[i]);
        }
    }

    /// [`Requant::apply`] on 16 lanes, in the same integer steps.
    #[target_feature(enable = "avx512f,avx512bw,avx512cd")]
    unsafe fn requant_exact(rq: &Requant, acc: &[i32], out: &mut [i8]) {
        let mult = _mm512_set1_epi64(rq.mult as i64);
        let exp = _mm512_set1_epi64(rq.exp as i64);
        let (z, lo, hi) = (
            _mm512_set1_epi32(rq.zero_point),
            _mm512_set1_epi32(rq.lo),
            _mm512_set1_epi32(rq.hi),
        );
        let lo32 = _mm512_set1_epi64(0xffff_ffff);
        let zero = _mm512_setzero_si512();
        let chunks = acc.len() / 16;
        for c in 0..chunks {
            let v = _mm512_loadu_si512(acc.as_ptr().add(16 * c) as *const _);
            let neg = _mm512_cmplt_epi32_mask(v, zero);
            // 1. fl32(|acc|) = a * 2^k, k = max(bits - 24, 0).
            let a = _mm512_abs_epi32(v);
            let k = _mm512_max_epi32(
                _mm512_sub_epi32(_mm512_set1_epi32(8), _mm512_lzcnt_epi32(a)),
                zero,
            );
            let a = rne_shr_epi32(a, k);
            let even = requant_half(
                _mm512_and_si512(a, lo32),
                _mm512_and_si512(k, lo32),
                mult,
                exp,
            );
            let odd = requant_half(
                _mm512_srli_epi64(a, 32),
                _mm512_srli_epi64(k, 32),
                mult,
                exp,
            );
            let mag = _mm512_or_si512(even, _mm512_slli_epi64(odd, 32));
            let y = _mm512_mask_sub_epi32(mag, neg, zero, mag);
            let y = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, z), lo), hi);
            _mm_storeu_si128(
                out.as_mut_ptr().add(16 * c) as *mut _,
                _mm512_cvtsepi32_epi8(y),
            );
        }
        for i in 16 * chunks..acc.len() {
            out[i] = rq.apply(acc[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Every available path gives the exact integer product on random
    /// blocks, including the extreme values (-128 x 255 on every k) and
    /// reduction lengths that are not multiples of 4.
    #[test]
    fn block_product_is_exact_on_every_path() {
        let mut rng = Rng::new(11);
        for case in 0..40 {
            let k = 1 + rng.below(300) as usize;
            let k4 = k.div_ceil(KG);
            let extreme = case % 5 == 0;
            let w: Vec<i8> = (0..MR * k)
                .map(|_| {
                    if extreme {
                        [-128i8, 127][rng.below(2) as usize]
                    } else {
                        rng.below(256) as u8 as i8
                    }
                })
                .collect();
            let pw = PackedWeights::new(&w, 1, MR, k);
            let mut panel = vec![0u8; k4 * PX * KG];
            let mut u = vec![0u8; k * PX];
            for kk in 0..k {
                for p in 0..PX {
                    let v = if extreme {
                        [0u8, 255][rng.below(2) as usize]
                    } else {
                        rng.below(256) as u8
                    };
                    u[kk * PX + p] = v;
                    panel[((kk / KG) * PX + p) * KG + kk % KG] = v;
                }
            }
            for isa in Isa::available() {
                let mut s = [[0; PX]; MR];
                block_product(isa, &pw, 0, 0, &panel, &mut s);
                for r in 0..MR {
                    for p in 0..PX {
                        let want: i64 = (0..k)
                            .map(|kk| w[r * k + kk] as i64 * u[kk * PX + p] as i64)
                            .sum();
                        assert_eq!(s[r][p] as i64, want, "{isa:?} case {case} k {k} ({r}, {p})");
                    }
                }
            }
        }
    }

    /// The vectorized R1 equals `Requant::apply` on every accumulator in
    /// `[-2^17, 2^17]` for many multipliers, and on random, extreme and
    /// near-tie accumulators (around the rounding points of all three
    /// steps) for multipliers from 2^-40 to 2^20, subnormal ones included.
    #[test]
    fn vector_requant_equals_the_spec_routine() {
        let mut rng = Rng::new(12);
        let mut mults: Vec<f32> = vec![
            1.0,
            0.5,
            0.25,
            1.0 / 3.0,
            f32::MIN_POSITIVE,
            1e-40,
            f32::from_bits(1),
            3e5,
            1e-10,
        ];
        for _ in 0..300 {
            let e = rng.below(61) as i32 - 40;
            mults.push((1.0 + rng.uniform()) * (e as f32).exp2());
        }
        let mut accs: Vec<i32> = (-(1 << 17)..=(1 << 17)).collect();
        for b in 0..31 {
            for d in -3i64..=3 {
                for s in [-1i64, 1] {
                    let v = (s * ((1i64 << b) + d)).clamp(i32::MIN as i64, i32::MAX as i64);
                    accs.push(v as i32);
                }
            }
        }
        accs.extend([i32::MIN, i32::MIN + 1, i32::MAX, i32::MAX - 1, 0]);
        for _ in 0..20000 {
            accs.push(rng.next_u64() as i32);
            accs.push((rng.next_u64() as i32) >> rng.below(31));
        }
        for (mi, &m) in mults.iter().enumerate() {
            let zp = [-128, 0, 17, 127][mi % 4];
            let (lo, hi) = if mi % 3 == 0 { (zp, 127) } else { (-128, 127) };
            let rq = Requant::new(m, zp, lo, hi).unwrap();
            let mut list = if mi < 40 {
                accs.clone()
            } else {
                accs[(1 << 18) + 1..].to_vec()
            };
            // Accumulators whose product with M lands next to a half: the
            // ties of the last rounding.
            for t in -300i64..300 {
                let c = ((t as f64 + 0.5) / m as f64).round();
                if c.abs() < 2e9 {
                    for d in -2..=2 {
                        list.push((c as i64 + d) as i32);
                    }
                }
            }
            for isa in Isa::available() {
                let mut out = vec![0i8; list.len()];
                requant_row(isa, &rq, &list, &mut out);
                for (i, (&a, &y)) in list.iter().zip(&out).enumerate() {
                    assert_eq!(y, rq.apply(a), "{isa:?} m {m:e} acc {a} (index {i})");
                }
            }
        }
    }

    #[test]
    fn best_is_available() {
        assert!(Isa::best().is_available());
        assert!(Isa::available().contains(&Isa::Scalar));
    }
}
