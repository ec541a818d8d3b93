//! Quantization-aware training: Conv+BN folding, the QAT forward and the
//! integer-exact eval model.

mod common;

use common::{gradcheck, randn};
use qat::autograd::no_grad;
use qat::int8::Int8Net;
use qat::models::{self, Arch};
use qat::nn::{Mode, Module, QatFlags};
use qat::ops::{self, BatchNormArgs, Conv2dParams};
use qat::optim::{Sgd, SgdConfig};
use qat::quant::fold::fold_conv_bn;
use qat::rng::Rng;
use qat::{Device, Tensor};

/// Folded conv (S4) equals conv followed by eval-mode batch norm.
#[test]
fn folding_equals_unfused_conv_bn_in_eval() {
    let dev = Device::cpu();
    let mut rng = Rng::new(1);
    let (c_in, c_out) = (3, 5);
    let x = Tensor::from_vec(randn(&mut rng, 2 * c_in * 9 * 7), [2, c_in, 9, 7], &dev).unwrap();
    let w: Vec<f32> = randn(&mut rng, c_out * c_in * 9);
    let b_conv: Vec<f32> = randn(&mut rng, c_out);
    let gamma: Vec<f32> = randn(&mut rng, c_out);
    let beta: Vec<f32> = randn(&mut rng, c_out);
    let mean: Vec<f32> = randn(&mut rng, c_out);
    let var: Vec<f32> = (0..c_out).map(|_| 0.1 + rng.uniform() * 3.0).collect();
    let p = Conv2dParams {
        stride: (2, 1),
        pad: (1, 1),
        ..Default::default()
    };
    let t = |v: &[f32], s: &[usize]| Tensor::from_vec(v.to_vec(), s.to_vec(), &dev).unwrap();
    let conv = ops::conv2d(
        &x,
        &t(&w, &[c_out, c_in, 3, 3]),
        Some(&t(&b_conv, &[c_out])),
        p,
    )
    .unwrap();
    let (rm, rv) = (t(&mean, &[c_out]), t(&var, &[c_out]));
    let args = BatchNormArgs {
        running_mean: &rm,
        running_var: &rv,
        train: false,
        momentum: 0.1,
        eps: 1e-5,
    };
    let reference = ops::batch_norm(&conv, &t(&gamma, &[c_out]), &t(&beta, &[c_out]), args)
        .unwrap()
        .to_vec()
        .unwrap();
    let (wf, bf) = fold_conv_bn(&w, Some(&b_conv), &gamma, &beta, &mean, &var, 1e-5);
    let folded = ops::conv2d(
        &x,
        &t(&wf, &[c_out, c_in, 3, 3]),
        Some(&t(&bf, &[c_out])),
        p,
    )
    .unwrap()
    .to_vec()
    .unwrap();
    for (i, (a, b)) in reference.iter().zip(&folded).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 + 1e-5 * a.abs(),
            "element {i}: {a} vs {b}"
        );
    }
}

#[test]
fn scale_channels_and_fold_factor_gradients() {
    let mut rng = Rng::new(2);
    let inputs = vec![
        (randn(&mut rng, 2 * 3 * 4), vec![2, 3, 4]),
        (randn(&mut rng, 3), vec![3]),
    ];
    gradcheck(2, &inputs, 30, 1e-2, 2e-3, 1e-2, |t| {
        ops::scale_channels(&t[0], &t[1], 1)
    });
    let inputs = vec![(
        randn(&mut rng, 4).iter().map(|v| v.abs() + 0.5).collect(),
        vec![4],
    )];
    gradcheck(3, &inputs, 4, 1e-3, 2e-3, 1e-2, |t| ops::reciprocal(&t[0]));
    // The fold factor and the bias shift: gradients reach gamma and the
    // factor; the running statistics are constants.
    let var: Vec<f32> = randn(&mut rng, 4).iter().map(|v| v * v + 0.1).collect();
    let mean = randn(&mut rng, 4);
    let constant = |v: &[f32]| Tensor::from_vec(v.to_vec(), [4], &Device::cpu()).unwrap();
    gradcheck(4, &inputs, 4, 1e-3, 2e-3, 1e-2, |t| {
        ops::bn_fold_factor(&t[0], &constant(&var), 1e-5)
    });
    gradcheck(4, &inputs, 4, 1e-3, 2e-3, 1e-2, |t| {
        ops::neg_mul(&t[0], &constant(&mean))
    });
    // The values are the host expressions, bit for bit.
    let gamma = constant(&inputs[0].0);
    let sf = ops::bn_fold_factor(&gamma, &constant(&var), 1e-5).unwrap();
    let expect: Vec<f32> = inputs[0]
        .0
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + 1e-5f32).sqrt())
        .collect();
    assert_eq!(sf.to_vec().unwrap(), expect);
    let shift = ops::neg_mul(&sf, &constant(&mean))
        .unwrap()
        .to_vec()
        .unwrap();
    let expect: Vec<f32> = expect.iter().zip(&mean).map(|(s, m)| -s * m).collect();
    assert_eq!(shift, expect);
}

fn tiny_batch(rng: &mut Rng, n: usize, hw: usize) -> (Tensor, Vec<u32>) {
    let x = Tensor::from_vec(randn(rng, n * hw * hw), [n, 1, hw, hw], &Device::cpu()).unwrap();
    let labels = (0..n).map(|_| rng.below(4) as u32).collect();
    (x, labels)
}

/// A QAT model trains (loss falls) through every schedule phase, and its
/// integer-exact eval model runs and agrees with the fake-quantized forward
/// once quantizers and batch norm are frozen.
#[test]
fn qat_small_resnet_trains_and_evaluates_integer_exact() {
    let dev = Device::cpu();
    let mut model = models::build(Arch::Small, 1, 4, &dev, 3).unwrap();
    model.quantize(0.1, qat::quant::params::Scheme::Asymmetric);
    let mut rng = Rng::new(5);
    let (x, labels) = tiny_batch(&mut rng, 32, 10);
    let cfg = SgdConfig {
        lr: 0.05,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut sgd = Sgd::new(&model.parameters(), cfg).unwrap();
    let mut losses = Vec::new();
    for step in 0..60 {
        let flags = QatFlags {
            quantize_acts: step >= 5,
            observe: step < 50,
            bn_frozen: step >= 40,
        };
        model.set_qat_flags(flags);
        if step == 50 {
            model.freeze_quantizers().unwrap();
        }
        let logits = model.forward(&x, Mode::Train).unwrap();
        let loss = ops::cross_entropy(&logits, &labels, 0.0).unwrap();
        losses.push(loss.item().unwrap());
        let grads = loss.backward().unwrap();
        sgd.step(&grads, cfg.lr).unwrap();
    }
    assert!(
        losses[59] < 0.5 * losses[0],
        "loss did not fall: {:?}",
        losses
    );

    // Frozen model: fake-quantized forward (no observation, BN frozen) vs the
    // integer-exact forward. They differ only by float rounding in the
    // fake-quant path, so logits agree to a couple of output steps.
    let int8 = Int8Net::build(&model).unwrap();
    let exact = int8.forward(&x).unwrap().to_vec().unwrap();
    let fq = no_grad(|| model.forward(&x, Mode::Train))
        .unwrap()
        .to_vec()
        .unwrap();
    let s = int8.steps.last().unwrap().out_q.scale;
    let max_steps = exact
        .iter()
        .zip(&fq)
        .map(|(a, b)| ((a - b) / s).abs().round() as i64)
        .max()
        .unwrap();
    let mean_steps = exact
        .iter()
        .zip(&fq)
        .map(|(a, b)| ((a - b) / s).abs() as f64)
        .sum::<f64>()
        / exact.len() as f64;
    eprintln!("integer-exact vs fake-quant logits: max {max_steps} steps, mean {mean_steps:.3}");
    // A rounding flip in an early layer moves a few logits by several
    // steps (the trajectory decides which: 3 before the backward-weight
    // summation order changed on 2026-12-04, 4 after); a wrong scale or
    // zero point moves all of them, which the mean catches (0.56 steps
    // on 2026-12-04).
    assert!(
        max_steps <= 4 && mean_steps <= 1.0,
        "integer-exact and fake-quant logits differ by {max_steps} steps (mean {mean_steps:.3})"
    );
    // Every value of the integer-exact output sits on the output grid.
    let z = int8.steps.last().unwrap().out_q.zero_point;
    for v in &exact {
        let q = (v / s).round() + z as f32;
        assert!((-128.0..=127.0).contains(&q) && ((q - z as f32) * s - v).abs() == 0.0);
    }
    // Eval mode on the graph is the fake-quantized forward with frozen
    // statistics (the integer-exact one is `Int8Net`): the same as the
    // frozen training forward here.
    let via_module = no_grad(|| model.forward(&x, Mode::Eval))
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(via_module, fq);
}

/// ReLU fused into the activation quantizer (the CPU backend's one pass)
/// gives the bits of the two separate ops: the outputs, the observer's
/// state and the gradients, over two observer steps whose second batch
/// reaches past the first range (clamped values get no gradient), with
/// zeros of both signs and negative values.
#[test]
fn fused_relu_quantizer_gives_the_bits_of_relu_then_quantizer() {
    use qat::nn::ActQuant;
    use qat::quant::params::Scheme;
    let dev = Device::cpu();
    assert!(
        dev.backend().fuses_relu_quant(),
        "the CPU backend should take the fused path this test checks"
    );
    let mut rng = Rng::new(21);
    let (fused, separate) = (
        ActQuant::new(0.1, Scheme::Asymmetric),
        ActQuant::new(0.1, Scheme::Asymmetric),
    );
    let flags = QatFlags::default();
    for (step, scale) in [(0, 1.0f32), (1, 3.0)] {
        let mut data: Vec<f32> = randn(&mut rng, 2 * 3 * 7 * 7)
            .iter()
            .map(|v| v * scale)
            .collect();
        data[0] = 0.0;
        data[1] = -0.0;
        data[2] = -5.0;
        let r = Tensor::from_vec(randn(&mut rng, data.len()), [1, data.len()], &dev).unwrap();
        let run = |fuse: bool| {
            let x = Tensor::param(data.clone(), vec![2, 3, 7, 7], &dev).unwrap();
            let y = if fuse {
                fused.forward_relu(&x, Mode::Train, flags).unwrap()
            } else {
                let relu = ops::relu(&x).unwrap();
                separate.forward(&relu, Mode::Train, flags).unwrap()
            };
            let grads = common::weighted_sum(&y, &r).unwrap().backward().unwrap();
            let dx = grads.get(&x).unwrap().to_vec().unwrap();
            (y.to_vec().unwrap(), dx)
        };
        let ((y_f, dx_f), (y_s, dx_s)) = (run(true), run(false));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y_f), bits(&y_s), "step {step}: outputs differ");
        assert_eq!(bits(&dx_f), bits(&dx_s), "step {step}: gradients differ");
        assert_eq!(
            fused.save().unwrap(),
            separate.save().unwrap(),
            "step {step}: observers differ"
        );
        if step == 1 {
            let clamped = dx_f
                .iter()
                .zip(&data)
                .filter(|(g, &x)| x > 0.0 && **g == 0.0);
            assert!(clamped.count() > 0, "no value reached past the range");
        }
    }
}

/// Batch norm of `x * s[c]` as one op (the CPU backend's fused primitive)
/// gives the bits of `scale_channels` then `batch_norm`: output, running
/// statistics, and the gradients of `x`, `s`, `gamma` and `beta`.
#[test]
fn scaled_batch_norm_gives_the_bits_of_scale_then_batch_norm() {
    let dev = Device::cpu();
    assert!(
        dev.backend().fuses_scaled_batchnorm(),
        "the CPU backend should take the fused path this test checks"
    );
    let mut rng = Rng::new(22);
    let dims = vec![3usize, 4, 5, 6];
    let x_data: Vec<f32> = randn(&mut rng, 3 * 4 * 5 * 6)
        .iter()
        .map(|v| v * 2.0 + 0.7)
        .collect();
    let s_data: Vec<f32> = randn(&mut rng, 4).iter().map(|v| v.abs() + 0.3).collect();
    let (g_data, b_data) = (randn(&mut rng, 4), randn(&mut rng, 4));
    let r = Tensor::from_vec(randn(&mut rng, x_data.len()), [1, x_data.len()], &dev).unwrap();
    let run = |fuse: bool| {
        let x = Tensor::param(x_data.clone(), dims.clone(), &dev).unwrap();
        let s = Tensor::param(s_data.clone(), vec![4], &dev).unwrap();
        let gamma = Tensor::param(g_data.clone(), vec![4], &dev).unwrap();
        let beta = Tensor::param(b_data.clone(), vec![4], &dev).unwrap();
        let rm = Tensor::from_vec(vec![0.1; 4], [4], &dev).unwrap();
        let rv = Tensor::from_vec(vec![0.9; 4], [4], &dev).unwrap();
        let args = BatchNormArgs {
            running_mean: &rm,
            running_var: &rv,
            train: true,
            momentum: 0.1,
            eps: 1e-5,
        };
        let y = if fuse {
            ops::batch_norm_scaled(&x, &s, &gamma, &beta, args).unwrap()
        } else {
            let t = ops::scale_channels(&x, &s, 1).unwrap();
            ops::batch_norm(&t, &gamma, &beta, args).unwrap()
        };
        let grads = common::weighted_sum(&y, &r).unwrap().backward().unwrap();
        let mut out = vec![
            y.to_vec().unwrap(),
            rm.to_vec().unwrap(),
            rv.to_vec().unwrap(),
        ];
        for p in [&x, &s, &gamma, &beta] {
            out.push(grads.get(p).unwrap().to_vec().unwrap());
        }
        out
    };
    let (fused, separate) = (run(true), run(false));
    let names = [
        "y",
        "running_mean",
        "running_var",
        "dx",
        "ds",
        "dgamma",
        "dbeta",
    ];
    for ((a, b), name) in fused.iter().zip(&separate).zip(names) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "{name} differs");
    }
}

/// Batch norm with its ReLU in the same passes (the CPU backend's fused
/// FP32 primitive) gives the bits of `batch_norm` then `relu`: output,
/// running statistics, and the gradients of `x`, `gamma` and `beta`, on
/// data where about half of the outputs are clipped.
#[test]
fn batch_norm_relu_gives_the_bits_of_batch_norm_then_relu() {
    let dev = Device::cpu();
    assert!(
        dev.backend().fuses_batchnorm_relu(),
        "the CPU backend should take the fused path this test checks"
    );
    let mut rng = Rng::new(23);
    let dims = vec![3usize, 4, 5, 6];
    let x_data: Vec<f32> = randn(&mut rng, 3 * 4 * 5 * 6)
        .iter()
        .map(|v| v * 2.0 - 0.4)
        .collect();
    let (g_data, b_data) = (randn(&mut rng, 4), randn(&mut rng, 4));
    let r = Tensor::from_vec(randn(&mut rng, x_data.len()), [1, x_data.len()], &dev).unwrap();
    let run = |fuse: bool| {
        let x = Tensor::param(x_data.clone(), dims.clone(), &dev).unwrap();
        let gamma = Tensor::param(g_data.clone(), vec![4], &dev).unwrap();
        let beta = Tensor::param(b_data.clone(), vec![4], &dev).unwrap();
        let rm = Tensor::from_vec(vec![0.1; 4], [4], &dev).unwrap();
        let rv = Tensor::from_vec(vec![0.9; 4], [4], &dev).unwrap();
        let args = BatchNormArgs {
            running_mean: &rm,
            running_var: &rv,
            train: true,
            momentum: 0.1,
            eps: 1e-5,
        };
        let y = if fuse {
            ops::batch_norm_relu(&x, &gamma, &beta, args).unwrap()
        } else {
            ops::relu(&ops::batch_norm(&x, &gamma, &beta, args).unwrap()).unwrap()
        };
        let grads = common::weighted_sum(&y, &r).unwrap().backward().unwrap();
        let mut out = vec![
            y.to_vec().unwrap(),
            rm.to_vec().unwrap(),
            rv.to_vec().unwrap(),
        ];
        for p in [&x, &gamma, &beta] {
            out.push(grads.get(p).unwrap().to_vec().unwrap());
        }
        out
    };
    let (fused, separate) = (run(true), run(false));
    let zeros = fused[0].iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > 100 && zeros < 260, "{zeros} of 360 outputs clipped");
    let names = ["y", "running_mean", "running_var", "dx", "dgamma", "dbeta"];
    for ((a, b), name) in fused.iter().zip(&separate).zip(names) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "{name} differs");
    }
}

/// The fused residual add and ReLU gives the bits of `add` then `relu`:
/// the output and both inputs' gradients, here with one input also read
/// by a second op (its gradient accumulates with the add's share).
#[test]
fn add_relu_gives_the_bits_of_add_then_relu() {
    let dev = Device::cpu();
    assert!(
        dev.backend().fuses_add_relu(),
        "the CPU backend should take the fused path this test checks"
    );
    let mut rng = Rng::new(29);
    let n = 2 * 3 * 7 * 5;
    let (a_data, b_data) = (randn(&mut rng, n), randn(&mut rng, n));
    let r = Tensor::from_vec(randn(&mut rng, n), [1, n], &dev).unwrap();
    let run = |fuse: bool| {
        let a = Tensor::param(a_data.clone(), vec![2, 3, 7, 5], &dev).unwrap();
        let b = Tensor::param(b_data.clone(), vec![2, 3, 7, 5], &dev).unwrap();
        let side = ops::relu(&b).unwrap();
        let y = if fuse {
            ops::add_relu(&a, &b).unwrap()
        } else {
            ops::relu(&ops::add(&a, &b).unwrap()).unwrap()
        };
        let y = ops::add(&y, &side).unwrap();
        let grads = common::weighted_sum(&y, &r).unwrap().backward().unwrap();
        let mut out = vec![y.to_vec().unwrap()];
        for p in [&a, &b] {
            out.push(grads.get(p).unwrap().to_vec().unwrap());
        }
        out
    };
    let (fused, separate) = (run(true), run(false));
    let clipped = fused[1].iter().filter(|&&v| v == 0.0).count();
    assert!(
        clipped > 50 && clipped < 160,
        "{clipped} of {n} gradients cut"
    );
    for ((a, b), name) in fused.iter().zip(&separate).zip(["y", "da", "db"]) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "{name} differs");
    }
}
