//! Helpers shared by the ONNX tests: briefly trained QAT / FP32 ResNets with
//! frozen quantization parameters, image batches and `.npy` files.
#![allow(dead_code)]

use qat::graph::{Graph, GraphBuilder};
use qat::models::{self, Arch};
use qat::nn::{Activation, Mode, Module, QatFlags};
use qat::ops::{self, AvgPool2dParams, Conv2dParams};
use qat::optim::{Sgd, SgdConfig};
use qat::quant::params::Scheme;
use qat::rng::Rng;
use qat::saved_model::ModelInfo;
use qat::{Device, Tensor};
use std::path::Path;

/// `n` image-like inputs `[n, 1, 28, 28]`: a bright bar over noise per class,
/// normalized like Fashion-MNIST, with their labels.
pub fn images(seed: u64, n: usize) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let l = rng.below(10) as usize;
        labels.push(l as u32);
        for y in 0..28 {
            for _ in 0..28 {
                let bar = y == 2 + 2 * l || y == 3 + 2 * l;
                let p = if bar {
                    0.8 + 0.2 * rng.uniform()
                } else {
                    0.25 * rng.uniform()
                };
                x.push((p - 0.286) / 0.353);
            }
        }
    }
    (x, labels)
}

/// A ResNet trained for `steps` SGD steps on [`images`]. With `qat`, the
/// schedule goes through every phase and ends with frozen observers and
/// batch norm, as `qat train` does.
pub fn trained(arch: Arch, qat: bool, steps: usize, seed: u64, dev: &Device) -> Graph {
    train_steps(
        models::build(arch, 1, 10, dev, seed).unwrap(),
        qat,
        steps,
        seed,
        dev,
    )
}

/// A graph with the nodes no built-in architecture has: a three-way
/// channel concat (of inputs with their own quantizers), average pooling
/// with and without `count_include_pad`, and a `ceil_mode` window, between
/// convolutions, then global pooling and the classifier.
pub fn pool_concat_graph(dev: &Device, seed: u64) -> Graph {
    let (mut g, x) = GraphBuilder::new(1, dev, seed).unwrap();
    let stem = g.conv_bn("stem", x, 8, 3, 1, 1, true).unwrap();
    let a = g.conv_bn("branch_a", stem, 8, 1, 1, 0, true).unwrap();
    let b = g
        .conv_bn_with(
            "branch_b",
            stem,
            8,
            3,
            Conv2dParams::new(1, 1),
            Activation::Relu6,
        )
        .unwrap();
    let cat = g.concat("cat", &[stem, a, b]).unwrap();
    let p1 = g
        .avg_pool("pool1", cat, AvgPool2dParams::new(3, 2, 1, false))
        .unwrap();
    let c = g.conv_bn("conv", p1, 16, 3, 1, 1, true).unwrap();
    let p2 = g
        .avg_pool("pool2", c, AvgPool2dParams::new(3, 2, 1, true))
        .unwrap();
    let ceil = AvgPool2dParams {
        ceil_mode: true,
        ..AvgPool2dParams::new(2, 2, 0, false)
    };
    let p3 = g.avg_pool("pool3", p2, ceil).unwrap();
    let gap = g.global_avg_pool("gap", p3).unwrap();
    g.linear("fc", gap, 10, true).unwrap();
    g.finish()
}

/// [`trained`] for any graph (one class per output of its classifier, 1x28x28
/// inputs).
pub fn train_steps(model: Graph, qat: bool, steps: usize, seed: u64, dev: &Device) -> Graph {
    let scheme = qat.then_some(Scheme::Asymmetric);
    train_steps_with(model, scheme, steps, seed, dev)
}

/// [`train_steps`] with the activation quantization `scheme` (`None`: FP32).
pub fn train_steps_with(
    mut model: Graph,
    scheme: Option<Scheme>,
    steps: usize,
    seed: u64,
    dev: &Device,
) -> Graph {
    let qat = scheme.is_some();
    if let Some(s) = scheme {
        model.quantize(0.1, s);
    }
    let (x, labels) = images(seed + 100, 16);
    let x = Tensor::from_vec(x, [16, 1, 28, 28], dev).unwrap();
    let cfg = SgdConfig {
        lr: 0.02,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut sgd = Sgd::new(&model.parameters(), cfg).unwrap();
    for step in 0..steps {
        if qat {
            model.set_qat_flags(QatFlags {
                quantize_acts: step >= steps / 4,
                observe: step + 1 < steps,
                bn_frozen: step >= steps / 2,
            });
            if step + 1 == steps {
                model.freeze_quantizers().unwrap();
            }
        }
        let logits = model.forward(&x, Mode::Train).unwrap();
        let loss = ops::cross_entropy(&logits, &labels, 0.0).unwrap();
        let grads = loss.backward().unwrap();
        sgd.step(&grads, cfg.lr).unwrap();
    }
    model
}

pub fn info(arch: Arch) -> ModelInfo {
    ModelInfo {
        arch: arch.name().to_string(),
        in_channels: 1,
        num_classes: 10,
        class_names: (0..10).map(|i| format!("class{i}")).collect(),
        mean: vec![0.286],
        std: vec![0.353],
        input_hw: [28, 28],
    }
}

/// Writes `bytes` as a `.npy` array of `descr` (`<f4`, `|i1` or `|u1`).
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], bytes: &[u8]) {
    let dtype = match descr {
        "<f4" => qat::npy::Dtype::F32,
        "|i1" => qat::npy::Dtype::I8,
        "|u1" => qat::npy::Dtype::U8,
        other => panic!("no .npy writer for {other}"),
    };
    qat::npy::write(path, dtype, shape, bytes).unwrap();
}

pub fn write_npy_f32(path: &Path, shape: &[usize], v: &[f32]) {
    qat::npy::write_f32(path, shape, v).unwrap();
}

pub fn write_npy_i8(path: &Path, shape: &[usize], v: &[i8]) {
    qat::npy::write_i8(path, shape, v).unwrap();
}
