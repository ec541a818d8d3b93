//! A checkpoint written by the hand-written ResNet code (before the
//! network graph, commit 7d0c5f4's parent) still loads, evaluates to the same figures,
//! exports to the same ONNX bytes, and its FP32, QAT-training and
//! integer-exact forwards give the same logits bit for bit.
//!
//! The fixture in `tests/data/fixture_small_qat/` was written by this test
//! with `QAT_WRITE_FIXTURE=1` on that commit: a 1-epoch QAT run of the small
//! ResNet on 1024 synthetic images (BN and observers frozen inside the epoch),
//! its 64 test images as IDX files, both ONNX exports, the `qat eval` line,
//! and the logits of the three forwards as little-endian f32. The two float
//! logit files were re-recorded from the same checkpoint with
//! `QAT_WRITE_FIXTURE=logits` when the CPU convolution moved to the
//! register-tiled kernels (another summation order; the integer-exact
//! logits, the eval line and the exports did not move).

mod common;

use common::{qat_bin, small_train_config, synthetic_fmnist, temp_dir};
use qat::autograd::no_grad;
use qat::checkpoint::Checkpoint;
use qat::data::{FashionMnist, Split};
use qat::nn::{Mode, Module, QatFlags};
use qat::train::{self, QatSchedule};
use qat::{Device, Tensor};
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture_small_qat")
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The logits of the three forwards of the fixture checkpoint's model on the
/// fixture's test images: the float forward of its weights, the QAT training
/// forward (one step's worth, BN and observers frozen as saved) and the
/// integer-exact forward.
fn forwards(ck_path: &Path, data: &Path) -> [Vec<f32>; 3] {
    let dev = Device::cpu();
    let ck = Checkpoint::load(ck_path).unwrap();
    let (model, info, _) = train::model_from_checkpoint(&ck, &dev).unwrap();
    let mut ds = FashionMnist::load(data, Split::Test).unwrap();
    ds.truncate(64);
    let norm = qat::data::Normalize::new(&info.mean, &info.std).unwrap();
    let loader = qat::data::Loader::new(ds, qat::data::LoaderConfig::eval(64, norm)).unwrap();
    let b = loader.epoch(0).next().unwrap();
    let x = Tensor::from_vec(b.images.clone(), b.shape(), &dev).unwrap();
    // The float forward of the same weights: an FP32 model loaded with them.
    let fp32 = qat::models::build(
        info.arch.parse().unwrap(),
        info.in_channels,
        info.num_classes,
        &dev,
        0,
    )
    .unwrap();
    let mut float_ck = Checkpoint::from_module(&model).unwrap();
    float_ck.momentum.clear();
    float_ck.restore_module(&fp32).unwrap();
    let float = no_grad(|| fp32.forward(&x, Mode::Eval))
        .unwrap()
        .to_vec()
        .unwrap();
    model.set_qat_flags(QatFlags {
        quantize_acts: true,
        observe: false,
        bn_frozen: true,
    });
    let qat_train = no_grad(|| model.forward(&x, Mode::Train))
        .unwrap()
        .to_vec()
        .unwrap();
    let int8 = qat::int8::Int8Net::build(&model)
        .unwrap()
        .forward(&x)
        .unwrap()
        .to_vec()
        .unwrap();
    [float, qat_train, int8]
}

const FORWARD_FILES: [&str; 3] = ["logits_fp32.bin", "logits_qat_train.bin", "logits_int8.bin"];

fn write_fixture(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let data = synthetic_fmnist("fixture", 1024, 64);
    let out = temp_dir("fixture-run");
    let mut cfg = small_train_config(&data, out.clone(), 1, true);
    cfg.warmup_epochs = 0.25;
    cfg.seed = 11;
    cfg.qat = Some(QatSchedule {
        act_quant_start: 0.25,
        freeze_bn: 0.5,
        freeze_observers: 0.75,
        observer_momentum: 0.1,
        scheme: qat::quant::params::Scheme::Asymmetric,
    });
    train::train(&cfg, &Device::cpu(), false).unwrap();
    let ck = dir.join("checkpoint.safetensors");
    std::fs::copy(train::checkpoint_path(&out), &ck).unwrap();
    for f in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::copy(data.join(f), dir.join(f)).unwrap();
    }
    for (name, fp32) in [("model.int8.onnx", false), ("model.fp32.onnx", true)] {
        qat::onnx::export_checkpoint(&ck, &dir.join(name), fp32).unwrap();
    }
    let (ok, log) = eval_line(&ck, dir);
    assert!(ok, "{log}");
    std::fs::write(dir.join("eval.txt"), log).unwrap();
    for (file, logits) in FORWARD_FILES.iter().zip(forwards(&ck, dir)) {
        std::fs::write(dir.join(file), f32_bytes(&logits)).unwrap();
    }
}

/// `qat eval`'s result line on the fixture's test images.
fn eval_line(ck: &Path, data: &Path) -> (bool, String) {
    let (ok, log) = qat_bin(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let line = log
        .lines()
        .find(|l| l.contains("top-1"))
        .unwrap_or_default()
        .to_string();
    (ok, if ok { line } else { log })
}

#[test]
fn a_checkpoint_of_the_hand_written_resnet_loads_evaluates_and_exports_identically() {
    let dir = fixture_dir();
    let write = std::env::var("QAT_WRITE_FIXTURE").unwrap_or_default();
    if write == "1" {
        write_fixture(&dir);
    }
    let ck = dir.join("checkpoint.safetensors");
    if write == "logits" {
        // The float kernels changed their summation order on purpose:
        // re-record the logits of the committed checkpoint only.
        for (file, logits) in FORWARD_FILES.iter().zip(forwards(&ck, &dir)) {
            std::fs::write(dir.join(file), f32_bytes(&logits)).unwrap();
        }
    }
    let (ok, line) = eval_line(&ck, &dir);
    assert!(ok, "{line}");
    let want = std::fs::read_to_string(dir.join("eval.txt")).unwrap();
    assert_eq!(line.trim(), want.trim());

    let out = temp_dir("fixture-export");
    for (name, fp32) in [("model.int8.onnx", false), ("model.fp32.onnx", true)] {
        let path = out.join(name);
        qat::onnx::export_checkpoint(&ck, &path, fp32).unwrap();
        let (got, want) = (
            std::fs::read(&path).unwrap(),
            std::fs::read(dir.join(name)).unwrap(),
        );
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            got == want,
            "{name}: {} bytes exported, {} in the fixture, first difference at {first_diff:?}",
            got.len(),
            want.len()
        );
    }
    for (file, got) in FORWARD_FILES.iter().zip(forwards(&ck, &dir)) {
        let want = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(f32_bytes(&got), want, "{file}: logits differ");
    }
}
