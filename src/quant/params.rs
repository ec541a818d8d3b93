//! Quantization parameters (spec S1, S2): activation scale and zero point from
//! an observed range, the EMA observer that tracks that range, and per-channel
//! symmetric weight scales.

use crate::{bail, Result};
use serde::{Deserialize, Serialize};

/// Smallest scale ever used, `2^-23` (S1, S2). Keeping every scale at or above
/// it keeps products of two scales (>= 2^-46) and the requantization
/// multipliers far from float32 subnormals.
pub const MIN_SCALE: f32 = 1.0 / 8_388_608.0;

/// Activation range: int8, asymmetric (S1).
pub const ACT_QMIN: i32 = -128;
/// Activation range: int8, asymmetric (S1).
pub const ACT_QMAX: i32 = 127;
/// Weight range: int8, symmetric, `-128` never used (S1).
pub const W_QMIN: i32 = -127;
/// Weight range: int8, symmetric (S1).
pub const W_QMAX: i32 = 127;

/// EMA momentum of the activation observer: the weight of the new batch,
/// `min <- min + momentum * (batch_min - min)`. 0.01 is PyTorch's default
/// `averaging_constant` of `MovingAverageMinMaxObserver` (S2 asks for a
/// documented hyper-parameter; this is the default, not a requirement).
pub const DEFAULT_MOMENTUM: f32 = 0.01;

/// Per-tensor affine parameters of an activation: `x ~ (q - zero_point) * scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

impl QParams {
    /// What is wrong with these parameters, if anything: every scale the
    /// contract produces is finite and at least [`MIN_SCALE`] (S1, S2), and
    /// every zero point an int8 (S1). Parameters outside that cannot come
    /// from an observer; the int8 graph could not be built from them.
    pub fn problem(&self) -> Option<String> {
        let (s, z) = (self.scale, self.zero_point);
        if !(s.is_finite() && s > 0.0) {
            Some(format!("scale {s} is not a positive finite number"))
        } else if s < MIN_SCALE {
            Some(format!(
                "scale {s:e} is below the smallest scale 2^-23 that an observer produces"
            ))
        } else if !(ACT_QMIN..=ACT_QMAX).contains(&z) {
            Some(format!(
                "zero point {z} is outside the int8 range [{ACT_QMIN}, {ACT_QMAX}]"
            ))
        } else {
            None
        }
    }
}

/// How activation ranges become scales and zero points (S2, S2s).
///
/// `Asymmetric` (the default, S2) spends all 256 int8 levels on the observed
/// range `[min, max]` with a zero point. `Symmetric` (S2s) is the scheme
/// TensorRT's explicit quantization requires: zero point 0 and
/// `s = max(|min|, |max|) / 127`, values saturating to `[-128, 127]` as in
/// ONNX QuantizeLinear. After a ReLU the symmetric grid leaves the 128
/// negative levels unused (one bit of resolution lost); that is its cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Asymmetric,
    Symmetric,
}

impl Scheme {
    /// The name used by `--scheme` and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Asymmetric => "asymmetric",
            Scheme::Symmetric => "symmetric",
        }
    }

    /// Activation scale and zero point of the range `[min, max]` under this
    /// scheme: [`act_qparams`] or [`act_qparams_symmetric`].
    pub fn qparams(self, min: f32, max: f32) -> Result<QParams> {
        match self {
            Scheme::Asymmetric => act_qparams(min, max),
            Scheme::Symmetric => act_qparams_symmetric(min, max),
        }
    }
}

impl std::str::FromStr for Scheme {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "asymmetric" => Ok(Scheme::Asymmetric),
            "symmetric" => Ok(Scheme::Symmetric),
            _ => bail!(
                Usage,
                "unknown quantization scheme '{s}': use asymmetric or symmetric"
            ),
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Symmetric activation parameters (S2s): `amax = max(|min|, |max|)`,
/// `s = max(amax / 127, 2^-23)` in float32, zero point 0. Values quantize
/// to `[-128, 127]` (S3 with `z = 0`): `amax` maps to 127, and -128 is
/// reached only by values below `-127.5 s`, as in TensorRT and ONNX
/// QuantizeLinear. Non-finite bounds are an error.
pub fn act_qparams_symmetric(min: f32, max: f32) -> Result<QParams> {
    if !min.is_finite() || !max.is_finite() || min > max {
        bail!(Numerical, "invalid activation range [{min}, {max}]");
    }
    let amax = min.abs().max(max.abs());
    let scale = (amax / 127.0).max(MIN_SCALE);
    Ok(QParams {
        scale,
        zero_point: 0,
    })
}

/// Activation scale and zero point from an observed range (S2), computed in
/// float32 exactly as the spec writes it:
/// the range is widened to contain 0 (so that 0 is exactly representable,
/// which zero padding and ReLU rely on), `s = max((max - min) / 255, 2^-23)`,
/// `z = clamp(-128 - RNE(min / s), -128, 127)`.
///
/// A range with `min >= 0` (e.g. after ReLU) gives `z = -128`. Non-finite
/// bounds are an error: they mean training diverged.
pub fn act_qparams(min: f32, max: f32) -> Result<QParams> {
    if !min.is_finite() || !max.is_finite() || min > max {
        bail!(Numerical, "invalid activation range [{min}, {max}]");
    }
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = ((max - min) / 255.0).max(MIN_SCALE);
    if !scale.is_finite() {
        bail!(
            Numerical,
            "activation range [{min}, {max}] overflows float32"
        );
    }
    // min <= 0 and s >= (max - min) / 255 keep min / s within about
    // [-255, 0], so the f32 -> i32 cast is exact; the clamp only matters for
    // the last rounding of s.
    let rounded = (min / scale).round_ties_even() as i32;
    let zero_point = (ACT_QMIN - rounded).clamp(ACT_QMIN, ACT_QMAX);
    Ok(QParams { scale, zero_point })
}

/// Symmetric weight scale of one output channel from its largest magnitude
/// (S1): `max(amax / 127, 2^-23)`. The floor keeps an all-zero channel valid.
pub fn weight_scale(amax: f32) -> f32 {
    (amax / W_QMAX as f32).max(MIN_SCALE)
}

/// Per-output-channel weight scales of `w`, whose outer dimension has
/// `out_channels` entries (OIHW conv weights, `[out, in]` FC weights). Computed
/// from the current (folded) weights at every step, memoryless (S2).
pub fn weight_scales(w: &[f32], out_channels: usize) -> Result<Vec<f32>> {
    let inner = channel_len(w.len(), out_channels)?;
    let mut scales = Vec::with_capacity(out_channels);
    for channel in w.chunks_exact(inner.max(1)).take(out_channels) {
        let mut amax = 0.0f32;
        for &v in channel {
            if !v.is_finite() {
                bail!(Numerical, "non-finite weight {v}");
            }
            amax = amax.max(v.abs());
        }
        scales.push(weight_scale(amax));
    }
    // Channels of length 0 (an empty weight) still get a valid scale.
    scales.resize(out_channels, MIN_SCALE);
    Ok(scales)
}

/// Length of one output channel of a tensor of `len` elements split into
/// `channels` outer slices, or a shape error.
pub(crate) fn channel_len(len: usize, channels: usize) -> Result<usize> {
    if channels == 0 || !len.is_multiple_of(channels) {
        bail!(
            Shape,
            "{len} elements do not split into {channels} output channels"
        );
    }
    Ok(len / channels)
}

/// Exponential-moving-average min/max observer of one activation tensor (S2).
///
/// The state is plain public fields so that checkpoints and export can copy it
/// verbatim. Once `frozen` (end of training, S2), [`EmaObserver::observe`]
/// leaves the range alone and the quantization parameters are constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaObserver {
    /// Running minimum (meaningful once `initialized`).
    pub min: f32,
    /// Running maximum (meaningful once `initialized`).
    pub max: f32,
    /// Weight of a new batch in the average; see [`DEFAULT_MOMENTUM`].
    pub momentum: f32,
    /// False until the first batch, which is copied rather than averaged.
    pub initialized: bool,
    /// When true, observations are ignored.
    pub frozen: bool,
}

impl Default for EmaObserver {
    fn default() -> Self {
        Self::new(DEFAULT_MOMENTUM)
    }
}

impl EmaObserver {
    pub fn new(momentum: f32) -> Self {
        EmaObserver {
            min: 0.0,
            max: 0.0,
            momentum,
            initialized: false,
            frozen: false,
        }
    }

    /// Folds one batch's range into the average; the first batch is copied.
    pub fn observe_range(&mut self, batch_min: f32, batch_max: f32) -> Result<()> {
        if !batch_min.is_finite() || !batch_max.is_finite() || batch_min > batch_max {
            bail!(Numerical, "invalid batch range [{batch_min}, {batch_max}]");
        }
        if self.frozen {
            return Ok(());
        }
        if self.initialized {
            self.min += self.momentum * (batch_min - self.min);
            self.max += self.momentum * (batch_max - self.max);
        } else {
            self.min = batch_min;
            self.max = batch_max;
            self.initialized = true;
        }
        Ok(())
    }

    /// Observes the range of a batch of activations (ignores an empty batch).
    pub fn observe(&mut self, x: &[f32]) -> Result<()> {
        if x.is_empty() {
            return Ok(());
        }
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in x {
            if !v.is_finite() {
                bail!(Numerical, "non-finite activation {v}");
            }
            lo = lo.min(v);
            hi = hi.max(v);
        }
        self.observe_range(lo, hi)
    }

    /// Scale and zero point of the current range (S2); before any batch was
    /// observed, that of the range [0, 0] (scale `2^-23`, zero point -128).
    pub fn qparams(&self) -> Result<QParams> {
        act_qparams(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qparams_problems() {
        let ok = act_qparams(-1.0, 2.0).unwrap();
        assert_eq!(ok.problem(), None);
        assert_eq!(act_qparams(0.0, 0.0).unwrap().problem(), None);
        for (scale, zero_point, what) in [
            (0.0, 0, "not a positive finite"),
            (-0.5, 0, "not a positive finite"),
            (f32::NAN, 0, "not a positive finite"),
            (f32::INFINITY, 0, "not a positive finite"),
            (1e-30, 0, "below the smallest scale"),
            (0.1, 128, "outside the int8 range"),
            (0.1, -129, "outside the int8 range"),
        ] {
            let p = QParams { scale, zero_point }.problem().unwrap();
            assert!(p.contains(what), "{scale} {zero_point}: {p}");
        }
    }

    #[test]
    fn qparams_edge_cases() {
        let zero = act_qparams(0.0, 0.0).unwrap();
        assert_eq!(
            zero,
            QParams {
                scale: MIN_SCALE,
                zero_point: -128
            }
        );
        // Positive-only: widened to [0, max], z = -128.
        let pos = act_qparams(0.5, 2.55).unwrap();
        assert_eq!(pos.zero_point, -128);
        assert_eq!(pos.scale, 2.55f32 / 255.0);
        // Negative-only: widened to [min, 0], z = 127.
        let neg = act_qparams(-2.55, -0.5).unwrap();
        assert_eq!(neg.zero_point, 127);
        assert_eq!(neg.scale, 2.55f32 / 255.0);
        // s = 1/256 exactly and min / s = -126.5, an exact tie: RNE gives
        // -126 (z = -2) where rounding half away from zero would give -127.
        let tie = act_qparams(-126.5 / 256.0, 128.5 / 256.0).unwrap();
        assert_eq!(
            tie,
            QParams {
                scale: 1.0 / 256.0,
                zero_point: -2
            }
        );
        // Tiny ranges hit the scale floor, and 0 stays representable.
        let tiny = act_qparams(-1e-9, 1e-9).unwrap();
        assert_eq!(tiny.scale, MIN_SCALE);
        assert_eq!(tiny.zero_point, -128);
        assert!(act_qparams(f32::NAN, 1.0).is_err());
        assert!(act_qparams(0.0, f32::INFINITY).is_err());
        assert!(act_qparams(1.0, -1.0).is_err());
        assert!(act_qparams(-f32::MAX, f32::MAX).is_err());
    }

    #[test]
    fn zero_is_exactly_representable() {
        // z in [-128, 127] and (z - z) * s == 0 for every observed range.
        let mut state = 0x1234_5678u64;
        for _ in 0..10_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = (state >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0;
            let b = (state >> 16 & 0xffffff) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0;
            let p = act_qparams(a.min(b), a.max(b)).unwrap();
            assert!((ACT_QMIN..=ACT_QMAX).contains(&p.zero_point));
            assert!(p.scale >= MIN_SCALE);
        }
    }

    #[test]
    fn symmetric_qparams() {
        let sym = |a, b| act_qparams_symmetric(a, b).unwrap();
        // The larger magnitude decides; z is always 0.
        assert_eq!(
            sym(-1.27, 0.5),
            QParams {
                scale: 1.27f32 / 127.0,
                zero_point: 0
            }
        );
        assert_eq!(
            sym(0.0, 2.54),
            QParams {
                scale: 2.54f32 / 127.0,
                zero_point: 0
            }
        );
        assert_eq!(sym(-3.0, 3.0).scale, 3.0f32 / 127.0);
        assert_eq!(
            sym(0.0, 0.0),
            QParams {
                scale: MIN_SCALE,
                zero_point: 0
            }
        );
        assert!(act_qparams_symmetric(f32::NAN, 1.0).is_err());
        assert!(act_qparams_symmetric(1.0, -1.0).is_err());
        // amax quantizes to 127 and -amax to -127 (S3 with z = 0).
        let q = sym(-0.7, 1.9);
        let fq = |x: f32| crate::quant::fake::quantize(x, q.scale, 0, ACT_QMIN, ACT_QMAX);
        assert_eq!((fq(1.9), fq(-1.9), fq(-5.0), fq(0.0)), (127, -127, -128, 0));
        assert_eq!(Scheme::Symmetric.qparams(-0.7, 1.9).unwrap(), q);
        assert_eq!(
            Scheme::Asymmetric.qparams(-0.7, 1.9).unwrap(),
            act_qparams(-0.7, 1.9).unwrap()
        );
        assert_eq!(Scheme::default(), Scheme::Asymmetric);
        for s in [Scheme::Asymmetric, Scheme::Symmetric] {
            assert_eq!(s.name().parse::<Scheme>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
        assert!("affine".parse::<Scheme>().is_err());
    }

    #[test]
    fn weight_scales_per_channel() {
        let w = [1.0, -2.54, 0.0, 0.0, 0.5, 0.25];
        let s = weight_scales(&w, 3).unwrap();
        assert_eq!(s, vec![2.54f32 / 127.0, MIN_SCALE, 0.5f32 / 127.0]);
        assert!(weight_scales(&w, 4).is_err());
        assert!(weight_scales(&w, 0).is_err());
        assert!(weight_scales(&[f32::NAN], 1).is_err());
        assert_eq!(weight_scales(&[], 2).unwrap(), vec![MIN_SCALE; 2]);
    }

    #[test]
    fn ema_observer() {
        let mut o = EmaObserver::new(0.5);
        o.observe(&[1.0, -2.0, 3.0]).unwrap();
        assert_eq!((o.min, o.max, o.initialized), (-2.0, 3.0, true));
        o.observe(&[0.0, 1.0]).unwrap();
        assert_eq!((o.min, o.max), (-1.0, 2.0));
        o.observe(&[]).unwrap();
        assert_eq!((o.min, o.max), (-1.0, 2.0));
        o.frozen = true;
        o.observe(&[-100.0, 100.0]).unwrap();
        assert_eq!((o.min, o.max), (-1.0, 2.0));
        assert!(o.observe(&[f32::NAN]).is_err());
        let p = o.qparams().unwrap();
        assert_eq!(p, act_qparams(-1.0, 2.0).unwrap());
        assert_eq!(EmaObserver::default().qparams().unwrap().zero_point, -128);
    }
}
