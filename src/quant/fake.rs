//! Fake quantization (spec S3): the training forward rounds values onto the
//! int8 grid and back to float32, and its gradient is the straight-through
//! estimator. Also quantization to int8, which the eval forward and the graph
//! input (S8, QuantizeLinear) use: the same rounding, without the way back.
//!
//! Per tensor (activations): asymmetric, `[-128, 127]`, zero point from the
//! observer. Per channel (weights): symmetric, `[-127, 127]`, zero point 0,
//! one scale per outer slice (OIHW conv weights, `[out, in]` FC weights).
//!
//! `x / s` is a true float32 division, as in ONNX QuantizeLinear. PyTorch's
//! `fake_quantize_*` multiplies by `1 / s` instead, which differs from the
//! division by one float32 ulp on some inputs; the golden tests avoid those.

use super::params::{channel_len, QParams, ACT_QMAX, ACT_QMIN, W_QMAX, W_QMIN};
use crate::{bail, Result};

/// `RNE(x / s) + z` before clamping, as a float: exact whenever it matters
/// (|RNE(x / s)| < 2^24), and correctly out of range (or NaN) otherwise.
#[inline]
fn unclamped(x: f32, s: f32, z: i32) -> f32 {
    (x / s).round_ties_even() + z as f32
}

/// The quantized value `clamp(RNE(x / s) + z, qmin, qmax)` (S3). NaN maps to
/// `qmin` so that a diverged value is visible but never undefined.
#[inline]
pub fn quantize(x: f32, s: f32, z: i32, qmin: i32, qmax: i32) -> i32 {
    let v = unclamped(x, s, z);
    if v.is_nan() {
        return qmin;
    }
    // Clamp in float: the bounds are exact integers and the cast then cannot
    // saturate.
    v.clamp(qmin as f32, qmax as f32) as i32
}

/// The float value of a quantized number, `(q - z) * s` (S3, S9).
#[inline]
pub fn dequantize(q: i32, s: f32, z: i32) -> f32 {
    (q - z) as f32 * s
}

/// Fake quantization of one value: `(clamp(RNE(x / s) + z, qmin, qmax) - z) * s`.
/// NaN propagates.
#[inline]
pub fn fake_quant(x: f32, s: f32, z: i32, qmin: i32, qmax: i32) -> f32 {
    let v = unclamped(x, s, z);
    if v.is_nan() {
        return f32::NAN;
    }
    (clamp(v, qmin as f32, qmax as f32) - z as f32) * s
}

/// `f32::clamp` for a `v` that is not NaN, without its check of the bounds
/// (a branch that keeps the elementwise loops scalar).
#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// Whether the straight-through estimator passes the gradient of `x`:
/// `qmin <= RNE(x / s) + z <= qmax` (S3). The test is on the rounded value, as
/// in PyTorch, so values that round onto the edge of the grid still pass.
#[inline]
pub fn ste_pass(x: f32, s: f32, z: i32, qmin: i32, qmax: i32) -> bool {
    let v = unclamped(x, s, z);
    qmin as f32 <= v && v <= qmax as f32
}

/// [`ste_pass`] as a 0/1 factor. The gradient is `dy * mask`, a product as
/// in the spec and in PyTorch, so `-0.0` and NaN in `dy` propagate alike.
#[inline]
pub fn ste_mask(x: f32, s: f32, z: i32, qmin: i32, qmax: i32) -> f32 {
    if ste_pass(x, s, z, qmin, qmax) {
        1.0
    } else {
        0.0
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!(Shape, "{what} has {got} elements, expected {want}");
    }
    Ok(())
}

/// Per-tensor activation fake quantization into `out` (S3), `[-128, 127]`.
pub fn fake_quant_per_tensor(x: &[f32], qp: QParams, out: &mut [f32]) -> Result<()> {
    check_len("fake-quant output", out.len(), x.len())?;
    let (s, z) = (qp.scale, qp.zero_point);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = fake_quant(v, s, z, ACT_QMIN, ACT_QMAX);
    }
    Ok(())
}

/// Straight-through gradient of [`fake_quant_per_tensor`]:
/// `dx = dy * [qmin <= RNE(x / s) + z <= qmax]`.
pub fn fake_quant_per_tensor_backward(
    x: &[f32],
    dy: &[f32],
    qp: QParams,
    dx: &mut [f32],
) -> Result<()> {
    check_len("fake-quant gradient", dy.len(), x.len())?;
    check_len("fake-quant input gradient", dx.len(), x.len())?;
    let (s, z) = (qp.scale, qp.zero_point);
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        *d = g * ste_mask(v, s, z, ACT_QMIN, ACT_QMAX);
    }
    Ok(())
}

/// Per-tensor activation quantization to int8 (S3, S8 QuantizeLinear).
pub fn quantize_per_tensor(x: &[f32], qp: QParams, out: &mut [i8]) -> Result<()> {
    check_len("quantize output", out.len(), x.len())?;
    let (s, z) = (qp.scale, qp.zero_point);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize(v, s, z, ACT_QMIN, ACT_QMAX) as i8;
    }
    Ok(())
}

/// Per-output-channel weight fake quantization into `out` (S3): channel `c` is
/// the `c`-th of `scales.len()` equal outer slices, z = 0, `[-127, 127]`.
pub fn fake_quant_per_channel(w: &[f32], scales: &[f32], out: &mut [f32]) -> Result<()> {
    check_len("fake-quant output", out.len(), w.len())?;
    let inner = channel_len(w.len(), scales.len())?;
    for (c, &s) in scales.iter().enumerate() {
        let range = c * inner..(c + 1) * inner;
        for (o, &v) in out[range.clone()].iter_mut().zip(&w[range]) {
            *o = fake_quant(v, s, 0, W_QMIN, W_QMAX);
        }
    }
    Ok(())
}

/// Straight-through gradient of [`fake_quant_per_channel`].
pub fn fake_quant_per_channel_backward(
    w: &[f32],
    dy: &[f32],
    scales: &[f32],
    dw: &mut [f32],
) -> Result<()> {
    check_len("fake-quant gradient", dy.len(), w.len())?;
    check_len("fake-quant input gradient", dw.len(), w.len())?;
    let inner = channel_len(w.len(), scales.len())?;
    for (c, &s) in scales.iter().enumerate() {
        let range = c * inner..(c + 1) * inner;
        let rows = dw[range.clone()].iter_mut().zip(&dy[range.clone()]);
        for ((d, &g), &v) in rows.zip(&w[range]) {
            *d = g * ste_mask(v, s, 0, W_QMIN, W_QMAX);
        }
    }
    Ok(())
}

/// Per-output-channel weight quantization to int8 (S1, S5): the `w_q` of the
/// integer accumulator and of the exported initializers.
pub fn quantize_per_channel(w: &[f32], scales: &[f32], out: &mut [i8]) -> Result<()> {
    check_len("quantize output", out.len(), w.len())?;
    let inner = channel_len(w.len(), scales.len())?;
    for (c, &s) in scales.iter().enumerate() {
        let range = c * inner..(c + 1) * inner;
        for (o, &v) in out[range.clone()].iter_mut().zip(&w[range]) {
            *o = quantize(v, s, 0, W_QMIN, W_QMAX) as i8;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_round_to_even() {
        // s = 0.5: x / s is exact, so these are exact ties.
        let q = |x: f32| quantize(x, 0.5, 0, -128, 127);
        assert_eq!(
            [q(0.25), q(0.75), q(1.25), q(-0.25), q(-0.75)],
            [0, 2, 2, 0, -2]
        );
        // Rounding happens before the zero point: 0.5 + 1 -> 0 + 1, not 2.
        assert_eq!(quantize(0.25, 0.5, 1, -128, 127), 1);
    }

    #[test]
    fn clamp_and_mask_edges() {
        let qp = QParams {
            scale: 0.1,
            zero_point: -128,
        };
        // 25.54 / 0.1 = 255.4 -> 255 - 128 = 127: on the edge, passes.
        assert!(ste_pass(25.54, qp.scale, qp.zero_point, ACT_QMIN, ACT_QMAX));
        assert!(!ste_pass(
            25.56,
            qp.scale,
            qp.zero_point,
            ACT_QMIN,
            ACT_QMAX
        ));
        assert!(!ste_pass(
            -0.06,
            qp.scale,
            qp.zero_point,
            ACT_QMIN,
            ACT_QMAX
        ));
        assert!(ste_pass(-0.04, qp.scale, qp.zero_point, ACT_QMIN, ACT_QMAX));
        assert_eq!(quantize(1e30, 1e-7, 0, W_QMIN, W_QMAX), 127);
        assert_eq!(quantize(-f32::INFINITY, 1.0, 0, W_QMIN, W_QMAX), -127);
        assert_eq!(quantize(f32::NAN, 1.0, 3, ACT_QMIN, ACT_QMAX), -128);
        assert!(fake_quant(f32::NAN, 1.0, 0, -128, 127).is_nan());
        assert!(!ste_pass(f32::NAN, 1.0, 0, -128, 127));
    }

    #[test]
    fn fake_quant_is_dequantized_quantize() {
        let x: Vec<f32> = (0..2000).map(|i| (i as f32 - 1000.0) * 0.0137).collect();
        let qp = QParams {
            scale: 0.05,
            zero_point: 7,
        };
        let mut fq = vec![0.0; x.len()];
        let mut q = vec![0i8; x.len()];
        fake_quant_per_tensor(&x, qp, &mut fq).unwrap();
        quantize_per_tensor(&x, qp, &mut q).unwrap();
        for (&f, &q) in fq.iter().zip(&q) {
            assert_eq!(f, dequantize(q as i32, qp.scale, qp.zero_point));
        }
        let scales = [0.01, 0.2];
        let mut fq = vec![0.0; x.len()];
        fake_quant_per_channel(&x, &scales, &mut fq).unwrap();
        quantize_per_channel(&x, &scales, &mut q).unwrap();
        for (i, (&f, &q)) in fq.iter().zip(&q).enumerate() {
            assert!(q != -128);
            assert_eq!(f, dequantize(q as i32, scales[i / 1000], 0));
        }
    }

    #[test]
    fn shape_errors() {
        let qp = QParams {
            scale: 1.0,
            zero_point: 0,
        };
        assert!(fake_quant_per_tensor(&[1.0; 4], qp, &mut [0.0; 3]).is_err());
        assert!(fake_quant_per_tensor_backward(&[1.0; 4], &[1.0; 3], qp, &mut [0.0; 4]).is_err());
        assert!(fake_quant_per_channel(&[1.0; 4], &[1.0; 3], &mut [0.0; 4]).is_err());
        assert!(
            fake_quant_per_channel_backward(&[1.0; 4], &[1.0; 4], &[1.0; 2], &mut [0.0; 3])
                .is_err()
        );
        assert!(quantize_per_channel(&[1.0; 4], &[], &mut [0; 4]).is_err());
    }
}
