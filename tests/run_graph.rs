//! `qat run`: an int8 graph in the executor on a data set, through the
//! binary. Its accuracy and `--dump`ed tensors are checked against the QAT
//! model's integer-exact forward (the model the graph was exported from,
//! run here on independently normalized pixels), `--against ort` against
//! ONNX Runtime, and its errors for graphs without normalization, FP32
//! graphs and a missing Python.

mod common;
#[path = "onnx_util/mod.rs"]
mod onnx_util;

use common::{qat_bin, synthetic_fmnist, temp_dir};
use onnx_util::{info, trained};
use qat::data::{FashionMnist, Split};
use qat::int8::Int8Net;
use qat::models::Arch;
use qat::onnx::export_int8;
use qat::{Device, Tensor};
use std::path::Path;
use std::process::Command;

const N: usize = 48;

/// The first `n` test images of `dir` normalized as the exported metadata
/// says, with their labels.
fn test_images(dir: &Path, n: usize) -> (Vec<f32>, Vec<u32>) {
    let mut ds = FashionMnist::load(dir, Split::Test).unwrap();
    ds.truncate(n);
    let x = ds
        .pixels()
        .iter()
        .map(|&p| (p as f32 / 255.0 - 0.286) / 0.353)
        .collect();
    (x, ds.labels().iter().map(|&l| l as u32).collect())
}

fn top1_percent(log: &str) -> f64 {
    let at = log.find("top-1 ").expect("a top-1 line") + 6;
    log[at..].split('%').next().unwrap().parse().unwrap()
}

#[test]
fn run_reports_the_models_accuracy_dumps_its_tensors_and_agrees_with_ort() {
    let dev = Device::cpu();
    let data = synthetic_fmnist("run", 0, N as u32);
    let out = temp_dir("run");
    let model = trained(Arch::Small, true, 12, 3, &dev);
    let int8 = Int8Net::build(&model).unwrap();
    let onnx = out.join("model.int8.onnx");
    let graph = export_int8(&int8, &info(Arch::Small)).unwrap();
    qat::onnx::save_model(&graph, &onnx).unwrap();
    let (d, o) = (data.to_str().unwrap(), onnx.to_str().unwrap());

    // The reference: the QAT model's integer-exact forward.
    let (x, labels) = test_images(&data, N);
    let (logits, trace) = int8
        .forward_trace(&Tensor::from_vec(x, [N, 1, 28, 28], &dev).unwrap())
        .unwrap();
    let logits = logits.to_vec().unwrap();
    let correct = logits
        .chunks(10)
        .zip(&labels)
        .filter(|(row, &l)| {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
            best == l as usize
        })
        .count();

    let dump = out.join("dump");
    let (ok, log) = qat_bin(&[
        "run",
        o,
        "--data",
        d,
        "--batch-size",
        "20",
        "--dump",
        dump.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    println!("{log}");
    assert!(log.contains(&format!("{N} images: top-1")), "{log}");
    let want = 100.0 * correct as f64 / N as f64;
    assert!(
        (top1_percent(&log) - want).abs() < 0.005,
        "{log}\nwant top-1 {want:.2}%"
    );
    assert!(log.contains("images/s"), "{log}");
    // Every layer of the model's trace is dumped, all N images (three
    // batches of 20, 20 and 8), value for value.
    for layer in &trace {
        let a = qat::npy::read(&dump.join(format!("{}.npy", layer.name))).unwrap();
        assert_eq!(a.shape[0], N, "{}", layer.name);
        assert_eq!(a.shape[1..], layer.shape[1..], "{}", layer.name);
        let v = a.ints().unwrap();
        let same = v
            .iter()
            .zip(&layer.values)
            .filter(|(a, b)| **a == **b as i32)
            .count();
        assert_eq!(
            same,
            layer.values.len(),
            "{}: dumped values differ",
            layer.name
        );
    }

    // --limit, and a graph that does not record its normalization (as
    // another tool might write it).
    let mut bare = graph.clone();
    bare.metadata_props.clear();
    bare.producer_name = "another tool".into();
    let bare_path = out.join("bare.onnx");
    qat::onnx::save_model(&bare, &bare_path).unwrap();
    let b = bare_path.to_str().unwrap();
    let (ok, log) = qat_bin(&["run", b, "--data", d]);
    assert!(!ok && log.contains("--mean and --std"), "{log}");
    let (ok, log) = qat_bin(&[
        "run", b, "--data", d, "--mean", "0.286", "--std", "0.353", "--limit", "10",
    ]);
    assert!(ok && log.contains("10 images: top-1"), "{log}");
    let (ok, log) = qat_bin(&["run", b, "--data", d, "--mean", "0.1,0.2", "--std", "0.3"]);
    assert!(
        !ok && log.contains("2 values for a 1-channel input"),
        "{log}"
    );

    // An FP32 graph is not an int8 graph.
    let fp32 = out.join("model.fp32.onnx");
    qat::onnx::save_model(
        &qat::onnx::export_fp32(&model, &info(Arch::Small)).unwrap(),
        &fp32,
    )
    .unwrap();
    let (ok, log) = qat_bin(&["run", fp32.to_str().unwrap(), "--data", d]);
    assert!(!ok && log.contains("not integer-only"), "{log}");

    // No Python for --against ort: a message that says what to install.
    let run = Command::new(env!("CARGO_BIN_EXE_qat"))
        .args(["run", o, "--data", d, "--limit", "4", "--against", "ort"])
        .env("QAT_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("QAT_PYTHON") && err.contains("onnxruntime"),
        "{err}"
    );

    const CHECK: &str = "run_graph (qat run --against ort)";
    if common::ort_available(CHECK) {
        let (ok, log) = qat_bin(&[
            "run",
            o,
            "--data",
            d,
            "--batch-size",
            "16",
            "--against",
            "ort",
        ]);
        println!("{log}");
        assert!(
            ok && log.contains("PASS: every int8 tensor agrees"),
            "{log}"
        );
        // ONNX Runtime's tensors are listed by name: every layer of the trace.
        for layer in &trace {
            let row = log
                .lines()
                .find(|l| l.split_whitespace().next() == Some(layer.name.as_str()))
                .unwrap_or_else(|| panic!("no row for {} in\n{log}", layer.name));
            assert!(row.contains(&format!(" {} ", layer.values.len())), "{row}");
        }
        assert!(log.contains("arg-max differs on 0 image(s)"), "{log}");
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}
