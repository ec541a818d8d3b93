//! Requantization R1 (spec S5): from an exact int32 accumulator to the int8
//! output grid, `y_q = clamp(RNE(fl32(fl32(acc) * M)) + z_y, lo, hi)` with
//! `M = fl32(fl32(s_x * s_w) / s_y)`, and the int32 bias that enters the
//! accumulator.
//!
//! [`requant_f32`] is the float32 formula, which is what ONNX Runtime's x86
//! QLinearConv / QGemm compute. [`Requant`] reproduces it bit for bit with
//! integers only (the executor must not use floats in its hot path): every
//! float32 rounding of the formula is an RNE to 24 significant bits, which
//! integer shifts can do exactly.

use super::fake::quantize;
use super::params::{ACT_QMAX, ACT_QMIN};
use crate::{bail, Result};

/// Largest bias magnitude (S1): int32 without `-2^31`, symmetric.
pub const BIAS_MAX: i32 = i32::MAX;

/// Bias scale of output channel `c` (S1): `s_b = fl32(s_x * s_w[c])`.
#[inline]
pub fn bias_scale(s_x: f32, s_w: f32) -> f32 {
    s_x * s_w
}

/// Int32 bias (S5): `clamp(RNE(f64(b) / f64(s_b)), -(2^31-1), 2^31-1)`, the
/// division in float64 so that the rounding does not depend on float32
/// quirks. NaN maps to 0; [`quantize_bias_slice`] rejects it.
#[inline]
pub fn quantize_bias(b: f32, s_b: f32) -> i32 {
    let max = BIAS_MAX as f64;
    let q = (b as f64 / s_b as f64).round_ties_even();
    q.clamp(-max, max) as i32
}

/// Int32 biases of all output channels, `s_b[c] = fl32(s_x * s_w[c])`.
pub fn quantize_bias_slice(b: &[f32], s_x: f32, s_w: &[f32]) -> Result<Vec<i32>> {
    if b.len() != s_w.len() {
        bail!(Shape, "{} biases for {} weight scales", b.len(), s_w.len());
    }
    b.iter()
        .zip(s_w)
        .map(|(&b, &s_w)| {
            if !b.is_finite() {
                bail!(Numerical, "non-finite bias {b}");
            }
            Ok(quantize_bias(b, bias_scale(s_x, s_w)))
        })
        .collect()
}

/// The R1 multiplier `M = fl32(fl32(s_x * s_w) / s_y)` (S5), in this order.
#[inline]
pub fn requant_multiplier(s_x: f32, s_w: f32, s_y: f32) -> f32 {
    (s_x * s_w) / s_y
}

/// Output clamp bounds (S5): with a fused ReLU `lo = z_y` (the quantized 0),
/// otherwise the full int8 range.
#[inline]
pub fn output_bounds(z_y: i32, relu: bool) -> (i32, i32) {
    (if relu { z_y.max(ACT_QMIN) } else { ACT_QMIN }, ACT_QMAX)
}

/// Output clamp bounds of a fused ReLU6 (S11): the S3 quantization of 0 and
/// of 6 on the output grid, `lo = clamp(z_y + RNE(0 / s_y))` = `max(-128,
/// z_y)` and `hi = clamp(z_y + RNE(fl32(6 / s_y)))` = `min(127, z_y +
/// RNE(6 / s_y))`. When the output range was observed after the ReLU6 (so
/// within [0, 6]), `z_y = -128` and `6 / s_y >= 255`: the bounds are the whole
/// int8 range and the clamp costs nothing. `s_y` must be a valid scale (finite,
/// > 0, as [`super::params::act_qparams`] makes).
#[inline]
pub fn relu6_bounds(s_y: f32, z_y: i32) -> (i32, i32) {
    debug_assert!(s_y.is_finite() && s_y > 0.0, "invalid scale {s_y}");
    (
        quantize(0.0, s_y, z_y, ACT_QMIN, ACT_QMAX),
        quantize(6.0, s_y, z_y, ACT_QMIN, ACT_QMAX),
    )
}

/// R1 in float32, exactly as the spec writes it: the reference that the
/// integer [`Requant`] is tested against. The clamp happens in float, on exact
/// integers, so huge (or infinite) products saturate instead of wrapping.
#[inline]
pub fn requant_f32(acc: i32, m: f32, z_y: i32, lo: i32, hi: i32) -> i8 {
    let r = (acc as f32 * m).round_ties_even();
    (r + z_y as f32).clamp(lo as f32, hi as f32) as i8
}

/// Splits a positive finite float32 into `(m, e)` with `v = m * 2^e` exactly
/// and `2^23 <= m < 2^24` (subnormals are normalized).
pub(crate) fn split_f32(v: f32) -> (u32, i32) {
    debug_assert!(v.is_finite() && v > 0.0);
    let bits = v.to_bits();
    let field = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    if field == 0 {
        // Subnormal: shift the significand up until bit 23 is set.
        let shift = frac.leading_zeros() - 8;
        (frac << shift, -149 - shift as i32)
    } else {
        (frac | 0x80_0000, field - 150)
    }
}

/// `v / 2^sh` rounded to nearest, ties to even, for `v < 2^63`.
#[inline]
fn rne_shr(v: u64, sh: u32) -> u64 {
    debug_assert!(v < 1 << 63);
    if sh == 0 {
        return v;
    }
    if sh >= 64 {
        return 0; // v / 2^sh < 1/2
    }
    let q = v >> sh;
    let rem = v & ((1u64 << sh) - 1);
    let half = 1u64 << (sh - 1);
    q + u64::from(rem > half || (rem == half && q & 1 == 1))
}

/// Rounds `v` to 24 significant bits with RNE: returns `(m, k)` with
/// `v ~ m * 2^k`, `m <= 2^24` (2^24 when the rounding carries out). This is
/// what float32 does to an integer or to an exact product of significands.
#[inline]
fn round_to_24_bits(v: u64) -> (u64, i32) {
    let bits = 64 - v.leading_zeros();
    if bits <= 24 {
        (v, 0)
    } else {
        let k = bits - 24;
        (rne_shr(v, k), k as i32)
    }
}

/// Integer-only R1 for one output channel (S5), precomputed once from the
/// float32 multiplier: `M = mult * 2^exp` exactly, `2^23 <= mult < 2^24`.
/// [`Requant::apply`] equals [`requant_f32`] for every int32 accumulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requant {
    /// The 24-bit significand of M (subnormal M are normalized).
    pub mult: u32,
    /// The binary exponent of `mult`'s unit: `M = mult * 2^exp`.
    pub exp: i32,
    /// Output zero point, added after rounding.
    pub zero_point: i32,
    /// Output clamp bounds.
    pub lo: i32,
    pub hi: i32,
}

impl Requant {
    /// Decomposes `m` (finite, > 0) into its significand and exponent.
    pub fn new(m: f32, zero_point: i32, lo: i32, hi: i32) -> Result<Self> {
        if !(m.is_finite() && m > 0.0) {
            bail!(
                Numerical,
                "requantization multiplier {m} is not a positive finite number"
            );
        }
        if !(ACT_QMIN <= lo
            && lo <= hi
            && hi <= ACT_QMAX
            && (ACT_QMIN..=ACT_QMAX).contains(&zero_point))
        {
            bail!(
                Numerical,
                "output bounds [{lo}, {hi}] or zero point {zero_point} are not int8"
            );
        }
        let (mult, exp) = split_f32(m);
        Ok(Requant {
            mult,
            exp,
            zero_point,
            lo,
            hi,
        })
    }

    /// R1 of a conv / FC channel: `M = fl32(fl32(s_x * s_w) / s_y)`, output
    /// zero point `z_y`, clamp per [`output_bounds`].
    pub fn from_scales(s_x: f32, s_w: f32, s_y: f32, z_y: i32, relu: bool) -> Result<Self> {
        let (lo, hi) = output_bounds(z_y, relu);
        Self::new(requant_multiplier(s_x, s_w, s_y), z_y, lo, hi)
    }

    /// The R1 of every output channel of a conv / FC layer with per-channel
    /// weight scales `s_w` (S5).
    pub fn per_channel(s_x: f32, s_w: &[f32], s_y: f32, z_y: i32, relu: bool) -> Result<Vec<Self>> {
        s_w.iter()
            .map(|&s_w| Self::from_scales(s_x, s_w, s_y, z_y, relu))
            .collect()
    }

    /// The multiplier as a float32 (exactly the one this was built from).
    pub fn multiplier(&self) -> f32 {
        // In float64, where 2^exp of a normalized subnormal is still normal.
        (self.mult as f64 * (self.exp as f64).exp2()) as f32
    }

    /// `clamp(RNE(fl32(fl32(acc) * M)) + z_y, lo, hi)` with integers only.
    #[inline]
    pub fn apply(&self, acc: i32) -> i8 {
        // RNE is symmetric, so work on |acc| and restore the sign at the end.
        // 1. fl32(|acc|) = a * 2^k with a <= 2^24.
        let (a, k) = round_to_24_bits(u64::from(acc.unsigned_abs()));
        // 2. The exact product of significands (<= 2^48), rounded to 24
        //    bits: fl32(fl32(acc) * M) = p * 2^(k + j + exp). When the true
        //    product is below float32's normal range (< 2^-126), float32
        //    keeps fewer bits, but its RNE to an integer is 0 either way.
        let (p, j) = round_to_24_bits(a * u64::from(self.mult));
        // 3. RNE(p * 2^e) to an integer. p <= 2^24 and e >= 32 is far beyond
        //    any clamp bound (including float32's overflow to infinity), so
        //    saturate to a large value that the clamp then cuts.
        let e = k + j + self.exp;
        let mag = if p == 0 {
            0 // acc == 0: 0 * M is 0 even when M is huge
        } else if e >= 32 {
            1i64 << 40
        } else if e >= 0 {
            (p << e) as i64
        } else {
            rne_shr(p, e.unsigned_abs()) as i64
        };
        let y = if acc < 0 { -mag } else { mag };
        (y + self.zero_point as i64).clamp(self.lo as i64, self.hi as i64) as i8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::params::act_qparams;

    /// S11: with the observer range [0, 6], z = -128 and 6 lands exactly on
    /// 127, so ReLU6's clamp is the int8 range; other ranges follow the rule.
    #[test]
    fn relu6_bounds_rule() {
        let qp = act_qparams(0.0, 6.0).unwrap();
        assert_eq!(qp.zero_point, -128);
        assert_eq!(qp.scale, 6.0f32 / 255.0);
        assert_eq!(6.0f32 / qp.scale, 255.0, "6 / s is exactly 255");
        assert_eq!(relu6_bounds(qp.scale, qp.zero_point), (-128, 127));
        // Observed after the ReLU6, the range is within [0, 6]: still free.
        for max in [0.5f32, 3.0, 5.999, 6.0] {
            let qp = act_qparams(0.0, max).unwrap();
            assert_eq!(relu6_bounds(qp.scale, qp.zero_point), (-128, 127), "{max}");
        }
        // Observed before it ([-1, 7]): s = 8/255, z = -96, 6 / s = 191.25.
        let qp = act_qparams(-1.0, 7.0).unwrap();
        assert_eq!(qp.zero_point, -96);
        assert_eq!(relu6_bounds(qp.scale, qp.zero_point), (-96, 95));
        // The direct formula [max(-128, z), min(127, z + RNE(fl32(6 / s)))]
        // on random scales and zero points.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let s = 10f32.powf(((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 3.5);
            let z = ((state >> 8) % 256) as i32 - 128;
            let hi = (z as f64 + (6.0f32 / s).round_ties_even() as f64).min(127.0) as i32;
            assert_eq!(relu6_bounds(s, z), (z.max(-128), hi), "s {s} z {z}");
        }
    }

    #[test]
    fn decomposition_is_exact() {
        for m in [
            1.0f32,
            0.5,
            3.0e-7,
            1.7e-12,
            f32::MIN_POSITIVE,
            1.0e-40,
            1.0e-45,
            1.0e30,
        ] {
            let r = Requant::new(m, 0, -128, 127).unwrap();
            assert!((0x80_0000..0x100_0000).contains(&r.mult), "{m}");
            assert_eq!(r.multiplier(), m);
        }
        assert!(Requant::new(0.0, 0, -128, 127).is_err());
        assert!(Requant::new(f32::INFINITY, 0, -128, 127).is_err());
        assert!(Requant::new(f32::NAN, 0, -128, 127).is_err());
        assert!(Requant::new(1.0, 0, -129, 127).is_err());
        assert!(Requant::new(1.0, 128, -128, 127).is_err());
    }

    #[test]
    fn rne_shr_ties() {
        assert_eq!(
            [rne_shr(5, 1), rne_shr(7, 1), rne_shr(6, 2), rne_shr(10, 2)],
            [2, 4, 2, 2]
        );
        assert_eq!(
            [rne_shr(1 << 40, 64), rne_shr(3, 2), rne_shr(2, 2)],
            [0, 1, 0]
        );
    }

    #[test]
    fn bias_quantization() {
        assert_eq!(quantize_bias(2.5, 1.0), 2);
        assert_eq!(quantize_bias(-3.5, 1.0), -4);
        assert_eq!(quantize_bias(1e30, 1e-10), i32::MAX);
        assert_eq!(quantize_bias(-1e30, 1e-10), -i32::MAX);
        let b = quantize_bias_slice(&[0.3, -0.3], 0.1, &[0.5, 0.25]).unwrap();
        assert_eq!(
            b,
            vec![
                quantize_bias(0.3, 0.1f32 * 0.5),
                quantize_bias(-0.3, 0.1f32 * 0.25)
            ]
        );
        assert!(quantize_bias_slice(&[0.3], 0.1, &[0.5, 0.25]).is_err());
        assert!(quantize_bias_slice(&[f32::NAN], 0.1, &[0.5]).is_err());
    }

    #[test]
    fn relu_bounds_and_saturation() {
        let r = Requant::from_scales(0.02, 0.01, 0.05, -20, true).unwrap();
        let all = Requant::per_channel(0.02, &[0.01, 0.03], 0.05, -20, true).unwrap();
        assert_eq!(all[0], r);
        assert_eq!(all[1].multiplier(), requant_multiplier(0.02, 0.03, 0.05));
        assert_eq!((r.lo, r.hi, r.zero_point), (-20, 127, -20));
        assert_eq!(r.apply(-1000), -20);
        assert_eq!(r.apply(i32::MAX), 127);
        assert_eq!(r.apply(0), -20);
        let big = Requant::new(1.0e30, 5, -128, 127).unwrap();
        assert_eq!(
            [
                big.apply(i32::MIN),
                big.apply(-1),
                big.apply(0),
                big.apply(1)
            ],
            [-128, -128, 5, 127]
        );
        let tiny = Requant::new(1.0e-40, 5, -128, 127).unwrap();
        assert_eq!([tiny.apply(i32::MIN), tiny.apply(i32::MAX)], [5, 5]);
    }
}
