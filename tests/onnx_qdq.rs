//! The QDQ export (`qat export --format qdq`) in ONNX Runtime, and the
//! symmetric scheme's QOperator export against ORT: for the small ResNet,
//! MobileNetV2 (depthwise, ReLU6, adds without ReLU) and the concat /
//! average-pool graph, each in the asymmetric and the symmetric scheme,
//! `scripts/qdq_check.py` runs onnx.checker (full check), checks that
//! ORT's optimized graph (written with `optimized_model_filepath`) has every
//! Conv fused into a QLinearConv, and that ORT gives the QDQ graph (both
//! bias forms) the QOperator graph's logits and top-1 on Fashion-MNIST test
//! images; for the symmetric graphs also that every activation zero point
//! is 0 and (ort_check.py's rules) that ORT agrees with the int8 executor
//! node by node. Needs Python with numpy, onnx and onnxruntime, like
//! tests/onnx_ort.rs (skips are recorded, and fail under CI=true). With
//! `QAT_QDQ_CHECKPOINT=<checkpoint>` a trained checkpoint is added (its
//! scheme as saved), on `QAT_QDQ_IMAGES` test images (default 1000).

mod common;
mod onnx_util;

use onnx_util::{images, info, pool_concat_graph, train_steps_with, write_npy_f32, write_npy_i8};
use qat::executor::Executor;
use qat::graph::Graph;
use qat::int8::Int8Net;
use qat::models::{self, Arch};
use qat::onnx::{export_int8, export_qdq, save_model, QdqBias};
use qat::quant::params::Scheme;
use qat::saved_model::ModelInfo;
use qat::Device;
use serde_json::json;
use std::path::Path;
use std::process::Command;

const CHECK: &str = "onnx_qdq";

/// The first `n` Fashion-MNIST test images (normalized with `meta`'s
/// statistics) and labels, or synthetic images when the data set is
/// missing (recorded as a skip of the Fashion-MNIST part).
fn test_images(meta: &ModelInfo, n: usize) -> (Vec<f32>, Vec<i8>) {
    use qat::data::{FashionMnist, Normalize, Split};
    let Some(dir) = common::fashion_mnist(&format!("{CHECK} (Fashion-MNIST images)")) else {
        let (x, l) = images(21, n);
        return (x, l.iter().map(|&v| v as i8).collect());
    };
    let mut data = FashionMnist::load(dir, Split::Test).unwrap();
    data.truncate(n);
    let norm = Normalize::new(&meta.mean, &meta.std).unwrap();
    let mut x = vec![0.0; data.len() * 784];
    for (i, img) in x.chunks_exact_mut(784).enumerate() {
        norm.apply(data.image(i), img, data.dims());
    }
    let labels = (0..data.len()).map(|i| data.label(i) as i8).collect();
    (x, labels)
}

/// Writes the QOperator and both QDQ exports of `m`, the images, labels and
/// (symmetric scheme) the executor's tensors; returns the manifest entry.
fn case(
    dir: &Path,
    name: &str,
    m: &Int8Net,
    meta: &ModelInfo,
    scheme: Scheme,
    x: &[f32],
    labels: &[i8],
) -> serde_json::Value {
    let n = labels.len();
    let qop = format!("{name}.qop.onnx");
    save_model(&export_int8(m, meta).unwrap(), &dir.join(&qop)).unwrap();
    let mut qdq = Vec::new();
    for (bias, tag) in [(QdqBias::Int32, "qdq"), (QdqBias::Float, "qdq_floatbias")] {
        let f = format!("{name}.{tag}.onnx");
        save_model(&export_qdq(m, meta, bias).unwrap(), &dir.join(&f)).unwrap();
        qdq.push(f);
    }
    let (input, lab) = (format!("{name}.input.npy"), format!("{name}.labels.npy"));
    write_npy_f32(&dir.join(&input), &[n, 1, 28, 28], x);
    write_npy_i8(&dir.join(&lab), &[n], labels);
    let mut c = json!({"name": name, "qoperator": qop, "qdq": qdq, "input": input,
                       "labels": lab});
    if scheme == Scheme::Symmetric {
        // ORT against the executor on the symmetric QOperator graph
        // (ort_check.py's per-node rules), and zero points 0 everywhere.
        let exec = Executor::load(&dir.join(&qop)).unwrap();
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
        c["tensors"] = json!(files);
        c["zero_point"] = json!(0);
    }
    c
}

fn build(arch: &str, dev: &Device, seed: u64) -> Graph {
    match arch {
        "pool_concat" => pool_concat_graph(dev, seed),
        a => models::build(a.parse::<Arch>().unwrap(), 1, 10, dev, seed).unwrap(),
    }
}

#[test]
fn qdq_export_fuses_in_onnx_runtime_and_matches_qoperator() {
    if !common::ort_available(CHECK) {
        return;
    }
    let python = common::python();
    let dev = Device::cpu();
    let dir = common::temp_dir("qdq");
    let meta_small = info(Arch::Small);
    let (x, labels) = test_images(&meta_small, 64);
    let mut cases = Vec::new();
    for (arch, steps) in [
        ("small", 8),
        ("mobilenet_v2_small_x0.35", 6),
        ("pool_concat", 8),
    ] {
        for scheme in [Scheme::Asymmetric, Scheme::Symmetric] {
            let g = train_steps_with(build(arch, &dev, 3), Some(scheme), steps, 11, &dev);
            assert_eq!(g.scheme(), scheme);
            let m = Int8Net::build(&g).unwrap();
            let meta = match arch {
                "pool_concat" => info(Arch::Small),
                a => info(a.parse().unwrap()),
            };
            let name = format!("{}_{scheme}", arch.replace('.', "_"));
            cases.push(case(&dir, &name, &m, &meta, scheme, &x, &labels));
        }
    }
    if let Ok(ck) = std::env::var("QAT_QDQ_CHECKPOINT") {
        let n = std::env::var("QAT_QDQ_IMAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let ck = qat::checkpoint::Checkpoint::load(Path::new(&ck)).unwrap();
        let (g, meta) = qat::saved_model::load(&ck, &dev).unwrap();
        let (x, labels) = test_images(&meta, n);
        let m = Int8Net::build(&g).unwrap();
        cases.push(case(&dir, "checkpoint", &m, &meta, g.scheme(), &x, &labels));
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&json!({ "cases": cases })).unwrap(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/qdq_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}`: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`{python} scripts/qdq_check.py` failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
    if let Some(report) = std::env::var_os("QAT_QDQ_REPORT") {
        std::fs::write(&report, stdout.as_bytes()).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
