//! Golden tests against PyTorch (issue 2): the forward and backward of our ops
//! on the CPU device, compared with values PyTorch computed.
//!
//! Provenance: every file under `tests/data/golden/` is written by
//! `scripts/gen_golden.py` with PyTorch 2.15.0 (CPU; relu6, avg_pool2d and
//! concat added later with the same version); each file's `meta` records
//! the torch version, the script and the date, and the test checks them. The
//! script draws f32 inputs, computes in f64 on exactly those values and rounds
//! the results to f32, so the tolerances below measure our f32 error only.
//! Gradients use a random upstream gradient `r`: `loss = (y * r).sum()`.
//!
//! The data files are committed: a missing or unreadable file fails the test.
//! Tolerance: `|got - want| <= atol + rtol * |want|` element-wise, with
//! `atol`/`rtol` given per op next to each check.

use qat::autograd::Grads;
use qat::ops::{self, AvgPool2dParams, BatchNormArgs, Conv2dParams, MaxPool2dParams};
use qat::{Device, Tensor};
use serde_json::Value;
use std::collections::BTreeSet;

const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden");
const SCRIPT: &str = "scripts/gen_golden.py";
const TORCH_VERSION: &str = "2.15.0";

/// A flat row-major array with its shape, as the script writes it.
struct Arr {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Arr {
    fn tensor(&self) -> Tensor {
        Tensor::from_vec(self.data.clone(), self.shape.clone(), &Device::cpu()).unwrap()
    }
    fn param(&self) -> Tensor {
        Tensor::param(self.data.clone(), self.shape.clone(), &Device::cpu()).unwrap()
    }
}

/// The parsed file `<DATA_DIR>/<file>.json`, after checking its provenance.
fn load(file: &str) -> Value {
    let path = format!("{DATA_DIR}/{file}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("golden data {path} is missing or unreadable ({e}); run `python3 {SCRIPT}`")
    });
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: invalid JSON: {e}"));
    let meta = &v["meta"];
    assert_eq!(
        meta["script"], SCRIPT,
        "{path}: unexpected generating script"
    );
    let torch = meta["torch_version"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no torch_version"));
    assert!(
        torch.starts_with(TORCH_VERSION),
        "{path}: made with torch {torch}, expected {TORCH_VERSION}"
    );
    assert!(meta["date"].is_string(), "{path}: no date");
    v
}

fn case_names(file: &str) -> BTreeSet<String> {
    let v = load(file);
    let cases = v["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}.json: no cases"));
    cases
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// The case called `name` in `file`.
fn case(file: &str, name: &str) -> Value {
    let mut v = load(file);
    let cases = v["cases"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{file}.json: no cases"));
    let i = cases
        .iter()
        .position(|c| c["name"] == name)
        .unwrap_or_else(|| {
            panic!("{file}.json has no case {name:?}; regenerate with `python3 {SCRIPT}`")
        });
    cases.swap_remove(i)
}

fn arr(c: &Value, key: &str) -> Arr {
    opt_arr(c, key).unwrap_or_else(|| panic!("case {}: no array {key:?}", c["name"]))
}

fn opt_arr(c: &Value, key: &str) -> Option<Arr> {
    let a = c.get(key).filter(|a| !a.is_null())?;
    let shape: Vec<usize> = a["shape"]
        .as_array()?
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data: Vec<f32> = a["data"]
        .as_array()?
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "case {}: {key} does not fill its shape",
        c["name"]
    );
    Some(Arr { shape, data })
}

fn f64_of(c: &Value, key: &str) -> f64 {
    c[key]
        .as_f64()
        .unwrap_or_else(|| panic!("case {}: no number {key:?}", c["name"]))
}

fn pair(c: &Value, key: &str) -> (usize, usize) {
    let a = c[key]
        .as_array()
        .unwrap_or_else(|| panic!("case {}: no pair {key:?}", c["name"]));
    (
        a[0].as_u64().unwrap() as usize,
        a[1].as_u64().unwrap() as usize,
    )
}

/// Absolute and relative tolerance: `|got - want| <= atol + rtol * |want|`.
#[derive(Clone, Copy)]
struct Tol {
    atol: f64,
    rtol: f64,
}

/// Compares `got` (shape and values) with `want`; on failure names the worst
/// element (largest error relative to its tolerance).
fn check(what: &str, got: &Tensor, want: &Arr, tol: Tol) {
    assert_eq!(got.dims(), want.shape.as_slice(), "{what}: shape");
    check_values(what, &got.to_vec().unwrap(), &want.data, tol);
}

fn check_values(what: &str, got: &[f32], want: &[f32], tol: Tol) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut worst, mut worst_ratio, mut max_abs) = (0usize, -1.0f64, 0.0f64);
    let mut failures = 0usize;
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let (a, b) = (a as f64, b as f64);
        let err = (a - b).abs();
        let allowed = tol.atol + tol.rtol * b.abs();
        // NaN compares false: count it as a failure with infinite ratio.
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else if allowed > 0.0 {
            err / allowed
        } else if err > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        if err.is_nan() || err > allowed {
            failures += 1;
        }
        if ratio > worst_ratio {
            (worst, worst_ratio) = (i, ratio);
        }
        max_abs = max_abs.max(err);
    }
    // Shown by `cargo test -- --nocapture`, and with any failure.
    eprintln!(
        "{what}: n={} max|err|={max_abs:.3e} worst err/tol={worst_ratio:.3}",
        got.len()
    );
    assert!(
        failures == 0,
        "{what}: {failures} of {} elements outside atol={:e} rtol={:e}; worst at flat index {worst}: got {} want {} (|err| = {:.3e}, {:.1}x the tolerance)",
        got.len(),
        tol.atol,
        tol.rtol,
        got[worst],
        want[worst],
        (got[worst] as f64 - want[worst] as f64).abs(),
        worst_ratio
    );
}

/// `sum(y * r)` as a tracked scalar from existing ops: `y` reshaped to
/// `[1, n]` through a linear layer with weight `r`, so `dL/dy = r` exactly.
fn weighted_sum(y: &Tensor, r: &Arr) -> Tensor {
    assert_eq!(y.dims(), r.shape.as_slice(), "upstream gradient shape");
    let flat = y.reshape([1, y.numel()]).unwrap();
    let r = Tensor::from_vec(r.data.clone(), [1, r.data.len()], &Device::cpu()).unwrap();
    ops::linear(&flat, &r, None).unwrap()
}

fn grad<'a>(grads: &'a Grads, t: &Tensor, what: &str) -> &'a Tensor {
    grads
        .get(t)
        .unwrap_or_else(|| panic!("no gradient for {what}"))
}

/// Declares one `#[test]` per golden case plus a list of the case names, so a
/// test can check that every case in the data file is exercised.
macro_rules! golden_cases {
    ($file:literal, $list:ident, $runner:ident, $pytorch:literal: $($test:ident => $case:literal,)*) => {
        const $list: &[&str] = &[$($case),*];
        $(
            #[doc = concat!(
                "Golden case `", $case, "` of `tests/data/golden/", $file,
                ".json`, generated by `scripts/gen_golden.py` (PyTorch 2.15.0): `", $pytorch, "`."
            )]
            #[test]
            fn $test() {
                $runner($case);
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// conv2d

/// Forward and x/w/bias gradients of one conv2d case.
fn run_conv(name: &str) {
    let c = case("conv2d", name);
    let p = Conv2dParams {
        stride: pair(&c, "stride"),
        pad: pair(&c, "pad"),
        dilation: pair(&c, "dilation"),
        groups: c["groups"].as_u64().unwrap() as usize,
    };
    let (x, w) = (arr(&c, "x").param(), arr(&c, "w").param());
    let b = opt_arr(&c, "b").map(|b| b.param());
    let y = ops::conv2d(&x, &w, b.as_ref(), p).unwrap();
    // Forward and dx: dot products of at most 147 terms (7x7x3) of O(1) values.
    let tol = Tol {
        atol: 1e-5,
        rtol: 1e-4,
    };
    check(&format!("conv2d {name}: y"), &y, &arr(&c, "y"), tol);
    let grads = weighted_sum(&y, &arr(&c, "r")).backward().unwrap();
    check(
        &format!("conv2d {name}: dx"),
        grad(&grads, &x, "x"),
        &arr(&c, "dx"),
        tol,
    );
    // dw and db reduce over N * OH * OW positions (up to 512): looser atol.
    let tol_w = Tol {
        atol: 1e-4,
        rtol: 1e-4,
    };
    check(
        &format!("conv2d {name}: dw"),
        grad(&grads, &w, "w"),
        &arr(&c, "dw"),
        tol_w,
    );
    match (&b, opt_arr(&c, "db")) {
        (Some(b), Some(db)) => check(
            &format!("conv2d {name}: db"),
            grad(&grads, b, "b"),
            &db,
            tol_w,
        ),
        (None, None) => {}
        _ => panic!("conv2d {name}: bias and its gradient must come together"),
    }
}

golden_cases! {
    "conv2d", CONV2D_CASES, run_conv,
    "y = F.conv2d(x, w, b, stride, padding, dilation, groups); (y * r).sum().backward()":
    conv2d_plain_3x3_pad1 => "plain_3x3_pad1",
    conv2d_plain_3x3_pad1_nobias => "plain_3x3_pad1_nobias",
    conv2d_stride2_odd_13x11 => "stride2_odd_13x11",
    conv2d_kernel3x5_pad1x2 => "kernel3x5_pad1x2",
    conv2d_asym_stride_pad_dilation => "asym_s2x1_p0x2_d1x2_k5x3",
    conv2d_dilation2 => "dilation2",
    conv2d_groups2 => "groups2",
    conv2d_depthwise_3x3 => "depthwise_3x3",
    conv2d_depthwise_3x3_s2_n1 => "depthwise_3x3_s2_n1",
    conv2d_pointwise_1x1_s2 => "pointwise_1x1_s2",
    conv2d_resnet_stem_7x7_s2_p3 => "resnet_stem_7x7_s2_p3",
    conv2d_batch5_3x3 => "batch5_3x3_s1_p1",
}

// ---------------------------------------------------------------------------
// batch_norm

/// Batch norm in train mode (output, running statistics, dx/dgamma/dbeta) or
/// eval mode (output; running statistics must stay unchanged).
fn run_bn(name: &str) {
    let c = case("batch_norm", name);
    let train = c["train"].as_bool().unwrap();
    let (x, gamma, beta) = (
        arr(&c, "x").param(),
        arr(&c, "gamma").param(),
        arr(&c, "beta").param(),
    );
    let (rm, rv) = (
        arr(&c, "running_mean_in").tensor(),
        arr(&c, "running_var_in").tensor(),
    );
    let args = BatchNormArgs {
        running_mean: &rm,
        running_var: &rv,
        train,
        momentum: f64_of(&c, "momentum") as f32,
        eps: f64_of(&c, "eps") as f32,
    };
    let y = ops::batch_norm(&x, &gamma, &beta, args).unwrap();
    // Output: normalized values of magnitude ~3 after the affine map.
    check(
        &format!("batch_norm {name}: y"),
        &y,
        &arr(&c, "y"),
        Tol {
            atol: 1e-5,
            rtol: 1e-4,
        },
    );
    // Running statistics: one f32 blend of statistics computed in f64.
    let tol_stats = Tol {
        atol: 1e-6,
        rtol: 1e-5,
    };
    check(
        &format!("batch_norm {name}: running_mean"),
        &rm,
        &arr(&c, "running_mean_out"),
        tol_stats,
    );
    check(
        &format!("batch_norm {name}: running_var"),
        &rv,
        &arr(&c, "running_var_out"),
        tol_stats,
    );
    if !train {
        return;
    }
    let grads = weighted_sum(&y, &arr(&c, "r")).backward().unwrap();
    // dx combines two channel reductions with cancellation; dgamma and dbeta
    // reduce over N * H * W values (up to 126).
    check(
        &format!("batch_norm {name}: dx"),
        grad(&grads, &x, "x"),
        &arr(&c, "dx"),
        Tol {
            atol: 1e-5,
            rtol: 1e-4,
        },
    );
    let tol_affine = Tol {
        atol: 1e-5,
        rtol: 1e-4,
    };
    check(
        &format!("batch_norm {name}: dgamma"),
        grad(&grads, &gamma, "gamma"),
        &arr(&c, "dgamma"),
        tol_affine,
    );
    check(
        &format!("batch_norm {name}: dbeta"),
        grad(&grads, &beta, "beta"),
        &arr(&c, "dbeta"),
        tol_affine,
    );
}

golden_cases! {
    "batch_norm", BATCH_NORM_CASES, run_bn,
    "y = F.batch_norm(x, running_mean, running_var, gamma, beta, training, momentum, eps); (y * r).sum().backward()":
    batch_norm_train_4d => "train_4d",
    batch_norm_train_4d_odd => "train_4d_odd",
    batch_norm_train_2d => "train_2d",
    batch_norm_train_4d_momentum_eps => "train_4d_momentum0.3_eps1e-3",
    batch_norm_eval_4d => "eval_4d",
    batch_norm_eval_2d => "eval_2d",
}

// ---------------------------------------------------------------------------
// cross_entropy

/// Mean cross-entropy with label smoothing: loss and its gradient wrt logits.
fn run_ce(name: &str) {
    let c = case("cross_entropy", name);
    let logits = arr(&c, "logits").param();
    let labels: Vec<u32> = c["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap() as u32)
        .collect();
    let eps = f64_of(&c, "label_smoothing") as f32;
    let loss = ops::cross_entropy(&logits, &labels, eps).unwrap();
    // Loss: a mean of log-sum-exps, accumulated in f64 by our kernel.
    check_values(
        &format!("cross_entropy {name}: loss"),
        &[loss.item().unwrap()],
        &[f64_of(&c, "loss") as f32],
        Tol {
            atol: 1e-6,
            rtol: 1e-5,
        },
    );
    let grads = loss.backward().unwrap();
    // Gradient (softmax - target) / N: elements at most 1/N, so a small atol.
    check(
        &format!("cross_entropy {name}: dlogits"),
        grad(&grads, &logits, "logits"),
        &arr(&c, "dlogits"),
        Tol {
            atol: 1e-7,
            rtol: 1e-5,
        },
    );
}

golden_cases! {
    "cross_entropy", CROSS_ENTROPY_CASES, run_ce,
    "loss = F.cross_entropy(logits, labels, reduction='mean', label_smoothing); loss.backward()":
    cross_entropy_ls0 => "ls0",
    cross_entropy_ls01 => "ls0.1",
    cross_entropy_ls0_wide_batch => "ls0_wide_batch",
    cross_entropy_ls01_wide_batch => "ls0.1_wide_batch",
    cross_entropy_ls01_large_logits => "ls0.1_large_logits",
}

// ---------------------------------------------------------------------------
// max_pool2d

/// Max pooling: the output is a selection, so it must match exactly; the
/// gradient goes to the first maximum of each window in row-major order
/// (PyTorch's rule, which the script checks against `return_indices`), and
/// sums at most a few f32 values of `r` per input element.
fn run_max_pool(name: &str) {
    let c = case("max_pool2d", name);
    assert_eq!(
        c["tie_rule_first_max_row_major"], true,
        "max_pool2d {name}: tie rule not confirmed by the script"
    );
    let p = MaxPool2dParams {
        kernel: pair(&c, "kernel"),
        stride: pair(&c, "stride"),
        pad: pair(&c, "pad"),
    };
    let x = arr(&c, "x").param();
    let y = ops::max_pool2d(&x, p).unwrap();
    check(
        &format!("max_pool2d {name}: y"),
        &y,
        &arr(&c, "y"),
        Tol {
            atol: 0.0,
            rtol: 0.0,
        },
    );
    let grads = weighted_sum(&y, &arr(&c, "r")).backward().unwrap();
    check(
        &format!("max_pool2d {name}: dx"),
        grad(&grads, &x, "x"),
        &arr(&c, "dx"),
        Tol {
            atol: 1e-6,
            rtol: 1e-6,
        },
    );
}

golden_cases! {
    "max_pool2d", MAX_POOL2D_CASES, run_max_pool,
    "y = F.max_pool2d(x, 3, 2, 1); (y * r).sum().backward()":
    max_pool2d_random_9x9 => "random_9x9",
    max_pool2d_random_8x10 => "random_8x10",
    max_pool2d_ties_small_ints => "ties_small_ints",
    max_pool2d_all_negative_ties => "all_negative_ties",
}

// ---------------------------------------------------------------------------
// global_avg_pool

/// Global average pooling: means of at most 49 values, and `r / (H * W)`.
fn run_gap(name: &str) {
    let c = case("global_avg_pool", name);
    let x = arr(&c, "x").param();
    let y = ops::global_avg_pool(&x).unwrap();
    let tol = Tol {
        atol: 1e-6,
        rtol: 1e-5,
    };
    check(
        &format!("global_avg_pool {name}: y"),
        &y,
        &arr(&c, "y"),
        tol,
    );
    let grads = weighted_sum(&y, &arr(&c, "r")).backward().unwrap();
    check(
        &format!("global_avg_pool {name}: dx"),
        grad(&grads, &x, "x"),
        &arr(&c, "dx"),
        tol,
    );
}

golden_cases! {
    "global_avg_pool", GLOBAL_AVG_POOL_CASES, run_gap,
    "y = F.adaptive_avg_pool2d(x, 1).flatten(1); (y * r).sum().backward()":
    global_avg_pool_7x7 => "7x7",
    global_avg_pool_1x1 => "1x1",
    global_avg_pool_4x6 => "4x6",
}

// ---------------------------------------------------------------------------
// linear

/// Fully connected layer: forward and x/w/bias gradients (dot products of at
/// most 64 terms; dw and db reduce over the batch of at most 17 rows).
fn run_linear(name: &str) {
    let c = case("linear", name);
    let (x, w) = (arr(&c, "x").param(), arr(&c, "w").param());
    let b = opt_arr(&c, "b").map(|b| b.param());
    let y = ops::linear(&x, &w, b.as_ref()).unwrap();
    let tol = Tol {
        atol: 1e-5,
        rtol: 1e-4,
    };
    check(&format!("linear {name}: y"), &y, &arr(&c, "y"), tol);
    let grads = weighted_sum(&y, &arr(&c, "r")).backward().unwrap();
    check(
        &format!("linear {name}: dx"),
        grad(&grads, &x, "x"),
        &arr(&c, "dx"),
        tol,
    );
    check(
        &format!("linear {name}: dw"),
        grad(&grads, &w, "w"),
        &arr(&c, "dw"),
        tol,
    );
    match (&b, opt_arr(&c, "db")) {
        (Some(b), Some(db)) => check(
            &format!("linear {name}: db"),
            grad(&grads, b, "b"),
            &db,
            tol,
        ),
        (None, None) => {}
        _ => panic!("linear {name}: bias and its gradient must come together"),
    }
}

golden_cases! {
    "linear", LINEAR_CASES, run_linear,
    "y = F.linear(x, w, b); (y * r).sum().backward()":
    linear_bias_5x7_to_4 => "bias_5x7_to_4",
    linear_nobias_3x64_to_10 => "nobias_3x64_to_10",
    linear_bias_17x33_to_9 => "bias_17x33_to_9",
}

// ---------------------------------------------------------------------------
// relu6 / hardtanh

/// ReLU6 (or hardtanh with the case's bounds): the output is a selection and
/// must match exactly; so must the gradient, `r` or 0 per element, also at
/// the kinks x = 0, -0 and 6 and their float32 neighbours.
fn run_relu6(name: &str) {
    let c = case("relu6", name);
    let (lo, hi) = (f64_of(&c, "min") as f32, f64_of(&c, "max") as f32);
    let x = arr(&c, "x").param();
    let y = if (lo, hi) == (0.0, 6.0) {
        ops::relu6(&x).unwrap()
    } else {
        ops::hardtanh(&x, lo, hi).unwrap()
    };
    let exact = Tol {
        atol: 0.0,
        rtol: 0.0,
    };
    check(&format!("relu6 {name}: y"), &y, &arr(&c, "y"), exact);
    let grads = weighted_sum(&y, &arr(&c, "r")).backward().unwrap();
    check(
        &format!("relu6 {name}: dx"),
        grad(&grads, &x, "x"),
        &arr(&c, "dx"),
        exact,
    );
}

golden_cases! {
    "relu6", RELU6_CASES, run_relu6,
    "y = F.relu6(x) (or F.hardtanh(x, min, max)); (y * r).sum().backward()":
    relu6_kinks_64 => "kinks_64",
    relu6_kinks_9 => "kinks_9",
    relu6_random_both_sides => "random_both_sides",
    hardtanh_m05_2 => "hardtanh_m0.5_2",
}

/// The file records PyTorch's gradient at the kinks, measured on its scalar
/// and vectorized paths: 0 at 0, -0 and 6 (what `ops::relu6` does).
#[test]
fn relu6_kink_rule_recorded() {
    let v = load("relu6");
    let kinks = &v["meta"]["relu6_kink_gradients"];
    for k in ["n1_x0", "n1_x6", "n1_x-0", "n64_x0", "n64_x6", "n64_x-0"] {
        assert_eq!(kinks[k].as_f64(), Some(0.0), "relu6 gradient at {k}");
    }
}

// ---------------------------------------------------------------------------
// avg_pool2d

/// Average pooling, both divisor rules, with and without ceil_mode: sums of
/// at most 49 values and `r / divisor` sums of at most a few terms.
fn run_avg_pool(name: &str) {
    let c = case("avg_pool2d", name);
    let p = AvgPool2dParams {
        kernel: pair(&c, "kernel"),
        stride: pair(&c, "stride"),
        pad: pair(&c, "pad"),
        count_include_pad: c["count_include_pad"].as_bool().unwrap(),
        ceil_mode: c["ceil_mode"].as_bool().unwrap(),
    };
    let x = arr(&c, "x").param();
    let y = ops::avg_pool2d(&x, p).unwrap();
    let tol = Tol {
        atol: 1e-6,
        rtol: 1e-5,
    };
    check(&format!("avg_pool2d {name}: y"), &y, &arr(&c, "y"), tol);
    let grads = weighted_sum(&y, &arr(&c, "r")).backward().unwrap();
    check(
        &format!("avg_pool2d {name}: dx"),
        grad(&grads, &x, "x"),
        &arr(&c, "dx"),
        tol,
    );
}

golden_cases! {
    "avg_pool2d", AVG_POOL2D_CASES, run_avg_pool,
    "y = F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad); (y * r).sum().backward()":
    avg_pool2d_k3s2p1_incl => "k3s2p1_incl_9x7",
    avg_pool2d_k3s2p1_excl => "k3s2p1_excl_9x7",
    avg_pool2d_k3s1p1_excl => "k3s1p1_excl_6x5",
    avg_pool2d_k2s2_ceil_excl => "k2s2_ceil_excl_7x9",
    avg_pool2d_k2s2_ceil_incl => "k2s2_ceil_incl_7x9",
    avg_pool2d_k3s2p1_ceil_incl => "k3s2p1_ceil_incl_8x6",
    avg_pool2d_k3s2p1_ceil_excl => "k3s2p1_ceil_excl_8x6",
    avg_pool2d_rect_asym => "k3x2_s2x1_p1x0_incl_7x6",
    avg_pool2d_k5x3_ceil_excl => "k5x3_s3x2_p2x1_ceil_excl_10x7",
    avg_pool2d_k7_global => "k7_global_7x7",
}

// ---------------------------------------------------------------------------
// concat

/// Concatenation and its split gradient: copies, so exact.
fn run_concat(name: &str) {
    let c = case("concat", name);
    let axis = c["axis"].as_u64().unwrap() as usize;
    let arrs = |key: &str| -> Vec<Arr> {
        let n = c[key].as_array().unwrap().len();
        let wrapped: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({"name": c["name"], "a": c[key][i]}))
            .collect();
        wrapped.iter().map(|w| arr(w, "a")).collect()
    };
    let xs: Vec<Tensor> = arrs("xs").iter().map(|a| a.param()).collect();
    let refs: Vec<&Tensor> = xs.iter().collect();
    let y = ops::concat(&refs, axis).unwrap();
    let exact = Tol {
        atol: 0.0,
        rtol: 0.0,
    };
    check(&format!("concat {name}: y"), &y, &arr(&c, "y"), exact);
    let grads = weighted_sum(&y, &arr(&c, "r")).backward().unwrap();
    for (i, (x, dx)) in xs.iter().zip(arrs("dxs")).enumerate() {
        check(
            &format!("concat {name}: dx[{i}]"),
            grad(&grads, x, "x"),
            &dx,
            exact,
        );
    }
}

golden_cases! {
    "concat", CONCAT_CASES, run_concat,
    "y = torch.cat(xs, dim=axis); (y * r).sum().backward()":
    concat_channels_2_3_5 => "channels_2_3_5",
    concat_channels_1x1_1_4 => "channels_1x1_1_4",
    concat_height_axis2 => "height_axis2",
}

// ---------------------------------------------------------------------------

/// Every case in every file written by `scripts/gen_golden.py` has a test
/// above, and every test's case is in its file.
#[test]
fn every_golden_case_is_tested() {
    for (file, tested) in [
        ("conv2d", CONV2D_CASES),
        ("batch_norm", BATCH_NORM_CASES),
        ("cross_entropy", CROSS_ENTROPY_CASES),
        ("max_pool2d", MAX_POOL2D_CASES),
        ("global_avg_pool", GLOBAL_AVG_POOL_CASES),
        ("linear", LINEAR_CASES),
        ("relu6", RELU6_CASES),
        ("avg_pool2d", AVG_POOL2D_CASES),
        ("concat", CONCAT_CASES),
    ] {
        let tested: BTreeSet<String> = tested.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            case_names(file),
            tested,
            "{file}.json: cases in the data vs cases with a test"
        );
    }
}
