//! `qat train --init`: QAT fine-tuning from an imported FP32 ONNX model and
//! from FP32 / calibrated checkpoints: it starts from those weights
//! (calibrating first), resumes exactly, and its result exports and verifies
//! with 0 mismatches; an incompatible model is a clear error.

mod common;

use common::{
    qat_bin, qat_export_verify, qat_import, small_train_config, synthetic_fmnist, temp_dir,
};
use qat::checkpoint::Checkpoint;
use qat::models::{self, Arch};
use qat::saved_model::{checkpoint_extra, ModelInfo};
use qat::train::{self, checkpoint_path, QatSchedule, TrainConfig};
use qat::Device;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/import/{name}.onnx"))
}

fn finetune_config(data: &Path, out: PathBuf, init: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        arch: "custom".into(),
        init: Some(init.to_path_buf()),
        calibration_images: 64,
        calibration_method: qat::train::DEFAULT_CALIBRATION_METHOD.into(),
        lr: 0.002,
        warmup_epochs: 0.0,
        qat: Some(QatSchedule::fine_tune(epochs)),
        ..small_train_config(data, out, epochs, true)
    }
}

/// Two epochs in one go equal one epoch, a stop and a resume: same losses
/// bit for bit, same final weights. The run starts from the imported
/// weights: after fine-tuning at a small rate they moved, but little.
#[test]
fn finetune_from_onnx_resumes_exactly() {
    let data = synthetic_fmnist("ft-resume", 192, 64);
    let dev = Device::cpu();
    let init = fixture("resnet_tiny_preserve_op13");
    let full_out = temp_dir("ft-full");
    let full = train::train(
        &finetune_config(&data, full_out.clone(), &init, 2),
        &dev,
        false,
    )
    .unwrap();
    let split_out = temp_dir("ft-split");
    let mut first = finetune_config(&data, split_out.clone(), &init, 2);
    first.stop_after = Some(1);
    train::train(&first, &dev, false).unwrap();
    let resumed = train::train(
        &finetune_config(&data, split_out.clone(), &init, 2),
        &dev,
        true,
    )
    .unwrap();
    let losses = |r: &[qat::train::metrics::EpochRecord]| {
        r.iter()
            .map(|e| (e.epoch, e.train_loss, e.val_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&full.records), losses(&resumed.records));
    let a = Checkpoint::load(&checkpoint_path(&full_out)).unwrap();
    let b = Checkpoint::load(&checkpoint_path(&split_out)).unwrap();
    assert_eq!(a.model, b.model);
    // The run's checkpoint describes its own (imported) topology.
    assert_eq!(a.extra["model"]["arch"], "custom");
    assert!(a.extra["graph"]["nodes"]
        .as_array()
        .is_some_and(|n| n.len() == 20));
    // Fine-tuning at a small rate keeps the imported weights close: the
    // stem's weights moved, but by far less than their own size.
    let imported =
        qat::import::import(&qat::executor::load::read_model(&init).unwrap(), &dev).unwrap();
    let start = Checkpoint::from_module(&imported.graph).unwrap();
    let (w0, w1) = (
        &start.model["conv1.conv.weight"],
        &a.model["conv1.conv.weight"],
    );
    let d: f32 = w0
        .values
        .iter()
        .zip(&w1.values)
        .map(|(x, y)| (x - y).abs())
        .sum();
    let n: f32 = w0.values.iter().map(|x| x.abs()).sum();
    assert!(d > 0.0 && d < 0.2 * n, "moved {d} of {n}");
    let _ = std::fs::remove_dir_all(&full_out);
    let _ = std::fs::remove_dir_all(&split_out);
}

/// The command line: import -> train --init (QAT fine-tune from the FP32
/// checkpoint, calibrating first) -> export -> verify PASS; --init with a
/// QAT checkpoint from calibrate works too; an incompatible model is an
/// error naming both shapes.
#[test]
fn cli_finetune_export_verify() {
    let data = synthetic_fmnist("ft-cli", 160, 64);
    let d = data.to_str().unwrap();
    let out = temp_dir("ft-cli");
    let fp_ck = qat_import(&fixture("mnv2_w025_preserve_op13"), &out.join("fp32"));
    let run = out.join("qat");
    let (ok, log) = qat_bin(&[
        "train",
        "--init",
        fp_ck.to_str().unwrap(),
        "--data",
        d,
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--calibration-images",
        "64",
        "--calibration-method",
        "mse",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{log}");
    assert!(
        log.contains("calibrated") && log.contains("images (mse)") && log.contains("lr 0.001"),
        "{log}"
    );
    let (ok, log) = qat_bin(&["train", "--calibration-method", "entropy", "--data", d]);
    assert!(!ok && log.contains("entropy"), "{log}");
    let ck = run.join("checkpoint.safetensors");
    let ck = ck.to_str().unwrap();
    let (ok, log) = qat_export_verify(ck, &out.join("ft.onnx"), d, "64");
    assert!(ok && log.contains("PASS"), "{log}");
    // --init and --arch together are refused by the parser.
    let (ok, log) = qat_bin(&["train", "--init", ck, "--arch", "small", "--data", d]);
    assert!(!ok && log.contains("--arch"), "{log}");
    // A 3-channel model on 1-channel data.
    let g = models::build(Arch::Small, 3, 10, &Device::cpu(), 0).unwrap();
    let info = ModelInfo {
        arch: "small".into(),
        in_channels: 3,
        num_classes: 10,
        class_names: (0..10).map(|i| i.to_string()).collect(),
        mean: vec![0.5; 3],
        std: vec![0.5; 3],
        input_hw: [28, 28],
    };
    let mut rgb = Checkpoint::from_module(&g).unwrap();
    rgb.extra = checkpoint_extra(&g, &info, serde_json::json!({})).unwrap();
    let rgb_path = out.join("rgb.safetensors");
    rgb.save(&rgb_path).unwrap();
    let (ok, log) = qat_bin(&[
        "train",
        "--init",
        rgb_path.to_str().unwrap(),
        "--data",
        d,
        "--out",
        out.join("bad").to_str().unwrap(),
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(
        !ok && log.contains("3-channel") && log.contains("1-channel"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}
