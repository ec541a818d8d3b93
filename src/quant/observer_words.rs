//! The device form of an activation quantizer (S2): the EMA observer's range
//! and the scale and zero point in force, as eight f32 words that a training
//! step updates in place on the device (`observe_act` of the backends), so
//! that neither the range nor the parameters cross to the host during
//! training. [`observe`] is the reference every backend computes bit for bit:
//! the EMA of [`EmaObserver::observe_range`], then [`Scheme::qparams`].
//!
//! A device cannot return an error from inside a step, so an invalid batch
//! range is recorded in the words (the first one, with its bounds) and not
//! folded in; the host reads it with the range ([`status`]). The CPU backend
//! also returns it as an error at once.

use super::params::{EmaObserver, QParams, Scheme, MIN_SCALE};
use crate::{bail, Result};

/// Number of words.
pub const LEN: usize = 8;
/// Running minimum.
pub const MIN: usize = 0;
/// Running maximum.
pub const MAX: usize = 1;
/// 1 once a batch was folded in, else 0.
pub const INITIALIZED: usize = 2;
/// [`OK`], [`BAD_BATCH`] or [`BAD_RANGE`]: the first problem seen.
pub const STATUS: usize = 3;
/// The scale in force.
pub const SCALE: usize = 4;
/// The zero point in force (an integer, exact in f32).
pub const ZERO_POINT: usize = 5;
/// The first invalid range's lower bound.
pub const BAD_LO: usize = 6;
/// The first invalid range's upper bound.
pub const BAD_HI: usize = 7;

/// No problem.
pub const OK: f32 = 0.0;
/// A batch's range was not finite (or empty); it was skipped.
pub const BAD_BATCH: f32 = 1.0;
/// The averaged range had no valid parameters (float32 overflow); the batch
/// was skipped.
pub const BAD_RANGE: f32 = 2.0;

/// The words of `obs` with the parameters `q` in force (the frozen ones, or
/// those of the observed range when `None`).
pub fn encode(obs: &EmaObserver, q: Option<QParams>, scheme: Scheme) -> [f32; LEN] {
    let q = q.unwrap_or_else(|| {
        scheme.qparams(obs.min, obs.max).unwrap_or(QParams {
            scale: MIN_SCALE,
            zero_point: -128,
        })
    });
    let mut w = [0.0f32; LEN];
    w[MIN] = obs.min;
    w[MAX] = obs.max;
    w[INITIALIZED] = f32::from(u8::from(obs.initialized));
    w[SCALE] = q.scale;
    w[ZERO_POINT] = q.zero_point as f32;
    w
}

/// The observer state the words hold (momentum and frozen flag from `like`).
pub fn decode(w: &[f32], like: &EmaObserver) -> EmaObserver {
    EmaObserver {
        min: w[MIN],
        max: w[MAX],
        initialized: w[INITIALIZED] != 0.0,
        ..*like
    }
}

/// The parameters in force.
pub fn qparams(w: &[f32]) -> QParams {
    QParams {
        scale: w[SCALE],
        zero_point: w[ZERO_POINT] as i32,
    }
}

/// The recorded problem, as the message the host observer gives for it.
pub fn status(w: &[f32]) -> Option<String> {
    let (lo, hi) = (w[BAD_LO], w[BAD_HI]);
    match w[STATUS] {
        OK => None,
        BAD_BATCH => Some(format!("invalid batch range [{lo}, {hi}]")),
        _ => Some(format!(
            "activation range [{lo}, {hi}] has no valid quantization parameters"
        )),
    }
}

fn record(w: &mut [f32], status: f32, lo: f32, hi: f32) {
    if w[STATUS] == OK {
        w[STATUS] = status;
        w[BAD_LO] = lo;
        w[BAD_HI] = hi;
    }
}

/// One observer step: folds the batch range `[lo, hi]` into the words with
/// `momentum` (the first batch is copied) and sets the parameters of the new
/// range under `scheme`. An invalid batch is recorded, skipped, and returned
/// as an error.
pub fn observe(w: &mut [f32], lo: f32, hi: f32, momentum: f32, scheme: Scheme) -> Result<()> {
    if !lo.is_finite() || !hi.is_finite() || lo > hi {
        record(w, BAD_BATCH, lo, hi);
        bail!(Numerical, "invalid batch range [{lo}, {hi}]");
    }
    let (min, max) = if w[INITIALIZED] != 0.0 {
        (
            w[MIN] + momentum * (lo - w[MIN]),
            w[MAX] + momentum * (hi - w[MAX]),
        )
    } else {
        (lo, hi)
    };
    match scheme.qparams(min, max) {
        Ok(q) => {
            w[MIN] = min;
            w[MAX] = max;
            w[INITIALIZED] = 1.0;
            w[SCALE] = q.scale;
            w[ZERO_POINT] = q.zero_point as f32;
            Ok(())
        }
        Err(e) => {
            record(w, BAD_RANGE, min, max);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_matches_the_host_observer() {
        let mut obs = EmaObserver::new(0.1);
        let mut w = encode(&obs, None, Scheme::Asymmetric);
        for (lo, hi) in [(-1.0, 2.0), (-0.5, 3.0), (0.25, 0.75), (-4.0, -1.0)] {
            obs.observe_range(lo, hi).unwrap();
            observe(&mut w, lo, hi, 0.1, Scheme::Asymmetric).unwrap();
            assert_eq!(decode(&w, &obs), obs);
            assert_eq!(qparams(&w), obs.qparams().unwrap());
        }
        assert_eq!(status(&w), None);
    }

    #[test]
    fn an_invalid_batch_is_recorded_and_skipped() {
        let mut w = encode(&EmaObserver::new(0.1), None, Scheme::Symmetric);
        observe(&mut w, -1.0, 1.0, 0.1, Scheme::Symmetric).unwrap();
        let before = w;
        let e = observe(&mut w, f32::NEG_INFINITY, 1.0, 0.1, Scheme::Symmetric).unwrap_err();
        assert!(
            e.to_string().contains("invalid batch range [-inf, 1]"),
            "{e}"
        );
        assert_eq!(w[..STATUS], before[..STATUS]);
        assert_eq!(qparams(&w), qparams(&before));
        observe(&mut w, 0.0, f32::NAN, 0.1, Scheme::Symmetric).unwrap_err();
        // The first problem is the one kept.
        assert_eq!(status(&w).unwrap(), "invalid batch range [-inf, 1]");
    }
}
