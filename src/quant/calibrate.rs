//! Post-training calibration of activation ranges (S2's `[min, max]` chosen
//! from data instead of a moving average): the observed extremes
//! (`minmax`), a percentile of the values (`percentile`, 99.99 by default),
//! or the range whose int8 grid reproduces the values with the least mean
//! squared error (`mse`). Percentile and MSE read a histogram of every
//! value the activation took over the calibration images.

use super::fake::fake_quant;
use super::params::{Scheme, ACT_QMAX, ACT_QMIN};
use crate::{bail, Result};

/// Bins of a calibration histogram.
pub const BINS: usize = 2048;

/// How an activation's range is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The smallest and largest value seen.
    MinMax,
    /// The `p`-th percentile of the values above zero and the `(100 - p)`-th
    /// below (a range containing 0 is kept containing 0).
    Percentile(f64),
    /// The range minimizing the mean squared quantization error over the
    /// histogram: the upper bound searched with the lower fixed at the
    /// minimum, then the lower with that upper bound.
    Mse,
}

impl Method {
    /// `minmax`, `percentile` (99.99, the anchors' choice) or `mse`.
    pub fn parse(name: &str) -> crate::Result<Method> {
        match name {
            "minmax" => Ok(Method::MinMax),
            "percentile" => Ok(Method::Percentile(99.99)),
            "mse" => Ok(Method::Mse),
            other => crate::bail!(
                Usage,
                "unknown calibration method '{other}': use minmax, percentile or mse"
            ),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile {p}"),
            Method::Mse => "mse".into(),
        }
    }
}

/// Counts of values in `BINS` equal bins over `[lo, hi]`.
#[derive(Clone, Debug)]
pub struct Histogram {
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
}

impl Histogram {
    /// A histogram over the observed range `[lo, hi]` (`lo <= hi`, finite).
    pub fn new(lo: f32, hi: f32) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            bail!(
                Numerical,
                "calibration range [{lo}, {hi}] is not finite and ordered: the model's activations \
overflow or are NaN on the calibration images"
            );
        }
        Ok(Histogram {
            lo,
            hi,
            counts: vec![0; BINS],
        })
    }

    fn width(&self) -> f64 {
        (self.hi as f64 - self.lo as f64) / BINS as f64
    }

    pub fn add(&mut self, xs: &[f32]) {
        let w = self.width();
        for &x in xs {
            let b = if w > 0.0 {
                (((x as f64 - self.lo as f64) / w) as isize).clamp(0, BINS as isize - 1) as usize
            } else {
                0
            };
            self.counts[b] += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn edge(&self, i: usize) -> f32 {
        (self.lo as f64 + i as f64 * self.width()) as f32
    }

    fn center(&self, i: usize) -> f32 {
        (self.lo as f64 + (i as f64 + 0.5) * self.width()) as f32
    }

    /// The range by `method`, for the grid of `scheme`. Under the
    /// symmetric scheme (S2s) only `max(|lo|, |hi|)` matters: minmax and
    /// percentile choose the bounds as for the asymmetric grid, MSE
    /// searches that magnitude `a` on the symmetric grid and returns the
    /// observed range clipped to `[-a, a]`.
    pub fn range(&self, method: Method, scheme: Scheme) -> Result<(f32, f32)> {
        match method {
            Method::MinMax => Ok((self.lo, self.hi)),
            Method::Percentile(p) => {
                if !(50.0..=100.0).contains(&p) {
                    bail!(Usage, "percentile {p} must lie in [50, 100]");
                }
                Ok(self.percentile(p))
            }
            Method::Mse => Ok(match scheme {
                Scheme::Asymmetric => self.mse(),
                Scheme::Symmetric => self.mse_symmetric(),
            }),
        }
    }

    /// Lower bound: the first bin edge below which at most `(100 - p)%` of
    /// the values lie; upper bound: the last bin edge above which at most
    /// that share lies; each bound no further in than 0.
    fn percentile(&self, p: f64) -> (f32, f32) {
        let total = self.total() as f64;
        let tail = total * (100.0 - p) / 100.0;
        let mut below = 0.0;
        let mut lo_bin = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            if below + c as f64 > tail {
                lo_bin = i;
                break;
            }
            below += c as f64;
        }
        let mut above = 0.0;
        let mut hi_bin = BINS;
        for (i, &c) in self.counts.iter().enumerate().rev() {
            if above + c as f64 > tail {
                hi_bin = i + 1;
                break;
            }
            above += c as f64;
        }
        let lo = self.edge(lo_bin).min(0.0).max(self.lo);
        let hi = self.edge(hi_bin).max(0.0).min(self.hi);
        (lo, hi)
    }

    /// Sum over the bins of `count * (fq(center) - center)^2` for the
    /// asymmetric grid of `[lo, hi]` (S2, S3).
    fn error(&self, lo: f32, hi: f32) -> f64 {
        self.error_on(Scheme::Asymmetric, lo, hi)
    }

    /// [`Histogram::error`] on the grid `scheme` makes of `[lo, hi]`.
    fn error_on(&self, scheme: Scheme, lo: f32, hi: f32) -> f64 {
        let Ok(q) = scheme.qparams(lo, hi) else {
            return f64::INFINITY;
        };
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                let v = self.center(i);
                let d = fake_quant(v, q.scale, q.zero_point, ACT_QMIN, ACT_QMAX) - v;
                c as f64 * (d as f64) * (d as f64)
            })
            .sum()
    }

    fn mse(&self) -> (f32, f32) {
        let mut hi = self.hi;
        if self.hi > 0.0 {
            hi = best(steps(self.hi), &|h| self.error(self.lo, h));
        }
        let mut lo = self.lo;
        if self.lo < 0.0 {
            lo = best(steps(self.lo), &|l| self.error(l, hi));
        }
        (lo, hi)
    }

    /// The magnitude `a` (1% steps from 20% to 100% of the largest one)
    /// whose symmetric grid has the least error; the range `[lo, hi]`
    /// clipped to `[-a, a]`, whose symmetric grid is that of `a`.
    fn mse_symmetric(&self) -> (f32, f32) {
        let amax = self.lo.abs().max(self.hi.abs());
        if amax == 0.0 {
            return (self.lo, self.hi);
        }
        let a = best(steps(amax), &|a| self.error_on(Scheme::Symmetric, -a, a));
        (self.lo.max(-a), self.hi.min(a))
    }
}

/// MSE candidates for a bound `b`: 1% steps from 20% to 100% of it.
fn steps(b: f32) -> Vec<f32> {
    (20..100)
        .map(|k| b * k as f32 / 100.0)
        .chain(std::iter::once(b))
        .collect()
}

/// The candidate with the least error `f` (the last one when none is finite).
fn best(cands: Vec<f32>, f: &dyn Fn(f32) -> f64) -> f32 {
    let mut best = (f64::INFINITY, *cands.last().unwrap_or(&0.0));
    for c in cands {
        let e = f(c);
        if e < best.0 {
            best = (e, c);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn hist(xs: &[f32]) -> Histogram {
        let lo = xs.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut h = Histogram::new(lo, hi).unwrap();
        h.add(xs);
        h
    }

    #[test]
    fn minmax_is_the_observed_range() {
        let h = hist(&[-1.5, 0.0, 2.0, 0.25]);
        assert_eq!(
            h.range(Method::MinMax, Scheme::Asymmetric).unwrap(),
            (-1.5, 2.0)
        );
        assert_eq!(h.total(), 4);
    }

    /// 10^5 uniform values in [0, 1) plus 5 outliers at 100: the 99.99th
    /// percentile drops the outliers (5 < 0.01% of 100005 is false: 10.0005
    /// values may be cut, so all 5 go) and stays near 1.
    #[test]
    fn percentile_drops_rare_outliers() {
        let mut rng = Rng::new(3);
        let mut xs: Vec<f32> = (0..100_000).map(|_| rng.uniform()).collect();
        xs.extend([100.0; 5]);
        let h = hist(&xs);
        let (lo, hi) = h
            .range(Method::Percentile(99.99), Scheme::Asymmetric)
            .unwrap();
        assert_eq!(lo, h.lo); // all values are positive: the minimum stays
        assert!(hi > 0.95 && hi < 1.2, "{hi}");
        // With p = 100 nothing is cut.
        assert_eq!(
            h.range(Method::Percentile(100.0), Scheme::Asymmetric)
                .unwrap()
                .1,
            100.0
        );
        assert!(h
            .range(Method::Percentile(20.0), Scheme::Asymmetric)
            .is_err());
    }

    /// On a Gaussian the MSE range clips the rare extremes (8-bit grids clip
    /// a Gaussian at roughly 3-4 sigma) and has a lower quantization error
    /// than min/max; the error function is the fake-quant error of the bin
    /// centers, checked against a direct sum.
    #[test]
    fn mse_clips_and_beats_minmax() {
        let mut rng = Rng::new(5);
        // Box-Muller normals.
        let xs: Vec<f32> = (0..200_000)
            .map(|_| {
                let (u, v) = (rng.uniform().max(1e-12), rng.uniform());
                (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect();
        let h = hist(&xs);
        let (lo, hi) = h.range(Method::Mse, Scheme::Asymmetric).unwrap();
        assert!(
            hi < h.hi && hi > 2.5 && lo > h.lo && lo < -2.5,
            "[{lo}, {hi}] of [{}, {}]",
            h.lo,
            h.hi
        );
        assert!(h.error(lo, hi) < h.error(h.lo, h.hi));
        let q = crate::quant::params::act_qparams(lo, hi).unwrap();
        let direct: f64 = (0..BINS)
            .map(|i| {
                let v = h.center(i);
                let d = fake_quant(v, q.scale, q.zero_point, ACT_QMIN, ACT_QMAX) - v;
                h.counts[i] as f64 * (d as f64).powi(2)
            })
            .sum();
        assert_eq!(h.error(lo, hi), direct);
    }

    /// The symmetric MSE range: its magnitude clips the Gaussian's rare
    /// extremes on the symmetric grid and beats min/max there, and the
    /// parameters have zero point 0.
    #[test]
    fn mse_symmetric_clips_and_beats_minmax() {
        let mut rng = Rng::new(7);
        let xs: Vec<f32> = (0..100_000)
            .map(|_| {
                let (u, v) = (rng.uniform().max(1e-12), rng.uniform());
                (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos() + 0.5
            })
            .collect();
        let h = hist(&xs);
        let (lo, hi) = h.range(Method::Mse, Scheme::Symmetric).unwrap();
        let a = lo.abs().max(hi.abs());
        let amax = h.lo.abs().max(h.hi.abs());
        assert!(a < amax && a > 2.5, "{a} of {amax}");
        let sym = |lo, hi| h.error_on(Scheme::Symmetric, lo, hi);
        assert!(sym(lo, hi) < sym(h.lo, h.hi));
        assert_eq!(Scheme::Symmetric.qparams(lo, hi).unwrap().zero_point, 0);
        // The asymmetric search is unchanged by the option.
        assert_eq!(h.range(Method::Mse, Scheme::Asymmetric).unwrap(), h.mse());
        // Post-ReLU values stay non-negative.
        let relu = hist(&xs.iter().map(|v| v.max(0.0)).collect::<Vec<_>>());
        let (lo, hi) = relu.range(Method::Mse, Scheme::Symmetric).unwrap();
        assert!(lo == 0.0 && hi > 0.0 && hi <= relu.hi);
    }

    #[test]
    fn non_finite_ranges_are_errors() {
        assert!(Histogram::new(f32::NAN, 1.0).is_err());
        assert!(Histogram::new(2.0, 1.0).is_err());
        let h = hist(&[3.0, 3.0]);
        assert_eq!(
            h.range(Method::Mse, Scheme::Asymmetric).unwrap(),
            (3.0, 3.0)
        );
    }
}
