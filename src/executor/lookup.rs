//! Element-wise quantized activations by 256-entry tables: com.microsoft
//! `QLinearLeakyRelu` and `QLinearSigmoid`, computed the way ONNX Runtime's
//! CPU provider builds its tables (docs/INT8.md, "QLinearLeakyRelu and
//! QLinearSigmoid"), so that the executor gives its bytes exactly:
//!
//! 1. every input value `q` is dequantized in float32, `s_x * (q - z_x)`
//!    (the integer difference converted, then one multiply);
//! 2. the float function: LeakyRelu `v >= 0 ? v : alpha * v`; the logistic
//!    by ORT's rational approximation on x86 with FMA (MLAS's FMA3 kernel:
//!    the input clamped to [-18, 18], odd and even polynomials in `v^2` by
//!    fused multiply-adds, `p / q + 0.5`, then at least 0);
//! 3. QuantizeLinear of the result, `clamp(RNE(y / s_y) + z_y)`.
//!
//! A table is indexed by the stored int8 value (`q as u8`); uint8 tensors
//! are held shifted by -128 with their zero points ([`super::load::ElemType`]),
//! which leaves `q - z_x` unchanged.

use crate::quant::fake::quantize;
use crate::quant::params::{ACT_QMAX, ACT_QMIN};
use rayon::prelude::*;

/// The float function a table applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    LeakyRelu { alpha: f32 },
    Sigmoid,
}

/// The coefficients of the logistic approximation (numerator odd powers
/// 9..1, denominator even powers 10..0), Eigen's published values; each
/// literal rounds to the same f32 as in ORT's C++ source.
#[allow(clippy::excessive_precision)]
const LOGISTIC_P: [f32; 5] = [
    4.37031012579801e-11,
    1.15627324459942e-07,
    6.08574864600143e-05,
    8.51377133304701e-03,
    2.48287947061529e-01,
];
#[allow(clippy::excessive_precision)]
const LOGISTIC_Q: [f32; 6] = [
    6.10247389755681e-13,
    5.76102136993427e-09,
    6.29106785017040e-06,
    1.70198817374094e-03,
    1.16817656904453e-01,
    9.93151921023180e-01,
];

/// The logistic function as ONNX Runtime evaluates it on x86 CPUs with FMA.
pub fn ort_logistic(v: f32) -> f32 {
    let x = v.clamp(-18.0, 18.0);
    let x2 = x * x;
    let p = LOGISTIC_P[1..]
        .iter()
        .fold(LOGISTIC_P[0], |acc, &c| x2.mul_add(acc, c));
    let q = LOGISTIC_Q[1..]
        .iter()
        .fold(LOGISTIC_Q[0], |acc, &c| x2.mul_add(acc, c));
    ((x * p) / q + 0.5).max(0.0)
}

impl Activation {
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::LeakyRelu { alpha } => {
                if v >= 0.0 {
                    v
                } else {
                    alpha * v
                }
            }
            Activation::Sigmoid => ort_logistic(v),
        }
    }
}

/// The table of `act` between input `(s_x, z_x)` and output `(s_y, z_y)`
/// (zero points in the int8 domain).
pub fn build_table(act: Activation, s_x: f32, z_x: i32, s_y: f32, z_y: i32) -> Box<[i8; 256]> {
    let mut t = Box::new([0i8; 256]);
    for (i, e) in t.iter_mut().enumerate() {
        let q = i as u8 as i8 as i32;
        let v = s_x * (q - z_x) as f32;
        *e = quantize(act.apply(v), s_y, z_y, ACT_QMIN, ACT_QMAX) as i8;
    }
    t
}

/// `y[i] = table[x[i] as u8]`.
pub fn apply(table: &[i8; 256], x: &[i8], y: &mut [i8]) {
    const CHUNK: usize = 1 << 14;
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = table[x as u8 as usize];
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logistic_approximation_is_close_to_the_exact_function() {
        for i in -400..=400 {
            let v = i as f32 * 0.05;
            let exact = 1.0 / (1.0 + (-(v as f64)).exp());
            let got = ort_logistic(v) as f64;
            assert!((got - exact).abs() < 2e-6, "{v}: {got} vs {exact}");
        }
        assert_eq!(ort_logistic(0.0), 0.5);
        assert!(ort_logistic(-1e30) >= 0.0 && ort_logistic(-1e30) < 1e-7);
        assert!((ort_logistic(1e30) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn leaky_relu_table_follows_the_formula() {
        let (s_x, z_x, s_y, z_y) = (0.05f32, -3, 0.04f32, 10);
        let t = build_table(Activation::LeakyRelu { alpha: 0.1 }, s_x, z_x, s_y, z_y);
        for q in -128i32..=127 {
            let v = s_x * (q - z_x) as f32;
            let f = if v >= 0.0 { v } else { 0.1 * v };
            let want = ((f / s_y).round_ties_even() as i32 + z_y).clamp(-128, 127);
            assert_eq!(t[q as i8 as u8 as usize] as i32, want, "q = {q}");
        }
        // The zero point maps to the output zero point; large inputs
        // saturate.
        assert_eq!(t[z_x as i8 as u8 as usize] as i32, z_y);
        assert_eq!(t[127u8 as usize], 127);
        let mut y = vec![0i8; 3];
        apply(&t, &[z_x as i8, 127, -128], &mut y);
        assert_eq!(y[..2], [z_y as i8, 127]);
    }

    #[test]
    fn sigmoid_table_is_monotonic_and_spans_the_output() {
        let t = build_table(Activation::Sigmoid, 0.1, 0, 1.0 / 256.0, -128);
        let vals: Vec<i8> = (-128i32..=127).map(|q| t[q as i8 as u8 as usize]).collect();
        assert!(vals.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(t[0], 0, "sigmoid(0) = 0.5 -> 128 - 128");
        assert!(vals[0] < -120 && vals[255] == 127);
    }
}
