//! The int8 executor on graphs made by another tool: ONNX Runtime's own
//! quantizer (`quantize_static`) applied to qat's FP32 export of the small
//! ResNet in `tests/data/fixture_small_qat/`, in every form
//! `scripts/ort_quantize.py` lists (QOperator and QDQ, S8S8, U8S8 and U8U8,
//! with and without `quant_pre_process`, per-channel and per-tensor,
//! symmetric and asymmetric weights, symmetric activations), calibrated on
//! 200 Fashion-MNIST training images. ORT is the referee: every graph the
//! executor accepts runs in both on the first 64 Fashion-MNIST test images,
//! and every step (a QOperator node, or a QDQ group the executor fused) is
//! compared with ORT running the same sub-graph on the executor's own
//! inputs: 0 differing elements on Conv/Gemm/pooling/Flatten/Quantize, the
//! documented 1-LSB rate on Add. The ReLUs that symmetric activations keep
//! run as int8 Clips and are compared like any step. Graphs with float ops
//! between the quantized ones (BatchNormalization left in without
//! pre-processing) must be refused as not integer-only, naming the node.
//!
//! Needs Python with numpy, onnx and onnxruntime (`$QAT_PYTHON`, see
//! tests/onnx_ort.rs) and Fashion-MNIST; skipped through tests/common/skip.rs
//! otherwise (a failure under `CI=true`). ORT's U8S8 kernels on a CPU without
//! VNNI saturate int16 pair sums (docs/INT8.md): a U8 graph whose
//! convolutions then differ is recorded as a skipped check, not a failure.

mod common;
mod onnx_util;

use onnx_util::{write_npy, write_npy_f32};
use qat::executor::Executor;
use qat::models::Arch;
use qat::onnx::{export_fp32, save_model};
use qat::Device;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const CHECK: &str = "onnx_ort_quantized";
const N_TEST: usize = 64;

fn python_ready(python: &str) -> bool {
    let probe = Command::new(python)
        .args([
            "-c",
            "import numpy, onnx, onnxruntime, onnxruntime.quantization",
        ])
        .output();
    let reason = match probe {
        Err(e) => format!("cannot run `{python}` ({e})"),
        Ok(out) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let error = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            format!("`{python}` cannot import numpy, onnx and onnxruntime.quantization ({error})")
        }
        Ok(_) => return true,
    };
    common::skip(
        CHECK,
        &format!("{reason}; {}", common::skip::INSTALL_PYTHON),
    );
    false
}

fn run_script(python: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ort_quantize.py");
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}`: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "`{python} scripts/ort_quantize.py {}` failed ({}):\n{stdout}\nstderr:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

/// Whether ORT's quantizer leaves float ops between the quantized ones in
/// this variant that the executor cannot fuse: BatchNormalization without
/// pre-processing (ORT does not quantize it), and in the QOperator form
/// with symmetric activations the last block's Add, Relu and the global
/// average pool, which ORT leaves in float. The ReLUs that symmetric int8
/// activations keep in the QDQ form (DequantizeLinear -> Relu ->
/// QuantizeLinear, zero point 0) are fused as int8 Clips and compared with
/// ORT like every other step.
fn has_float_ops(v: &Value) -> bool {
    !v["pre_process"].as_bool().unwrap()
        || (v["format"] == "qop" && v["extra_options"].get("ActivationSymmetric").is_some())
}

#[test]
fn executor_matches_onnx_runtime_on_its_quantized_graphs() {
    if std::env::var("QAT_SKIP_ORT").is_ok_and(|v| v == "1") {
        common::skip(CHECK, "QAT_SKIP_ORT=1 is set");
        return;
    }
    let python = common::python();
    if !python_ready(&python) {
        return;
    }
    let Some(data) = common::fashion_mnist(CHECK) else {
        return;
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture_small_qat/model.fp32.onnx");
    check_model(&python, &fixture, data, "fixture", None, 14);
    // Two more FP32 exports, briefly trained, in the forms that matter:
    // ResNet-18's stem max pool (MaxPool on uint8, and DequantizeLinear ->
    // MaxPool -> QuantizeLinear dropped in QDQ), and the graph with channel
    // concats, average pools (count_include_pad, ceil_mode) and ReLU6.
    let dev = Device::cpu();
    let dir = common::temp_dir("ortq-fp32");
    let r18 = onnx_util::trained(Arch::ResNet18, false, 3, 4, &dev);
    let pc = onnx_util::train_steps(onnx_util::pool_concat_graph(&dev, 6), false, 4, 14, &dev);
    let some = "qop_u8s8_pre,qop_s8s8_pre,qdq_u8s8_pre,qdq_s8s8_pre,qdq_u8s8_pre_relu";
    for (name, g, arch) in [
        ("resnet18", &r18, Arch::ResNet18),
        ("pool_concat", &pc, Arch::Small),
    ] {
        let path = dir.join(format!("{name}.fp32.onnx"));
        save_model(&export_fp32(g, &onnx_util::info(arch)).unwrap(), &path).unwrap();
        check_model(&python, &path, data, name, Some(some), 5);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Quantizes `fp32` with ORT in every form (or those `only` lists), runs
/// each graph in the executor and has ORT check it step by step.
fn check_model(
    python: &str,
    fp32: &Path,
    data: &Path,
    what: &str,
    only: Option<&str>,
    min_cases: usize,
) {
    let dir = common::temp_dir(&format!("ortq-{what}"));
    let n_test = N_TEST.to_string();
    let mut args = vec![
        "quantize",
        fp32.to_str().unwrap(),
        data.to_str().unwrap(),
        dir.to_str().unwrap(),
        &n_test,
    ];
    args.extend(only);
    let log = run_script(python, &args);
    println!("{what}:\n{log}");
    let variants: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("variants.json")).unwrap()).unwrap();
    let raw = std::fs::read(dir.join("input.f32")).unwrap();
    let x: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(x.len(), N_TEST * 784);
    let mut cases = Vec::new();
    let mut refused = 0;
    for (name, v) in &variants {
        let path = dir.join(v["model"].as_str().unwrap());
        let loaded = Executor::load(&path);
        if has_float_ops(v) {
            let e = match loaded {
                Ok(_) => panic!("{name}: a graph with float ops was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains("not integer-only: node '") && e.contains("computes in float"),
                "{name}: {e}"
            );
            // The float BatchNormalization after the stem's quantized
            // convolution, or the last block's float ReLU.
            let first = if !v["pre_process"].as_bool().unwrap() {
                "(BatchNormalization)"
            } else {
                "(Relu)"
            };
            assert!(e.contains(first), "{name}: {e}");
            println!("{name}: refused as expected: {}", e.lines().next().unwrap());
            refused += 1;
            continue;
        }
        let exec = loaded.unwrap_or_else(|e| panic!("{name} ({:?}): {e}", v["ops"]));
        let (logits, tensors) = exec.run_trace(&x, N_TEST).unwrap();
        let mut files = serde_json::Map::new();
        for (i, t) in tensors.iter().enumerate() {
            let f = format!("{name}.t{i}.npy");
            if t.uint8 {
                write_npy(&dir.join(&f), "|u1", &t.shape, &t.to_u8());
            } else {
                let bytes: Vec<u8> = t.values.iter().map(|&v| v as u8).collect();
                write_npy(&dir.join(&f), "|i1", &t.shape, &bytes);
            }
            files.insert(t.name.clone(), json!(f));
        }
        let f = format!("{name}.logits.npy");
        write_npy_f32(&dir.join(&f), &[N_TEST, logits.len() / N_TEST], &logits);
        files.insert("logits".into(), json!(f));
        let steps: Vec<Value> = exec
            .nodes()
            .iter()
            .zip(exec.step_tensors())
            .map(|((node, op), (inputs, output))| {
                json!({"node": node, "op": op, "inputs": inputs, "output": output})
            })
            .collect();
        let mut case = v.clone();
        case["name"] = json!(name);
        case["tensors"] = Value::Object(files);
        case["steps"] = json!(steps);
        cases.push(case);
    }
    assert_eq!(
        refused,
        variants.values().filter(|v| has_float_ops(v)).count()
    );
    assert!(
        cases.len() >= min_cases,
        "{what}: only {} graphs ran",
        cases.len()
    );
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&json!({ "cases": cases })).unwrap(),
    )
    .unwrap();
    let report = run_script(python, &["check", dir.to_str().unwrap()]);
    println!("{report}");
    for line in report.lines().filter(|l| l.starts_with("SATURATION ")) {
        common::skip(CHECK, line);
    }
    if let Some(path) = std::env::var_os("QAT_ORT_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(report.as_bytes()).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
