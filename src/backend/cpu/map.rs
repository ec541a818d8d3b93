//! Elementwise maps and reductions over flat buffers (ReLU, add, axpy, fake
//! quantization and its straight-through mask, observer min/max, per-channel
//! scaling): split into chunks for rayon, and each chunk run by a loop
//! compiled for the processor's instruction set ([`Isa`]).
//!
//! The loops are the scalar expressions of the callers, compiled once per
//! instruction set so that LLVM vectorizes them (`f32::round_ties_even`, for
//! one, is a library call without SSE4.1, which keeps the portable build of
//! a fake-quantization loop scalar). Every element is computed by the same
//! IEEE operations in every build: no reassociation, no contraction into
//! FMA (Rust never contracts), so all builds and all thread counts give the
//! same bits. The min/max reduction is exact in any order.

use super::isa::Isa;
use rayon::prelude::*;

/// Elements per rayon task: a 28x28x16 plane of a batch-128 activation is
/// 1.6M elements, 100 tasks; the smallest maps (per-channel factors) run as
/// one task.
const CHUNK: usize = 16 * 1024;

#[inline(always)]
fn map1_loop(x: &[f32], y: &mut [f32], f: &impl Fn(f32) -> f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f(v);
    }
}

#[inline(always)]
fn map2_loop(a: &[f32], b: &[f32], y: &mut [f32], f: &impl Fn(f32, f32) -> f32) {
    for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
        *o = f(u, v);
    }
}

#[inline(always)]
fn in_place_loop(y: &mut [f32], f: &impl Fn(f32) -> f32) {
    for o in y.iter_mut() {
        *o = f(*o);
    }
}

#[inline(always)]
fn update2_loop(y: &mut [f32], z: &mut [f32], x: &[f32], f: &impl Fn(f32, f32, f32) -> (f32, f32)) {
    for ((o, p), &v) in y.iter_mut().zip(z.iter_mut()).zip(x) {
        (*o, *p) = f(*o, *p, v);
    }
}

#[inline(always)]
fn update_loop(y: &mut [f32], x: &[f32], f: &impl Fn(f32, f32) -> f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f(*o, v);
    }
}

/// Lanes of the min/max accumulators (four AVX-512 registers, to hide the
/// latency of each lane's chain).
const LANES: usize = 64;

/// `if v < m { v } else { m }`: the minimum ignoring a NaN `v` (`m` is
/// never NaN), which is one `vminps` (its second operand wins on NaN and on
/// equality); `f32::min` needs a compare and a blend more.
#[inline(always)]
fn lower(m: f32, v: f32) -> f32 {
    if v < m {
        v
    } else {
        m
    }
}

#[inline(always)]
fn higher(m: f32, v: f32) -> f32 {
    if v > m {
        v
    } else {
        m
    }
}

#[inline(always)]
fn min_max_loop(x: &[f32], f: &impl Fn(f32) -> f32) -> (f32, f32) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut blocks = x.chunks_exact(LANES);
    for b in &mut blocks {
        for j in 0..LANES {
            let v = f(b[j]);
            lo[j] = lower(lo[j], v);
            hi[j] = higher(hi[j], v);
        }
    }
    for (j, &v) in blocks.remainder().iter().enumerate() {
        let v = f(v);
        lo[j] = lower(lo[j], v);
        hi[j] = higher(hi[j], v);
    }
    let lo = lo.iter().fold(f32::INFINITY, |m, &v| lower(m, v));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |m, &v| higher(m, v));
    (lo, hi)
}

/// Lanes of the float64 sums: `Σ f(x[i])` is kept as 32 partial sums
/// (`lane = i % 32`, four AVX-512 registers per sum) added in a fixed
/// tree, so that the loop vectorizes, hides the adds' latency, and every
/// build gives the same bits.
const SUM_LANES: usize = 32;

#[inline(always)]
fn lane_total(mut v: [f64; SUM_LANES]) -> f64 {
    let mut half = SUM_LANES / 2;
    while half > 0 {
        for l in 0..half {
            v[l] += v[l + half];
        }
        half /= 2;
    }
    v[0]
}

#[inline(always)]
fn sum2_loop(a: &[f32], b: &[f32], f: &impl Fn(f32, f32) -> (f64, f64)) -> (f64, f64) {
    let (mut s, mut t) = ([0.0f64; SUM_LANES], [0.0f64; SUM_LANES]);
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let whole = n / SUM_LANES * SUM_LANES;
    for (ab, bb) in a[..whole]
        .chunks_exact(SUM_LANES)
        .zip(b[..whole].chunks_exact(SUM_LANES))
    {
        for l in 0..SUM_LANES {
            let (u, v) = f(ab[l], bb[l]);
            s[l] += u;
            t[l] += v;
        }
    }
    for (l, (&u, &v)) in a[whole..].iter().zip(&b[whole..]).enumerate() {
        let (u, v) = f(u, v);
        s[l] += u;
        t[l] += v;
    }
    (lane_total(s), lane_total(t))
}

#[inline(always)]
fn map2_sum_loop(a: &[f32], b: &[f32], y: &mut [f32], f: &impl Fn(f32, f32) -> (f32, f64)) -> f64 {
    let mut s = [0.0f64; SUM_LANES];
    let n = y.len();
    let (a, b) = (&a[..n], &b[..n]);
    let whole = n / SUM_LANES * SUM_LANES;
    let blocks = y[..whole].chunks_exact_mut(SUM_LANES).zip(
        a[..whole]
            .chunks_exact(SUM_LANES)
            .zip(b[..whole].chunks_exact(SUM_LANES)),
    );
    for (yb, (ab, bb)) in blocks {
        for l in 0..SUM_LANES {
            let (o, u) = f(ab[l], bb[l]);
            yb[l] = o;
            s[l] += u;
        }
    }
    for (l, ((o, &u), &v)) in y[whole..]
        .iter_mut()
        .zip(&a[whole..])
        .zip(&b[whole..])
        .enumerate()
    {
        let (r, w) = f(u, v);
        *o = r;
        s[l] += w;
    }
    lane_total(s)
}

/// One `#[target_feature]` build of the loops.
macro_rules! builds {
    ($name:ident $(, $feat:literal)?) => {
        mod $name {
            use super::*;
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn map1(x: &[f32], y: &mut [f32], f: &impl Fn(f32) -> f32) {
                map1_loop(x, y, f)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn map2(
                a: &[f32],
                b: &[f32],
                y: &mut [f32],
                f: &impl Fn(f32, f32) -> f32,
            ) {
                map2_loop(a, b, y, f)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn in_place(y: &mut [f32], f: &impl Fn(f32) -> f32) {
                in_place_loop(y, f)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn update(y: &mut [f32], x: &[f32], f: &impl Fn(f32, f32) -> f32) {
                update_loop(y, x, f)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn update2(
                y: &mut [f32],
                z: &mut [f32],
                x: &[f32],
                f: &impl Fn(f32, f32, f32) -> (f32, f32),
            ) {
                update2_loop(y, z, x, f)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn min_max(x: &[f32], f: &impl Fn(f32) -> f32) -> (f32, f32) {
                min_max_loop(x, f)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn map2_sum(
                a: &[f32],
                b: &[f32],
                y: &mut [f32],
                f: &impl Fn(f32, f32) -> (f32, f64),
            ) -> f64 {
                map2_sum_loop(a, b, y, f)
            }
            $(#[target_feature(enable = $feat)])?
            pub(super) unsafe fn sum2(
                a: &[f32],
                b: &[f32],
                f: &impl Fn(f32, f32) -> (f64, f64),
            ) -> (f64, f64) {
                sum2_loop(a, b, f)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
builds!(avx512, "avx512f");
#[cfg(target_arch = "x86_64")]
builds!(avx2, "avx2,fma");
builds!(portable);

/// Calls the build of `$f` for the detected instruction set.
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {
        // SAFETY: `Isa::detected` only returns instruction sets that
        // `Isa::supported` confirmed on this processor.
        unsafe {
            match Isa::detected() {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512::$f($($arg),*),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => avx2::$f($($arg),*),
                _ => portable::$f($($arg),*),
            }
        }
    };
}

/// `y[i] = f(x[i])`.
pub fn map1(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    assert_eq!(x.len(), y.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| dispatch!(map1(x, y, &f)));
}

/// `y[i] = f(y[i])`, in place.
pub fn map_in_place(y: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    y.par_chunks_mut(CHUNK)
        .for_each(|y| dispatch!(in_place(y, &f)));
}

/// `y[i] = f(a[i], b[i])`.
pub fn map2(a: &[f32], b: &[f32], y: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert!(a.len() == y.len() && b.len() == y.len());
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| dispatch!(map2(a, b, y, &f)));
}

/// `y[i] = f(y[i], x[i])`, in place (accumulations such as `axpy`).
pub fn update(y: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert_eq!(x.len(), y.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| dispatch!(update(y, x, &f)));
}

/// `(y[i], z[i]) = f(y[i], z[i], x[i])`, in place (an optimizer's
/// parameter and its state from the gradient).
pub fn update2(
    y: &mut [f32],
    z: &mut [f32],
    x: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32) + Sync,
) {
    assert!(x.len() == y.len() && z.len() == y.len());
    y.par_chunks_mut(CHUNK)
        .zip(z.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(y, (z, x))| dispatch!(update2(y, z, x, &f)));
}

/// `y[i] = f(x[i])` on this thread, for callers that split the work
/// themselves (per-channel constants in `f`).
pub fn map1_here(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32) {
    assert_eq!(x.len(), y.len());
    dispatch!(map1(x, y, &f))
}

/// `y[i] = f(a[i], b[i])` on this thread.
pub fn map2_here(a: &[f32], b: &[f32], y: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    assert!(a.len() == y.len() && b.len() == y.len());
    dispatch!(map2(a, b, y, &f))
}

/// `(Σ u, Σ v)` over `(u, v) = f(a[i], b[i])` in float64, on this thread:
/// 32 lane partials (`lane = i % 32`) added in a fixed tree, the same bits
/// in every build. `a` and `b` have the same length.
pub fn sum2_here(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f64, f64)) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    dispatch!(sum2(a, b, &f))
}

/// `y[i] = f(a[i], b[i]).0` and, in the lanes of [`sum2_here`], the sum
/// of `f(a[i], b[i]).1`, on this thread.
pub fn map2_sum_here(
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    f: impl Fn(f32, f32) -> (f32, f64),
) -> f64 {
    assert!(a.len() == y.len() && b.len() == y.len());
    dispatch!(map2_sum(a, b, y, &f))
}

/// Per channel of two `outer x channels x inner` buffers: `(Σ u, Σ v)`
/// over the channel's elements of `(u, v) = f(c, a[i], b[i])`. Each plane
/// is summed by [`sum2_here`] (planes in parallel, several small ones per
/// task) and a channel's planes are added in `outer` order: the same bits
/// for any thread count and instruction set.
pub fn channel_sums2(
    (outer, channels, inner): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    f: impl Fn(usize, f32, f32) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    assert!(a.len() == outer * channels * inner && b.len() == a.len());
    let planes: Vec<(f64, f64)> = (0..outer * channels)
        .into_par_iter()
        .with_min_len(CHUNK.div_ceil(inner.max(1)))
        .map(|p| {
            let (pa, pb) = (&a[p * inner..][..inner], &b[p * inner..][..inner]);
            let c = p % channels;
            sum2_here(pa, pb, |u, v| f(c, u, v))
        })
        .collect();
    (0..channels)
        .map(|c| {
            (0..outer).fold((0.0, 0.0), |(s, t), i| {
                let (u, v) = planes[i * channels + c];
                (s + u, t + v)
            })
        })
        .collect()
}

/// `y = x * s[c]` where `x` is `outer x channels x inner` (row-major) and
/// `c` the channel of each element.
pub fn channel_scale(channels: usize, inner: usize, x: &[f32], s: &[f32], y: &mut [f32]) {
    assert!(x.len() == y.len() && inner > 0 && channels == s.len());
    let run = |p: usize, y: &mut [f32], x: &[f32]| {
        let k = s[p % channels];
        dispatch!(map1(x, y, &|v| v * k));
    };
    if inner >= CHUNK {
        y.par_chunks_mut(inner)
            .zip(x.par_chunks(inner))
            .enumerate()
            .for_each(|(p, (y, x))| run(p, y, x));
    } else {
        // Small planes: several per task.
        let per = CHUNK.div_ceil(inner);
        y.par_chunks_mut(per * inner)
            .zip(x.par_chunks(per * inner))
            .enumerate()
            .for_each(|(t, (y, x))| {
                for (i, (y, x)) in y.chunks_mut(inner).zip(x.chunks(inner)).enumerate() {
                    run(t * per + i, y, x);
                }
            });
    }
}

/// `(min, max)` over all elements, NaN ignored; `(+inf,
/// -inf)` for an empty or all-NaN buffer.
pub fn min_max(x: &[f32]) -> (f32, f32) {
    min_max_of(x, |v| v)
}

/// [`min_max`] of `f(x[i])`, without storing them.
pub fn min_max_of(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> (f32, f32) {
    x.par_chunks(CHUNK)
        .map(|x| dispatch!(min_max(x, &f)))
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fake::{fake_quant, ste_mask};

    /// Values that exercise the rounding ties, the clamp edges, NaN,
    /// infinities and signed zeros.
    fn awkward(n: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n)
            .map(|i| ((i as f32) * 0.37).sin() * 40.0 + (i % 7) as f32 * 0.5)
            .collect();
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            0.25,
            0.75,
            -0.25,
            1e30,
            -1e30,
        ];
        for (i, s) in special.iter().enumerate() {
            v[i * 97 % n] = *s;
        }
        v
    }

    /// Every build of every loop gives the bits of the scalar expression,
    /// element by element, on lengths that are not multiples of the lanes.
    #[test]
    fn every_build_gives_the_scalar_bits() {
        let x = awkward(CHUNK * 2 + 37);
        let d: Vec<f32> = x.iter().map(|v| v * 0.5 - 1.0).collect();
        let (s, z) = (0.3f32, -7);
        let fq = |v| fake_quant(v, s, z, -128, 127);
        let mask = |v, g: f32| g * ste_mask(v, s, z, -128, 127);
        for isa in Isa::available() {
            let mut y = vec![0.0; x.len()];
            let mut y2 = vec![0.0; x.len()];
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => {
                        avx512::map1(&x, &mut y, &fq);
                        avx512::map2(&x, &d, &mut y2, &mask);
                    }
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2Fma => {
                        avx2::map1(&x, &mut y, &fq);
                        avx2::map2(&x, &d, &mut y2, &mask);
                    }
                    _ => {
                        portable::map1(&x, &mut y, &fq);
                        portable::map2(&x, &d, &mut y2, &mask);
                    }
                }
            }
            for i in 0..x.len() {
                let (want, want2) = (fq(x[i]), mask(x[i], d[i]));
                assert!(
                    y[i].to_bits() == want.to_bits() || (y[i].is_nan() && want.is_nan()),
                    "{isa:?} fake_quant({}) = {} != {want}",
                    x[i],
                    y[i]
                );
                assert!(
                    y2[i].to_bits() == want2.to_bits() || (y2[i].is_nan() && want2.is_nan()),
                    "{isa:?} mask({}, {}) = {} != {want2}",
                    x[i],
                    d[i],
                    y2[i]
                );
            }
        }
    }

    /// The float64 sums: every build gives the bits of 32 scalar lane sums
    /// added in the tree, on lengths that are not multiples of the lanes.
    #[test]
    fn every_build_sums_the_same_lanes() {
        let x = awkward(1003);
        let x: Vec<f32> = x
            .iter()
            .map(|v| if v.is_finite() { *v } else { 1.5 })
            .collect();
        let d: Vec<f32> = x.iter().map(|v| v * 0.25 - 3.0).collect();
        let f = |u: f32, v: f32| (u as f64, u as f64 * v as f64 - 0.5);
        for len in [0, 5, 8, 1003] {
            let mut lanes = ([0.0f64; SUM_LANES], [0.0f64; SUM_LANES]);
            for i in 0..len {
                let (u, v) = f(x[i], d[i]);
                lanes.0[i % SUM_LANES] += u;
                lanes.1[i % SUM_LANES] += v;
            }
            // Halves folded onto each other: 32 -> 16 -> 8 -> 4 -> 2 -> 1.
            let tree = |l: [f64; SUM_LANES]| {
                let mut v = l.to_vec();
                while v.len() > 1 {
                    let h = v.len() / 2;
                    v = (0..h).map(|i| v[i] + v[i + h]).collect();
                }
                v[0]
            };
            let want = (tree(lanes.0), tree(lanes.1));
            for isa in Isa::available() {
                let (a, b) = (&x[..len], &d[..len]);
                let got = unsafe {
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx512 => avx512::sum2(a, b, &f),
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2Fma => avx2::sum2(a, b, &f),
                        _ => portable::sum2(a, b, &f),
                    }
                };
                assert_eq!(
                    (got.0.to_bits(), got.1.to_bits()),
                    (want.0.to_bits(), want.1.to_bits()),
                    "{isa:?}, {len} elements"
                );
            }
        }
    }

    #[test]
    fn min_max_ignores_nan_and_sees_every_element() {
        let mut x = awkward(CHUNK * 3 + 5);
        x.retain(|v| v.is_finite());
        let want = x
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        // The extremes at the last element, in the remainder of a chunk.
        let n = x.len();
        x[n - 1] = 1e35;
        x[n - 2] = -1e35;
        x[3] = f32::NAN;
        assert_eq!(min_max(&x), (-1e35, 1e35));
        x[n - 1] = want.1;
        x[n - 2] = want.0;
        assert_eq!(min_max(&x), want);
        assert_eq!(min_max(&[]), (f32::INFINITY, f32::NEG_INFINITY));
        assert_eq!(min_max(&[f32::NAN; 3]), (f32::INFINITY, f32::NEG_INFINITY));
    }

    #[test]
    fn channel_scale_uses_each_elements_channel() {
        for (outer, c, inner) in [(3, 4, 5), (2, 3, CHUNK + 3), (1, 1, 1)] {
            let x: Vec<f32> = (0..outer * c * inner).map(|i| i as f32).collect();
            let s: Vec<f32> = (0..c).map(|i| 1.0 + i as f32).collect();
            let mut y = vec![0.0; x.len()];
            channel_scale(c, inner, &x, &s, &mut y);
            for (i, (&v, &o)) in x.iter().zip(&y).enumerate() {
                assert_eq!(o, v * s[(i / inner) % c]);
            }
        }
    }

    #[test]
    fn in_place_forms_match_the_out_of_place_ones() {
        let x = awkward(5000);
        let mut y: Vec<f32> = x.iter().map(|v| v * 3.0).collect();
        let want: Vec<f32> = y.iter().zip(&x).map(|(a, b)| a + 0.5 * b).collect();
        update(&mut y, &x, |a, b| a + 0.5 * b);
        assert!(y
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan()));
        let want: Vec<f32> = y.iter().map(|v| v * 2.0).collect();
        map_in_place(&mut y, |v| v * 2.0);
        assert!(y
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan()));
    }
}
