//! ONNX Runtime as the outside referee (QUANT_SPEC S10.3): exports int8 and
//! FP32 graphs, runs the int8 executor, and hands everything to
//! `scripts/ort_check.py`, which runs onnx.checker and ONNX Runtime's CPU
//! provider and compares (node by node and end to end). Needs a Python with
//! `numpy`, `onnx` and `onnxruntime`: `$QAT_PYTHON`, else `python3`
//! (`scripts/test.sh` installs them in a virtual environment and sets
//! `QAT_PYTHON`). Where they are missing, or with `QAT_SKIP_ORT=1`, the check
//! is skipped and recorded (tests/common/skip.rs); under `CI=true` it fails.
//! With `QAT_ORT_REPORT=<file>` the script's output (every count) is also
//! written there; `scripts/test.sh` prints it at the end of the run.

mod common;
mod onnx_util;

use common::temp_dir;
use onnx_util::{
    images, info, pool_concat_graph, train_steps, trained, write_npy_f32, write_npy_i8,
};
use qat::executor::Executor;
use qat::graph::{Graph, GraphBuilder};
use qat::int8::Int8Net;
use qat::models::Arch;
use qat::nn::{Mode, Module};
use qat::onnx::{export_fp32, export_int8, save_model};
use qat::ops::MaxPool2dParams;
use qat::saved_model::ModelInfo;
use qat::{Device, Tensor};
use serde_json::json;
use std::path::Path;
use std::process::Command;

const N: usize = 16;

/// Exports `m`, runs the executor on the test images and writes every int8
/// tensor and the logits; returns the manifest entry.
fn int8_case(
    dir: &Path,
    name: &str,
    m: &Int8Net,
    meta: &ModelInfo,
    expect: &str,
    x: &[f32],
) -> serde_json::Value {
    let model = format!("{name}.onnx");
    save_model(&export_int8(m, meta).unwrap(), &dir.join(&model)).unwrap();
    let exec = Executor::load(&dir.join(&model)).unwrap();
    let n = x.len() / 784;
    let input = format!("{name}.input.npy");
    write_npy_f32(&dir.join(&input), &[n, 1, 28, 28], x);
    let (logits, tensors) = exec.run_trace(x, n).unwrap();
    let mut files = serde_json::Map::new();
    for (i, t) in tensors.iter().enumerate() {
        let f = format!("{name}.t{i}.npy");
        write_npy_i8(&dir.join(&f), &t.shape, &t.values);
        files.insert(t.name.clone(), json!(f));
    }
    let f = format!("{name}.logits.npy");
    write_npy_f32(&dir.join(&f), &[n, logits.len() / n], &logits);
    files.insert("logits".into(), json!(f));
    json!({"name": name, "kind": "int8", "model": model, "input": input,
           "tensors": files, "logits": "logits", "expect": expect})
}

fn checkpoint_case(dir: &Path, ck: &Path) -> serde_json::Value {
    use qat::data::{fashion_mnist::DEFAULT_DIR, FashionMnist, Normalize, Split};
    let ck = qat::checkpoint::Checkpoint::load(ck).unwrap();
    let (model, meta, _) = qat::train::model_from_checkpoint(&ck, &Device::cpu()).unwrap();
    let n: usize = std::env::var("QAT_ORT_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut data = FashionMnist::load(Path::new(DEFAULT_DIR), Split::Test).unwrap();
    data.truncate(n);
    let norm = Normalize::new(&meta.mean, &meta.std).unwrap();
    let mut x = vec![0.0; data.len() * 784];
    for (i, img) in x.chunks_exact_mut(784).enumerate() {
        norm.apply(data.image(i), img, data.dims());
    }
    let int8 = Int8Net::build(&model).unwrap();
    int8_case(dir, "checkpoint_int8", &int8, &meta, "add", &x)
}

fn fp32_case(dir: &Path, name: &str, m: &Graph, arch: Arch) -> serde_json::Value {
    let model = format!("{name}.onnx");
    save_model(&export_fp32(m, &info(arch)).unwrap(), &dir.join(&model)).unwrap();
    let (x, _) = images(8, N);
    let t = Tensor::from_vec(x.clone(), [N, 1, 28, 28], &Device::cpu()).unwrap();
    let logits = qat::autograd::no_grad(|| m.forward(&t, Mode::Eval))
        .unwrap()
        .to_vec()
        .unwrap();
    let (input, out) = (format!("{name}.input.npy"), format!("{name}.logits.npy"));
    write_npy_f32(&dir.join(&input), &[N, 1, 28, 28], &x);
    write_npy_f32(&dir.join(&out), &[N, 10], &logits);
    json!({"name": name, "kind": "fp32", "model": model, "input": input, "logits": out})
}

#[test]
fn onnx_runtime_agrees_with_the_executor() {
    const CHECK: &str = "onnx_ort";
    // The packages first, before the minutes of training below.
    if !common::ort_available(CHECK) {
        return;
    }
    let python = common::python();
    let dev = Device::cpu();
    let dir = temp_dir("ort");
    let small = trained(Arch::Small, true, 12, 1, &dev);
    let r18 = trained(Arch::ResNet18, true, 6, 2, &dev);
    let small_int8 = Int8Net::build(&small).unwrap();
    let r18_int8 = Int8Net::build(&r18).unwrap();
    let (x, _) = images(7, N);
    let (small_info, r18_info) = (info(Arch::Small), info(Arch::ResNet18));
    let mut cases = vec![
        int8_case(&dir, "small_int8", &small_int8, &small_info, "add", &x),
        int8_case(&dir, "resnet18_int8", &r18_int8, &r18_info, "add", &x),
    ];
    // A graph of Conv / MaxPool / global-average-pool / FC only: ResNet-18's
    // stem, pool and classifier without the residual blocks, trained briefly.
    let (mut g, x_in) = GraphBuilder::new(1, &dev, 9).unwrap();
    let stem = g.conv_bn("stem", x_in, 64, 7, 2, 3, true).unwrap();
    let pool = g
        .max_pool("stem.maxpool", stem, MaxPool2dParams::new(3, 2, 1))
        .unwrap();
    let gap = g.global_avg_pool("gap", pool).unwrap();
    g.linear("fc", gap, 10, true).unwrap();
    let chain = train_steps(g.finish(), true, 6, 9, &dev);
    let chain_int8 = Int8Net::build(&chain).unwrap();
    cases.push(int8_case(
        &dir,
        "resnet18_chain_int8",
        &chain_int8,
        &r18_info,
        "exact",
        &x,
    ));
    // Optionally a trained checkpoint on Fashion-MNIST test images
    // (QAT_ORT_CHECKPOINT=path, QAT_ORT_IMAGES=n, default 256).
    if let Ok(ck) = std::env::var("QAT_ORT_CHECKPOINT") {
        cases.push(checkpoint_case(&dir, Path::new(&ck)));
    }
    // Channel concat (QLinearConcat: ORT's requantization table) and average
    // pooling (QLinearAveragePool: within 1 LSB, S6).
    let pc = train_steps(pool_concat_graph(&dev, 5), true, 8, 13, &dev);
    let pc_int8 = Int8Net::build(&pc).unwrap();
    cases.push(int8_case(
        &dir,
        "pool_concat_int8",
        &pc_int8,
        &small_info,
        "avgpool",
        &x,
    ));
    let pc_fp = train_steps(pool_concat_graph(&dev, 6), false, 4, 14, &dev);
    cases.push(fp32_case(&dir, "pool_concat_fp32", &pc_fp, Arch::Small));
    let small_fp = trained(Arch::Small, false, 5, 3, &dev);
    let r18_fp = trained(Arch::ResNet18, false, 3, 4, &dev);
    cases.push(fp32_case(&dir, "small_fp32", &small_fp, Arch::Small));
    cases.push(fp32_case(&dir, "resnet18_fp32", &r18_fp, Arch::ResNet18));
    // MobileNetV2 (28x28 variant, width 0.35): depthwise QLinearConv, ReLU6
    // folded into the clamp, adds without ReLU; Clip for ReLU6 in FP32.
    let mnv2: Arch = "mobilenet_v2_small_x0.35".parse().unwrap();
    let mnv2_int8 = Int8Net::build(&trained(mnv2, true, 6, 5, &dev)).unwrap();
    cases.push(int8_case(
        &dir,
        "mobilenet_v2_int8",
        &mnv2_int8,
        &info(mnv2),
        "add",
        &x,
    ));
    let mnv2_fp = trained(mnv2, false, 3, 6, &dev);
    cases.push(fp32_case(&dir, "mobilenet_v2_fp32", &mnv2_fp, mnv2));
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&json!({ "cases": cases })).unwrap(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ort_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}`: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let hint = if stderr.contains("ModuleNotFoundError") || stderr.contains("ImportError") {
            format!("\n(a package is missing: {})", common::skip::INSTALL_PYTHON)
        } else {
            String::new()
        };
        let stderr = if stderr.trim().is_empty() {
            "(empty)".into()
        } else {
            stderr
        };
        panic!(
            "`{python} scripts/ort_check.py` failed ({}); its output:\n{stdout}\n\
             its stderr:\n{stderr}{hint}",
            out.status
        );
    }
    println!("{stdout}");
    eprint!("{stderr}");
    if let Some(report) = std::env::var_os("QAT_ORT_REPORT") {
        std::fs::write(&report, stdout.as_bytes()).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
