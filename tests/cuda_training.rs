//! End-to-end on the CUDA backend: a few SGD steps of the small ResNet with
//! quantization-aware training (fake-quantized weights and activations,
//! folded batch norm) on the emulated CUDA device, and also in FP32 on a GPU
//! when one is present, against the same steps on the CPU. Every op of the autograd
//! layer runs through the CUDA backend here, so this also checks that nothing
//! above the backend touches host memory directly.
//!
//! Tolerance: FP32 losses agree to 1e-4 relative at every step (summation
//! orders differ). With QAT the first loss agrees to 2e-3 and later ones to
//! 2e-2: a value that the two backends compute a few ulps apart can sit on a
//! rounding edge of the fake quantizer and move by one grid step, and SGD
//! with momentum amplifies that from step to step.

mod common;

use qat::backend::cuda;
use qat::backend::Precision;
use qat::models::{self, Arch};
use qat::nn::{Mode, Module};
use qat::optim::{Sgd, SgdConfig};
use qat::rng::Rng;
use qat::{ops, Device, Tensor};

fn losses(dev: &Device, quantize: bool, steps: usize) -> Vec<f32> {
    let (n, hw, classes) = (4, 8, 10);
    let mut rng = Rng::new(3);
    let images: Vec<f32> = (0..n * hw * hw).map(|_| rng.normal()).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(classes as u64) as u32).collect();
    let x = Tensor::from_vec(images, [n, 1, hw, hw], dev).unwrap();
    let mut model = models::build(Arch::Small, 1, classes, dev, 7).unwrap();
    if quantize {
        model.quantize(0.1, qat::quant::params::Scheme::Asymmetric);
    }
    let cfg = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Default::default()
    };
    let mut sgd = Sgd::new(&model.parameters(), cfg).unwrap();
    let mut out = Vec::new();
    for step in 0..steps {
        let logits = model.forward(&x, Mode::Train).unwrap();
        let loss = ops::cross_entropy(&logits, &labels, 0.1).unwrap();
        out.push(loss.item().unwrap());
        if step + 1 < steps {
            let grads = loss.backward().unwrap();
            sgd.step(&grads, cfg.lr).unwrap();
        }
    }
    out
}

/// As in cuda_parity.rs: the emulator, and the GPU when one works;
/// `QAT_REQUIRE_GPU=1` makes a missing GPU a failure, `QAT_PARITY_DEVICES=gpu`
/// skips the emulator.
fn devices() -> Vec<Device> {
    let mut out = Vec::new();
    if !std::env::var("QAT_PARITY_DEVICES").is_ok_and(|v| v == "gpu") {
        out.push(cuda::emulated_device());
    }
    if let Some(d) = common::gpu_or_skip("cuda_training on a real GPU", Precision::Fp32) {
        out.push(d);
        // The tensor-core path too, where the GPU has one.
        if let Ok(t) = cuda::gpu_device_with(Precision::Tf32) {
            out.push(t);
        }
    }
    out
}

/// On a GPU: FP32 and QAT, four forward passes with backward passes and SGD
/// steps between them. On the emulator only QAT (which runs every kernel the
/// FP32 step runs, plus fake quantization), two forward passes: each emulated
/// barrier costs a context switch per CUDA thread, so this alone took 50 s
/// on the (busy) 2-core development machine.
#[test]
fn small_resnet_steps_match_cpu_fp32_and_qat() {
    for quantize in [false, true] {
        for dev in devices() {
            let emulated = dev.backend().name() == "cuda-emu";
            if emulated && !quantize {
                continue; // the QAT run covers the same kernels, and more
            }
            let steps = if emulated { 2 } else { 4 };
            let want = losses(&Device::cpu(), quantize, steps);
            let got = losses(&dev, quantize, steps);
            // TF32 products err by up to 2^-10 relative, so the losses of
            // the first step agree to 5e-3 there (the later QAT bound
            // already exceeds that).
            let tf32 = dev.backend().name().contains("tf32");
            for (step, (g, w)) in got.iter().zip(&want).enumerate() {
                let rtol = match (quantize, step) {
                    (false, _) if tf32 => 5e-3,
                    (false, _) => 1e-4,
                    (true, 0) if tf32 => 5e-3,
                    (true, 0) => 2e-3,
                    (true, _) => 2e-2,
                };
                assert!(
                    (g - w).abs() <= rtol * w.abs(),
                    "qat={quantize} step {step} on {}: loss {g} vs cpu {w}",
                    dev.backend().name()
                );
            }
            println!(
                "qat={quantize} {}: losses {got:?} (cpu {want:?})",
                dev.backend().name()
            );
        }
    }
}

/// Issue 13's "no host round-trips": what one QAT training step of the small
/// ResNet costs in host-device traffic on the emulated device (a runtime of
/// its own, so no other test's copies are counted). The counters themselves
/// are checked on one upload and one download. A steady-state step makes one
/// device-to-host copy (the loss), one host-to-device copy (the labels) and
/// no synchronization.
#[test]
fn host_device_traffic_of_a_qat_step() {
    use qat::backend::cuda::CudaBackend;
    let dev = Device::new(std::sync::Arc::new(CudaBackend::emulated()));
    let counts = || dev.backend().transfer_counts().unwrap();
    let before = counts();
    let t = Tensor::from_vec(vec![1.0, 2.0, 3.0], [3], &dev).unwrap();
    assert_eq!(t.to_vec().unwrap(), vec![1.0, 2.0, 3.0]);
    let d = counts() - before;
    assert_eq!((d.host_to_device, d.device_to_host), (1, 1), "{d:?}");

    let (n, hw, classes) = (2, 8, 10);
    let mut rng = Rng::new(3);
    let images: Vec<f32> = (0..n * hw * hw).map(|_| rng.normal()).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(classes as u64) as u32).collect();
    let x = Tensor::from_vec(images, [n, 1, hw, hw], &dev).unwrap();
    let mut model = models::build(Arch::Small, 1, classes, &dev, 7).unwrap();
    model.quantize(0.1, qat::quant::params::Scheme::Asymmetric);
    let cfg = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        ..Default::default()
    };
    let mut sgd = Sgd::new(&model.parameters(), cfg).unwrap();
    let mut step = || {
        // As the trainer's step: the loss and the hit counts in one copy.
        let logits = model.forward(&x, Mode::Train).unwrap();
        let (loss, summary) = ops::cross_entropy_with_hits(&logits, &labels, 0.1).unwrap();
        let value = summary.to_vec().unwrap()[0];
        let grads = loss.backward().unwrap();
        sgd.step(&grads, cfg.lr).unwrap();
        value
    };
    step(); // the first step initializes the observers
    let before = counts();
    assert!(step().is_finite());
    let d = counts() - before;
    println!("one QAT step of the small ResNet on cuda-emu: {d:?}");
    // The observers, scales, zero points and batch-norm fold factors stay on
    // the device: the loss is the one value that comes to the host, and the
    // labels the one upload (the images are already there).
    assert_eq!(
        (d.device_to_host, d.host_to_device),
        (1, 1),
        "a QAT step must copy only the loss to the host and only the labels to the device: {d:?}"
    );
    assert_eq!(d.synchronizations, 0, "{d:?}");
}
