//! Helpers shared by the integration tests.
#![allow(dead_code)]

use qat::autograd::no_grad;
use qat::rng::Rng;
use qat::{ops, Device, Result, Tensor};
use std::path::Path;

pub mod skip;
#[allow(unused_imports)]
pub use skip::{skip, skip_gpu};

/// GPU 0 with its matrix products in `precision`, when one works. Otherwise
/// `QAT_REQUIRE_GPU=1` (the GPU check) makes it a failure, and else `check`
/// is recorded as skipped (the log keeps one line per check) and the caller
/// runs on the emulator only.
pub fn gpu_or_skip(check: &str, precision: qat::backend::Precision) -> Option<Device> {
    let gpu = qat::backend::cuda::probe::cuda_driver()
        .map_err(qat::Error::Device)
        .and_then(|_| qat::backend::cuda::gpu_device_with(precision));
    match gpu {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("QAT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("QAT_REQUIRE_GPU=1 but no usable GPU for {check}: {e}");
            }
            skip_gpu(
                check,
                &format!("no usable GPU ({e}); ran on the emulator only"),
            );
            None
        }
    }
}

/// The Python interpreter for the outside references: `$QAT_PYTHON`
/// (`scripts/test.sh` points it at its virtual environment), else `python3`.
pub fn python() -> String {
    qat::backend::cuda::probe::python()
}

/// The real Fashion-MNIST (Debian's `dataset-fashion-mnist`), or `None` after
/// recording `check` as skipped when any of its four files is missing.
pub fn fashion_mnist(check: &str) -> Option<&'static Path> {
    let dir = Path::new(qat::data::fashion_mnist::DEFAULT_DIR);
    let names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    let missing: Vec<&str> = names
        .into_iter()
        .filter(|n| !dir.join(format!("{n}.gz")).exists() && !dir.join(n).exists())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    skip(
        check,
        &format!(
            "Fashion-MNIST is not in {} (missing {}): apt-get install dataset-fashion-mnist \
             (scripts/test.sh installs it)",
            dir.display(),
            missing.join(", ")
        ),
    );
    None
}

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

/// A fresh directory under the system temp dir, unique per process and call.
/// Runs the `qat` binary: whether it succeeded, and its stdout then stderr.
pub fn qat_bin(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qat"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `qat import` of the ONNX file `onnx` into `out` with Fashion-MNIST's
/// normalization; the checkpoint's path (a failure panics).
pub fn qat_import(onnx: &Path, out: &Path) -> std::path::PathBuf {
    let (ok, log) = qat_bin(&[
        "import",
        onnx.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--mean",
        "0.286",
        "--std",
        "0.353",
    ]);
    assert!(ok, "{log}");
    out.join("checkpoint.safetensors")
}

/// `qat export` of the QAT `checkpoint` to `onnx`, then `qat verify` of the
/// two on the first `images` of `data` on the CPU: verify's success and log
/// (an export failure panics).
pub fn qat_export_verify(
    checkpoint: &str,
    onnx: &Path,
    data: &str,
    images: &str,
) -> (bool, String) {
    let onnx = onnx.to_str().unwrap();
    let (ok, log) = qat_bin(&["export", "--checkpoint", checkpoint, "--out", onnx]);
    assert!(ok, "{log}");
    qat_bin(&[
        "verify",
        "--checkpoint",
        checkpoint,
        "--onnx",
        onnx,
        "--data",
        data,
        "--images",
        images,
        "--device",
        "cpu",
    ])
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qat-test-{}-{name}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An IDX file: magic, big-endian dims, raw bytes.
pub fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = std::iter::once(magic)
        .chain(dims.iter().copied())
        .flat_map(u32::to_be_bytes)
        .collect();
    bytes.extend_from_slice(data);
    bytes
}

/// A Fashion-MNIST-shaped folder of learnable synthetic data: class `k`
/// draws a bright horizontal bar at row `2 + 2k` over noise.
pub fn synthetic_fmnist(name: &str, train: u32, test: u32) -> std::path::PathBuf {
    use qat::data::idx::{IMAGES_MAGIC, LABELS_MAGIC};
    let dir = temp_dir(name);
    let mut rng = Rng::new(99);
    for (prefix, count) in [("train", train), ("t10k", test)] {
        let labels: Vec<u8> = (0..count).map(|_| rng.below(10) as u8).collect();
        let mut pixels = Vec::with_capacity(count as usize * 784);
        for &l in &labels {
            for y in 0..28 {
                for _ in 0..28 {
                    let bar = y == 2 + 2 * l as usize || y == 3 + 2 * l as usize;
                    pixels.push(if bar {
                        200 + rng.below(55) as u8
                    } else {
                        rng.below(60) as u8
                    });
                }
            }
        }
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx_bytes(IMAGES_MAGIC, &[count, 28, 28], &pixels),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx_bytes(LABELS_MAGIC, &[count], &labels),
        )
        .unwrap();
    }
    dir
}

/// The training configuration of the tests' short runs: the small ResNet,
/// batch 32, a QAT schedule that crosses every phase within three epochs.
pub fn small_train_config(
    data: &std::path::Path,
    out: std::path::PathBuf,
    epochs: usize,
    qat: bool,
) -> qat::train::TrainConfig {
    qat::train::TrainConfig {
        arch: "small".into(),
        data_dir: data.to_path_buf(),
        epochs,
        batch_size: 32,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
        label_smoothing: 0.0,
        warmup_epochs: 0.5,
        seed: 7,
        out,
        qat: qat.then_some(qat::train::QatSchedule {
            act_quant_start: 0.5,
            freeze_bn: 1.5,
            freeze_observers: 2.5,
            observer_momentum: 0.1,
            scheme: qat::quant::params::Scheme::Asymmetric,
        }),
        train_limit: None,
        val_limit: None,
        progress: false,
        progress_secs: 30.0,
        stop_after: None,
        workers: 0,
        init: None,
        calibration_images: qat::train::DEFAULT_CALIBRATION_IMAGES,
        calibration_method: qat::train::DEFAULT_CALIBRATION_METHOD.into(),
    }
}

/// Whether ONNX Runtime can referee: `QAT_SKIP_ORT` is not `1` and
/// `$QAT_PYTHON` (else python3) imports numpy, onnx and onnxruntime.
/// Otherwise records `check` as skipped, with what to install, and returns
/// false.
pub fn ort_available(check: &str) -> bool {
    if std::env::var("QAT_SKIP_ORT").is_ok_and(|v| v == "1") {
        skip(check, "QAT_SKIP_ORT=1 is set");
        return false;
    }
    let python = python();
    let reason = match std::process::Command::new(&python)
        .args(["-c", "import numpy, onnx, onnxruntime"])
        .output()
    {
        Ok(o) if o.status.success() => return true,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            format!("`{python}` cannot import numpy, onnx and onnxruntime ({line})")
        }
        Err(e) => format!("cannot run `{python}` ({e})"),
    };
    skip(check, &format!("{reason}; {}", skip::INSTALL_PYTHON));
    false
}
