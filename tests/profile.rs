//! `qat train --profile`: every backend call of a step is counted in the
//! phase it ran in, nested inside that phase's wall time, with call counts
//! that follow from the model (one forward convolution per Conv node of the
//! model's own ONNX export, one SGD update per parameter tensor, fake
//! quantization only in QAT), and nothing is written.

mod common;

use common::{qat_bin, small_train_config, synthetic_fmnist, temp_dir};
use qat::backend::profile::Phase;
use qat::models::{self, Arch};
use qat::nn::Module;
use qat::saved_model::ModelInfo;
use qat::train::profile::profile;
use qat::Device;

fn calls(p: &qat::train::profile::StepProfile, phase: Phase, op: &str) -> f64 {
    p.ops.get(&(phase, op)).map_or(0.0, |t| t.calls as f64) / p.steps as f64
}

#[test]
fn the_profile_accounts_for_every_primitive_of_a_step() {
    let data = synthetic_fmnist("profile", 96, 8);
    let out = temp_dir("profile");
    // The reference counts: the small ResNet's Conv nodes (its FP32 ONNX
    // graph) and parameter tensors.
    let dev = Device::cpu();
    let model = models::build(Arch::Small, 1, 10, &dev, 7).unwrap();
    let info = ModelInfo {
        arch: "small".into(),
        in_channels: 1,
        num_classes: 10,
        class_names: (0..10).map(|i| i.to_string()).collect(),
        mean: vec![0.286],
        std: vec![0.353],
        input_hw: [28, 28],
    };
    let onnx = qat::onnx::export_fp32(&model, &info).unwrap();
    let convs = onnx
        .graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv")
        .count() as f64;
    let params = model.parameters().len() as f64;
    assert!(convs > 10.0, "{convs} convolutions");

    for qat in [false, true] {
        let cfg = small_train_config(&data, out.join("run"), 3, qat);
        let p = profile(&cfg, &dev, 3).unwrap();
        println!("{}", p.table());
        assert_eq!(p.steps, 3);
        for phase in Phase::ALL {
            let wall = p.phases[&phase];
            assert!(
                p.in_backend(phase) <= wall,
                "{phase:?}: primitives outlast the phase"
            );
        }
        assert_eq!(calls(&p, Phase::Forward, "conv2d_fwd"), convs);
        // The first convolution needs no input gradient.
        assert_eq!(calls(&p, Phase::Backward, "conv2d_bwd_weight"), convs);
        assert_eq!(calls(&p, Phase::Backward, "conv2d_bwd_data"), convs - 1.0);
        assert_eq!(calls(&p, Phase::Optimizer, "sgd_step"), params);
        assert_eq!(calls(&p, Phase::Forward, "softmax_xent_fwd"), 1.0);
        assert_eq!(calls(&p, Phase::Backward, "conv2d_fwd"), 0.0);
        let fq = calls(&p, Phase::Forward, "fake_quant_channel_fwd");
        if qat {
            // Every conv weight and the classifier's, per channel.
            assert_eq!(fq, convs + 1.0);
            assert!(calls(&p, Phase::Forward, "observe_act") > 0.0);
            assert!(p.table().starts_with("QAT training on cpu"));
        } else {
            assert_eq!(fq, 0.0);
            assert_eq!(calls(&p, Phase::Forward, "observe_act"), 0.0);
        }
        assert!(p.images_per_sec() > 0.0);
    }
    assert!(!out.join("run").exists(), "profiling wrote into --out");

    // Through the binary: the table, and nothing written.
    let (ok, log) = qat_bin(&[
        "train",
        "--profile",
        "1",
        "--arch",
        "small",
        "--batch-size",
        "16",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.join("cli").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{log}");
    assert!(
        log.contains("QAT training on cpu") && log.contains("conv2d_bwd_weight"),
        "{log}"
    );
    assert!(!out.join("cli").exists(), "{log}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}
