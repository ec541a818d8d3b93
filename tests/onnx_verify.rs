//! Export and verification: for the small ResNet and ResNet-18 (a few QAT
//! steps, quantization parameters frozen) the int8 executor running the
//! exported graph equals the QAT model's integer-exact forward on every
//! layer, on every available device; and `qat train` -> `qat export` ->
//! `qat verify` through the binary.

mod common;
mod onnx_util;

use common::{qat_bin, synthetic_fmnist, temp_dir};
use onnx_protobuf::Message;
use onnx_util::{images, info, pool_concat_graph, train_steps, trained};
use qat::executor::Executor;
use qat::graph::Graph;
use qat::int8::Int8Net;
use qat::models::Arch;
use qat::onnx::export_int8;
use qat::verify::Verifier;
use qat::Device;

/// CPU, plus the emulated CUDA device and a real GPU when this build has
/// them (`Device::parse` rejects what it does not know).
fn devices() -> Vec<(String, Device)> {
    ["cpu", "cuda-emu", "cuda"]
        .iter()
        .filter_map(|d| Device::parse(d).ok().map(|dev| (d.to_string(), dev)))
        .collect()
}

fn verify_arch(arch: Arch, steps: usize, n: usize) {
    let build = |dev: &Device| qat::models::build(arch, 1, 10, dev, 0).unwrap();
    verify_graph(
        arch.name(),
        build,
        trained(arch, true, steps, 11, &Device::cpu()),
        arch,
        n,
    );
}

/// Exports the QAT graph `model` and verifies it against the executor on
/// every device, with `build` making an untrained copy of its topology there.
fn verify_graph(label: &str, build: impl Fn(&Device) -> Graph, model: Graph, arch: Arch, n: usize) {
    let bytes = export_int8(&Int8Net::build(&model).unwrap(), &info(arch))
        .unwrap()
        .write_to_bytes()
        .unwrap();
    let exec = Executor::from_bytes(&bytes).unwrap();
    let ck = qat::checkpoint::Checkpoint::from_module(&model).unwrap();
    let states = model.save_quantizers().unwrap();
    for (name, dev) in devices() {
        // The same trained model, moved to `dev`.
        let mut m = build(&dev);
        m.quantize(0.1, qat::quant::params::Scheme::Asymmetric);
        m.load_quantizers(&states).unwrap();
        ck.restore_module(&m).unwrap();
        let int8 = Int8Net::build(&m).unwrap();
        let mut v = Verifier::new(&int8, &exec);
        let (x, labels) = images(21, n);
        let half = n / 2;
        v.batch(&x[..half * 784], &labels[..half], half).unwrap();
        v.batch(&x[half * 784..], &labels[half..], n - half)
            .unwrap();
        let r = v.finish();
        println!("{label} on {name}:\n{}", r.table());
        assert!(
            r.passed(),
            "{label} on {name}: {} mismatches",
            r.total_mismatches()
        );
        assert_eq!(r.images, n);
    }
}

#[test]
fn small_resnet_verifies_with_zero_mismatches() {
    verify_arch(Arch::Small, 12, 24);
}

#[test]
fn resnet18_verifies_with_zero_mismatches() {
    verify_arch(Arch::ResNet18, 6, 16);
}

/// MobileNetV2 (28x28 variant, width 0.35): depthwise convolutions, ReLU6
/// folded into the requantization clamp, linear bottlenecks and residual
/// adds without ReLU, all bit-exact between the integer-exact model and the
/// executor on every device.
#[test]
fn mobilenet_v2_verifies_with_zero_mismatches() {
    verify_arch("mobilenet_v2_small_x0.35".parse().unwrap(), 6, 8);
}

/// Channel concat (QLinearConcat, each input requantized) and average
/// pooling (QLinearAveragePool with and without count_include_pad, a
/// ceil_mode window), bit-exact on every device.
#[test]
fn concat_and_avg_pool_verify_with_zero_mismatches() {
    let model = train_steps(
        pool_concat_graph(&Device::cpu(), 5),
        true,
        8,
        13,
        &Device::cpu(),
    );
    let int8 = Int8Net::build(&model).unwrap();
    let kinds: Vec<&str> = model.nodes().iter().map(|n| n.op.kind()).collect();
    assert!(kinds.contains(&"concat") && kinds.contains(&"average pool"));
    // The concat's inputs really are requantized (their own scales).
    let cat = model.node("cat").unwrap();
    let q = |i: usize| model.nodes()[i].quantizer().unwrap().qparams().unwrap();
    let out = cat.quantizer().unwrap().qparams().unwrap();
    assert!(cat.inputs.iter().all(|&i| q(i) != out));
    drop(int8);
    verify_graph(
        "pool/concat graph",
        |dev: &Device| pool_concat_graph(dev, 5),
        model,
        Arch::Small,
        12,
    );
}

/// The harness is not vacuous: one changed weight shows up as mismatches.
#[test]
fn verify_detects_a_changed_weight() {
    let cpu = Device::cpu();
    let model = trained(Arch::Small, true, 6, 12, &cpu);
    let int8 = Int8Net::build(&model).unwrap();
    let mut proto = export_int8(&int8, &info(Arch::Small)).unwrap();
    let g = proto.graph.as_mut().unwrap();
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "layer2.0.conv1.weight_q")
        .unwrap();
    w.raw_data[5] = w.raw_data[5].wrapping_add(40);
    let exec = Executor::from_model(&proto).unwrap();
    let mut v = Verifier::new(&int8, &exec);
    let (x, labels) = images(3, 8);
    v.batch(&x, &labels, 8).unwrap();
    let r = v.finish();
    assert!(!r.passed());
    let row = |n: &str| r.layers.iter().find(|l| l.name == n).unwrap().clone();
    assert_eq!(row("layer1.1.add").mismatches, 0);
    assert!(row("layer2.0.conv1").mismatches > 0);
}

/// The command line end to end on a small synthetic Fashion-MNIST.
#[test]
fn cli_train_export_verify() {
    let data = synthetic_fmnist("onnx-cli", 384, 96);
    let out = temp_dir("onnx-cli");
    let d = data.to_str().unwrap();
    let o = out.to_str().unwrap();
    let (ok, log) = qat_bin(&[
        "train",
        "--arch",
        "small",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--data",
        d,
        "--out",
        o,
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{log}");
    let ck = out.join("checkpoint.safetensors");
    let ck = ck.to_str().unwrap();
    let onnx = out.join("model.int8.onnx");
    let onnx = onnx.to_str().unwrap();
    let (ok, log) = qat_bin(&["export", "--checkpoint", ck, "--out", onnx]);
    assert!(ok, "{log}");
    let fp32 = out.join("model.fp32.onnx");
    let (ok, log) = qat_bin(&[
        "export",
        "--checkpoint",
        ck,
        "--out",
        fp32.to_str().unwrap(),
        "--fp32",
    ]);
    assert!(ok, "{log}");
    let verify_passes = |images: &str, device: &str| {
        let (ok, log) = qat_bin(&[
            "verify",
            "--checkpoint",
            ck,
            "--onnx",
            onnx,
            "--data",
            d,
            "--images",
            images,
            "--device",
            device,
        ]);
        println!("{log}");
        assert!(ok && log.contains("PASS"), "{log}");
    };
    verify_passes("96", "cpu");
    // The QDQ export of the same checkpoint: the executor fuses its groups
    // into the same integer ops.
    let qdq = out.join("model.qdq.onnx");
    let (ok, log) = qat_bin(&[
        "export",
        "--checkpoint",
        ck,
        "--out",
        qdq.to_str().unwrap(),
        "--format",
        "qdq",
    ]);
    assert!(ok, "{log}");
    let (ok, log) = qat_bin(&[
        "verify",
        "--checkpoint",
        ck,
        "--onnx",
        qdq.to_str().unwrap(),
        "--data",
        d,
        "--images",
        "96",
        "--device",
        "cpu",
    ]);
    assert!(ok && log.contains("PASS"), "{log}");
    // The same checkpoint on the emulated CUDA device, when this build has it.
    if Device::parse("cuda-emu").is_ok() {
        verify_passes("32", "cuda-emu");
    }
    // The metadata tells a user what to feed the model.
    let exec = Executor::load(std::path::Path::new(onnx)).unwrap();
    let meta = exec.metadata();
    assert_eq!(meta["input_layout"], "NCHW");
    assert_eq!(meta["input_size"], "1x28x28");
    assert!(meta["class_names"].contains("Ankle boot"));
    assert!(meta["producer"].starts_with("qat "));
    // Verifying against a graph from another model fails with a non-zero
    // exit status; so does verifying an FP32 graph.
    let other = trained(Arch::Small, true, 4, 5, &Device::cpu());
    let wrong = out.join("other.onnx");
    qat::onnx::save_model(
        &export_int8(&Int8Net::build(&other).unwrap(), &info(Arch::Small)).unwrap(),
        &wrong,
    )
    .unwrap();
    let (ok, log) = qat_bin(&[
        "verify",
        "--checkpoint",
        ck,
        "--onnx",
        wrong.to_str().unwrap(),
        "--data",
        d,
        "--images",
        "32",
        "--device",
        "cpu",
    ]);
    assert!(!ok && log.contains("FAIL"), "{log}");
    let (ok, log) = qat_bin(&[
        "verify",
        "--checkpoint",
        ck,
        "--onnx",
        fp32.to_str().unwrap(),
        "--data",
        d,
        "--images",
        "32",
        "--device",
        "cpu",
    ]);
    assert!(!ok && log.contains("not integer-only"), "{log}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}

/// Every command on a MobileNetV2 checkpoint through the binary (names that
/// differ from the ResNets': `features.0`, `classifier`).
#[test]
fn cli_mobilenet_v2_train_eval_export_verify() {
    let data = synthetic_fmnist("onnx-cli-mnv2", 128, 64);
    let out = temp_dir("onnx-cli-mnv2");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut train = vec![
        "train",
        "--arch",
        "mobilenet_v2_small_x0.35",
        "--epochs",
        "1",
    ];
    train.extend_from_slice(&["--batch-size", "32", "--data", d, "--out", o]);
    train.extend_from_slice(&["--quiet", "--device", "cpu"]);
    let (ok, log) = qat_bin(&train);
    assert!(ok, "{log}");
    let ck = out.join("checkpoint.safetensors");
    let ck = ck.to_str().unwrap();
    let (ok, log) = qat_bin(&["eval", "--checkpoint", ck, "--data", d, "--device", "cpu"]);
    assert!(ok && log.contains("top-1"), "{log}");
    let onnx = out.join("model.int8.onnx");
    let onnx = onnx.to_str().unwrap();
    let (ok, log) = qat_bin(&["export", "--checkpoint", ck, "--out", onnx]);
    assert!(ok, "{log}");
    let fp32 = out.join("model.fp32.onnx");
    let fp32 = fp32.to_str().unwrap();
    let (ok, log) = qat_bin(&["export", "--checkpoint", ck, "--out", fp32, "--fp32"]);
    assert!(ok, "{log}");
    let mut verify = vec!["verify", "--checkpoint", ck, "--onnx", onnx, "--data", d];
    verify.extend_from_slice(&["--images", "64", "--device", "cpu"]);
    let (ok, log) = qat_bin(&verify);
    assert!(ok && log.contains("PASS"), "{log}");
    assert!(
        log.contains("features.2.dw") && log.contains("classifier"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}
