//! Every op's backward against central finite differences, on random shapes
//! with odd sizes.

mod common;

use common::{away_from_zero, distinct, gradcheck, randn};
use qat::nn::{Mode, Module};
use qat::ops::{self, AvgPool2dParams, BatchNormArgs, Conv2dParams, MaxPool2dParams};
use qat::rng::Rng;
use qat::{Device, Tensor};

const H: f32 = 1e-2;

fn conv_case(seed: u64, x: [usize; 4], w: [usize; 4], p: Conv2dParams, bias: bool) {
    let mut rng = Rng::new(seed);
    let mut inputs = vec![
        (randn(&mut rng, x.iter().product()), x.to_vec()),
        (randn(&mut rng, w.iter().product()), w.to_vec()),
    ];
    if bias {
        inputs.push((randn(&mut rng, w[0]), vec![w[0]]));
    }
    gradcheck(seed, &inputs, 40, H, 5e-3, 1e-2, |t| {
        ops::conv2d(&t[0], &t[1], t.get(2), p)
    });
}

#[test]
fn conv2d_plain_and_bias() {
    conv_case(1, [2, 3, 7, 6], [4, 3, 3, 3], Conv2dParams::new(1, 1), true);
}

#[test]
fn conv2d_stride_unequal_padding_rect_kernel() {
    let p = Conv2dParams {
        stride: (2, 3),
        pad: (1, 2),
        ..Default::default()
    };
    conv_case(2, [2, 3, 9, 11], [5, 3, 3, 5], p, false);
}

#[test]
fn conv2d_dilation() {
    let p = Conv2dParams {
        dilation: (2, 2),
        pad: (2, 1),
        ..Default::default()
    };
    conv_case(3, [1, 2, 9, 8], [3, 2, 3, 3], p, true);
}

#[test]
fn conv2d_groups_and_depthwise() {
    let p = Conv2dParams {
        groups: 2,
        pad: (1, 1),
        ..Default::default()
    };
    conv_case(4, [2, 4, 5, 5], [6, 2, 3, 3], p, true);
    let p = Conv2dParams {
        groups: 5,
        pad: (1, 1),
        stride: (2, 2),
        ..Default::default()
    };
    conv_case(5, [2, 5, 7, 7], [5, 1, 3, 3], p, false);
}

#[test]
fn linear_and_matmul() {
    let mut rng = Rng::new(6);
    let inputs = vec![
        (randn(&mut rng, 5 * 7), vec![5, 7]),
        (randn(&mut rng, 3 * 7), vec![3, 7]),
        (randn(&mut rng, 3), vec![3]),
    ];
    gradcheck(6, &inputs, 40, H, 2e-3, 1e-2, |t| {
        ops::linear(&t[0], &t[1], Some(&t[2]))
    });
    let inputs = vec![
        (randn(&mut rng, 4 * 6), vec![4, 6]),
        (randn(&mut rng, 6 * 3), vec![6, 3]),
    ];
    gradcheck(7, &inputs, 40, H, 2e-3, 1e-2, |t| ops::matmul(&t[0], &t[1]));
}

fn bn_case(seed: u64, shape: Vec<usize>) {
    let c = shape[1];
    let mut rng = Rng::new(seed);
    let dev = Device::cpu();
    let inputs = vec![
        (randn(&mut rng, shape.iter().product()), shape.clone()),
        (randn(&mut rng, c), vec![c]),
        (randn(&mut rng, c), vec![c]),
    ];
    let rm = Tensor::zeros([c], &dev).unwrap();
    let rv = Tensor::full([c], 1.0, &dev).unwrap();
    gradcheck(seed, &inputs, 40, H, 5e-3, 2e-2, |t| {
        let args = BatchNormArgs {
            running_mean: &rm,
            running_var: &rv,
            train: true,
            momentum: 0.1,
            eps: 1e-5,
        };
        ops::batch_norm(&t[0], &t[1], &t[2], args)
    });
}

#[test]
fn batch_norm_train_4d_and_2d() {
    bn_case(8, vec![3, 4, 5, 3]);
    bn_case(9, vec![7, 5]);
}

#[test]
fn relu_and_add() {
    let mut rng = Rng::new(10);
    let inputs = vec![
        (away_from_zero(&mut rng, 30, 0.05), vec![2, 3, 5]),
        (randn(&mut rng, 30), vec![2, 3, 5]),
    ];
    gradcheck(10, &inputs, 30, H, 1e-3, 1e-2, |t| {
        ops::add(&ops::relu(&t[0])?, &t[1])
    });
}

/// An add hands its output gradient to both inputs without a copy; a
/// later accumulation into one of them must not change the other's. In
/// `add(add(a, b), relu(a))` the inner add gives `a` and `b` one buffer,
/// then the ReLU's gradient (recorded earlier, so run later) is added to
/// `a`'s; `add(a, a)` doubles.
#[test]
fn shared_gradients_of_add() {
    let mut rng = Rng::new(16);
    let inputs = vec![
        (away_from_zero(&mut rng, 30, 0.05), vec![2, 3, 5]),
        (randn(&mut rng, 30), vec![2, 3, 5]),
    ];
    gradcheck(16, &inputs, 30, H, 1e-3, 1e-2, |t| {
        let r = ops::relu(&t[0])?;
        ops::add(&ops::add(&t[0], &t[1])?, &r)
    });
    gradcheck(17, &inputs[..1], 30, H, 1e-3, 1e-2, |t| {
        ops::add(&t[0], &t[0])
    });
}

#[test]
fn max_pool_stem_window_and_odd_sizes() {
    let mut rng = Rng::new(11);
    let inputs = vec![(distinct(&mut rng, 2 * 3 * 9 * 7), vec![2, 3, 9, 7])];
    gradcheck(11, &inputs, 60, H, 1e-3, 1e-2, |t| {
        ops::max_pool2d(&t[0], MaxPool2dParams::new(3, 2, 1))
    });
    let inputs = vec![(distinct(&mut rng, 5 * 6), vec![1, 1, 5, 6])];
    let p = MaxPool2dParams {
        kernel: (2, 3),
        stride: (1, 2),
        pad: (1, 0),
    };
    gradcheck(12, &inputs, 60, H, 1e-3, 1e-2, |t| {
        ops::max_pool2d(&t[0], p)
    });
}

#[test]
fn global_avg_pool_and_flatten() {
    let mut rng = Rng::new(13);
    let inputs = vec![(randn(&mut rng, 2 * 3 * 5 * 3), vec![2, 3, 5, 3])];
    gradcheck(13, &inputs, 30, H, 1e-3, 1e-2, |t| {
        ops::flatten(&ops::global_avg_pool(&t[0])?)
    });
}

/// Values on both sides of the kinks `lo` and `hi`, each at least `gap` away
/// from them (beyond the finite-difference step).
fn away_from_kinks(rng: &mut Rng, n: usize, lo: f32, hi: f32, gap: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mut v = rng.normal() * (hi - lo) + (lo + hi) / 2.0;
            for k in [lo, hi] {
                if (v - k).abs() < gap {
                    v = k + gap.copysign(v - k);
                }
            }
            v
        })
        .collect()
}

#[test]
fn relu6_and_hardtanh_away_from_kinks() {
    let mut rng = Rng::new(16);
    let inputs = vec![(
        away_from_kinks(&mut rng, 2 * 3 * 5 * 3, 0.0, 6.0, 0.05),
        vec![2, 3, 5, 3],
    )];
    gradcheck(16, &inputs, 45, H, 1e-3, 1e-2, |t| ops::relu6(&t[0]));
    let inputs = vec![(
        away_from_kinks(&mut rng, 3 * 7, -0.5, 2.0, 0.05),
        vec![3, 7],
    )];
    gradcheck(17, &inputs, 21, H, 1e-3, 1e-2, |t| {
        ops::hardtanh(&t[0], -0.5, 2.0)
    });
}

#[test]
fn avg_pool_both_divisors_and_ceil_mode() {
    let mut rng = Rng::new(18);
    for incl in [false, true] {
        for ceil in [false, true] {
            let inputs = vec![(randn(&mut rng, 2 * 2 * 8 * 7), vec![2, 2, 8, 7])];
            let p = AvgPool2dParams {
                kernel: (3, 2),
                stride: (2, 2),
                pad: (1, 1),
                count_include_pad: incl,
                ceil_mode: ceil,
            };
            gradcheck(18, &inputs, 60, H, 1e-3, 1e-2, |t| {
                ops::avg_pool2d(&t[0], p)
            });
        }
    }
}

#[test]
fn concat_three_inputs_of_different_channels() {
    let mut rng = Rng::new(19);
    let inputs = vec![
        (randn(&mut rng, 2 * 2 * 3 * 5), vec![2, 2, 3, 5]),
        (randn(&mut rng, 2 * 3 * 3 * 5), vec![2, 3, 3, 5]),
        (randn(&mut rng, 2 * 5 * 3 * 5), vec![2, 5, 3, 5]),
    ];
    gradcheck(19, &inputs, 30, H, 1e-3, 1e-2, |t| {
        ops::concat(&[&t[0], &t[1], &t[2]], 1)
    });
    // The same tensor twice: its gradient is the sum of both slices.
    let inputs = vec![(randn(&mut rng, 3 * 4), vec![3, 4])];
    gradcheck(20, &inputs, 12, H, 1e-3, 1e-2, |t| {
        ops::concat(&[&t[0], &t[0]], 0)
    });
}

#[test]
fn cross_entropy_with_and_without_smoothing() {
    let mut rng = Rng::new(14);
    let labels = [3u32, 0, 4, 4, 1, 2];
    for eps in [0.0f32, 0.1] {
        let inputs = vec![(randn(&mut rng, 6 * 5), vec![6, 5])];
        gradcheck(14, &inputs, 30, H, 1e-3, 1e-2, |t| {
            ops::cross_entropy(&t[0], &labels, eps)
        });
    }
}

/// The whole small ResNet: gradients of the input through every layer type.
#[test]
fn small_resnet_input_gradient() {
    let dev = Device::cpu();
    let model = qat::models::build(qat::models::Arch::Small, 1, 3, &dev, 15).unwrap();
    let mut rng = Rng::new(15);
    let inputs = vec![(randn(&mut rng, 2 * 8 * 8), vec![2, 1, 8, 8])];
    // Batch-norm in training mode couples the batch; ReLU kinks make a few
    // probes noisy, so the tolerance is looser than for single ops.
    gradcheck(15, &inputs, 24, 1e-3, 2e-2, 5e-2, |t| {
        model.forward(&t[0], Mode::Train)
    });
}
