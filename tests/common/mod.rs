//! Helpers shared by the integration tests.
#![allow(dead_code)]

use qat::autograd::no_grad;
use qat::rng::Rng;
use qat::{ops, Device, Result, Tensor};

pub fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// Distinct values spaced 0.1 apart in random order: no ties and no kinks
/// within a finite-difference step (for max pooling).
pub fn distinct(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.1).collect();
    rng.shuffle(&mut v);
    v
}

/// Values at least `gap` away from zero (for ReLU).
pub fn away_from_zero(rng: &mut Rng, n: usize, gap: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = rng.normal();
            if v.abs() < gap {
                gap.copysign(v) + v
            } else {
                v
            }
        })
        .collect()
}

/// `sum(y * r)` as a tracked scalar, built from existing ops: reshape y to
/// `[1, n]` and apply a linear layer with weight `r`.
pub fn weighted_sum(y: &Tensor, r: &Tensor) -> Result<Tensor> {
    let flat = y.reshape([1, y.numel()])?;
    ops::linear(&flat, r, None)
}

/// Checks the gradients of `f` at `inputs` against central finite differences
/// (evaluated in f64 from f32 forwards). `f` maps the inputs to any tensor;
/// the scalar is `sum(f(x) * r)` with fixed random `r`. At most `max_checks`
/// elements per input are probed. Tolerance: `atol + rtol * max|grad|`.
pub fn gradcheck(
    seed: u64,
    inputs: &[(Vec<f32>, Vec<usize>)],
    max_checks: usize,
    h: f32,
    atol: f64,
    rtol: f64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let dev = Device::cpu();
    let mut rng = Rng::new(seed);
    let params: Vec<Tensor> = inputs
        .iter()
        .map(|(d, s)| Tensor::param(d.clone(), s.clone(), &dev).unwrap())
        .collect();
    let y = f(&params).unwrap();
    let r_data = randn(&mut rng, y.numel());
    let r = Tensor::from_vec(r_data.clone(), [1, y.numel()], &dev).unwrap();
    let loss = weighted_sum(&y, &r).unwrap();
    let grads = loss.backward().unwrap();

    let eval = |vals: &[Vec<f32>]| -> f64 {
        no_grad(|| {
            let ts: Vec<Tensor> = vals
                .iter()
                .zip(inputs)
                .map(|(v, (_, s))| Tensor::from_vec(v.clone(), s.clone(), &dev).unwrap())
                .collect();
            let y = f(&ts).unwrap().to_vec().unwrap();
            y.iter()
                .zip(&r_data)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum()
        })
    };
    for (i, p) in params.iter().enumerate() {
        let g = grads
            .get(p)
            .unwrap_or_else(|| panic!("input {i} got no gradient"))
            .to_vec()
            .unwrap();
        let gmax = g.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
        let n = g.len();
        let stride = n.div_ceil(max_checks).max(1);
        let mut vals: Vec<Vec<f32>> = inputs.iter().map(|(d, _)| d.clone()).collect();
        for j in (0..n).step_by(stride) {
            let orig = vals[i][j];
            vals[i][j] = orig + h;
            let lp = eval(&vals);
            vals[i][j] = orig - h;
            let lm = eval(&vals);
            vals[i][j] = orig;
            let num = (lp - lm) / (2.0 * (h as f64));
            let ana = g[j] as f64;
            let tol = atol + rtol * gmax;
            assert!(
                (num - ana).abs() <= tol,
                "input {i} element {j}: analytic {ana:.6} vs numeric {num:.6} (tol {tol:.2e}, max|g| {gmax:.3})"
            );
        }
    }
}
