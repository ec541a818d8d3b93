//! Residual add in the integer domain (spec S7), rounded exactly: with every
//! float32 scale written as `m * 2^e` (24-bit integer m), the real sum
//! `(s_a*A + s_b*B) / s_c` is a ratio of two integers, and the output is its
//! RNE, computed with one int64 floor division and a half-to-even fix-up.
//!
//! ONNX Runtime's QLinearAdd computes the same thing in float32 with the zero
//! points folded in before rounding, so it differs from this exact result by
//! 1 LSB on rare outputs (S7, S10.3). The exact form is the contract: it is
//! what the eval forward and the executor both compute.

use super::params::{ACT_QMAX, ACT_QMIN, MIN_SCALE};
use super::requant::{output_bounds, split_f32};
use crate::{bail, Result};

/// Largest numerator or denominator magnitude that [`AddRequant`] allows, so
/// that `2 * remainder` in [`rne_div`] and the int64 sums cannot overflow.
const LIMIT: i128 = 1 << 62;

/// `n / d` rounded to nearest, ties to even, for `0 < d <= 2^62`: floor
/// division, then round up when the remainder is more than half of `d`, or
/// exactly half and the floor is odd.
#[inline]
pub fn rne_div(n: i64, d: i64) -> i64 {
    debug_assert!(d > 0 && d as i128 <= LIMIT);
    let q = n.div_euclid(d);
    let r2 = 2 * n.rem_euclid(d);
    q + i64::from(r2 > d || (r2 == d && q & 1 != 0))
}

/// A residual add `c = a + b` of two int8 tensors with their own (s, z), into
/// an int8 output with (s_c, z_c), optionally followed by ReLU (S7). All the
/// scale arithmetic is done once here; [`AddRequant::apply`] is integer-only:
/// `y = clamp(RNE_div(num_a * A + num_b * B, den) + z_c, lo, hi)`,
/// `A = a - z_a`, `B = b - z_b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddRequant {
    pub num_a: i64,
    pub num_b: i64,
    pub den: i64,
    pub z_a: i32,
    pub z_b: i32,
    pub z_c: i32,
    pub lo: i32,
    pub hi: i32,
}

impl AddRequant {
    /// Precomputes the exact rational form of `(s_a*A + s_b*B) / s_c` (S7):
    /// with `e0 = min(e_a, e_b)`, `N = m_a*A*2^(e_a-e0) + m_b*B*2^(e_b-e0)`,
    /// and the output is `RNE_div(N * 2^(e0-e_c), m_c)`; a negative power of
    /// two moves into the denominator. Scales whose exponents are so far
    /// apart that int64 would overflow (a ratio beyond about 2^29 between the
    /// input scales, for instance) are rejected rather than approximated.
    pub fn new(
        s_a: f32,
        z_a: i32,
        s_b: f32,
        z_b: i32,
        s_c: f32,
        z_c: i32,
        relu: bool,
    ) -> Result<Self> {
        for (name, s) in [("s_a", s_a), ("s_b", s_b), ("s_c", s_c)] {
            if !(s.is_finite() && s >= MIN_SCALE) {
                bail!(
                    Numerical,
                    "residual add scale {name} = {s} is not a valid scale"
                );
            }
        }
        for (name, z) in [("z_a", z_a), ("z_b", z_b), ("z_c", z_c)] {
            if !(ACT_QMIN..=ACT_QMAX).contains(&z) {
                bail!(
                    Numerical,
                    "residual add zero point {name} = {z} is not int8"
                );
            }
        }
        let ((m_a, e_a), (m_b, e_b), (m_c, e_c)) = (split_f32(s_a), split_f32(s_b), split_f32(s_c));
        let e0 = e_a.min(e_b);
        // Shifts of the two numerator terms and of the denominator.
        let up = (e0 - e_c).max(0);
        let (sh_a, sh_b, sh_c) = (e_a - e0 + up, e_b - e0 + up, (e_c - e0).max(0));
        let too_far = || -> Result<Self> {
            bail!(
                Numerical,
                "residual add scales {s_a}, {s_b} -> {s_c} are too far apart for int64"
            )
        };
        if sh_a > 62 || sh_b > 62 || sh_c > 62 {
            return too_far();
        }
        let num_a = (m_a as i128) << sh_a;
        let num_b = (m_b as i128) << sh_b;
        let den = (m_c as i128) << sh_c;
        // |A|, |B| <= 255, so |N| <= 255 * (num_a + num_b).
        if 255 * (num_a + num_b) > LIMIT || den > LIMIT {
            return too_far();
        }
        let (lo, hi) = output_bounds(z_c, relu);
        Ok(AddRequant {
            num_a: num_a as i64,
            num_b: num_b as i64,
            den: den as i64,
            z_a,
            z_b,
            z_c,
            lo,
            hi,
        })
    }

    /// The exactly rounded sum of one pair of int8 inputs.
    #[inline]
    pub fn apply(&self, a: i8, b: i8) -> i8 {
        let n =
            self.num_a * (a as i64 - self.z_a as i64) + self.num_b * (b as i64 - self.z_b as i64);
        let y = rne_div(n, self.den) + self.z_c as i64;
        y.clamp(self.lo as i64, self.hi as i64) as i8
    }

    /// Element-wise add of two equally long int8 slices into `out`.
    pub fn apply_slice(&self, a: &[i8], b: &[i8], out: &mut [i8]) -> Result<()> {
        if a.len() != b.len() || a.len() != out.len() {
            bail!(
                Shape,
                "residual add of {} and {} elements into {}",
                a.len(),
                b.len(),
                out.len()
            );
        }
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = self.apply(a, b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rne_div_ties_and_signs() {
        let got: Vec<i64> = [5, 7, -5, -7, 6, -6, 3, -3, 0]
            .iter()
            .map(|&n| rne_div(n, 2))
            .collect();
        assert_eq!(got, vec![2, 4, -2, -4, 3, -3, 2, -2, 0]);
        assert_eq!(
            [rne_div(4, 3), rne_div(5, 3), rne_div(-4, 3), rne_div(-5, 3)],
            [1, 2, -1, -2]
        );
    }

    #[test]
    fn equal_scales_is_integer_add() {
        let r = AddRequant::new(0.1, 3, 0.1, -7, 0.1, 0, false).unwrap();
        assert_eq!(r.apply(10, 20), (10 - 3) + (20 + 7));
        assert_eq!(r.apply(127, 127), 127);
        assert_eq!(r.apply(-128, -128), -128);
        // Halving: (A + B) / 2 with ties to even.
        let h = AddRequant::new(0.1, 0, 0.1, 0, 0.2, 0, false).unwrap();
        assert_eq!(
            [h.apply(1, 0), h.apply(3, 0), h.apply(-1, 0), h.apply(-3, 0)],
            [0, 2, 0, -2]
        );
        let relu = AddRequant::new(0.1, 0, 0.1, 0, 0.2, -100, true).unwrap();
        assert_eq!(relu.apply(-50, -50), -100);
        assert!(relu.apply_slice(&[1, 2], &[3], &mut [0; 2]).is_err());
    }

    #[test]
    fn rejects_invalid_or_extreme_scales() {
        assert!(AddRequant::new(0.0, 0, 0.1, 0, 0.1, 0, false).is_err());
        assert!(AddRequant::new(0.1, 0, f32::NAN, 0, 0.1, 0, false).is_err());
        assert!(AddRequant::new(0.1, 200, 0.1, 0, 0.1, 0, false).is_err());
        assert!(AddRequant::new(1e20, 0, 1e-6, 0, 0.1, 0, false).is_err());
        assert!(AddRequant::new(100.0, 0, 1e-6, 0, 1.0, 0, false).is_ok());
    }
}
