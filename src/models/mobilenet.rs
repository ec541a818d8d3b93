//! MobileNetV2 (Sandler et al. 2018) as torchvision defines it: a 3x3 stem,
//! seventeen inverted residual blocks (1x1 expansion by 6, depthwise 3x3,
//! linear 1x1 projection with no activation after it, a residual add when
//! the shape is kept), a 1x1 convolution to 1280 channels, global average
//! pooling and the classifier; ReLU6 everywhere an activation is. Widths
//! scale by the width multiplier, rounded to multiples of 8 as torchvision's
//! `_make_divisible`. The 28x28 variant keeps every layer and reduces the
//! stem's and the second stage's strides to 1 (output stride 8 instead of
//! 32, so 28x28 inputs end at 4x4). torchvision's dropout before the
//! classifier is left out.
//!
//! Node names: `features.0` (stem), `features.{i}.expand`, `.dw`,
//! `.project`, `.add` for block `i` (1 to 17), `features.18` (the last 1x1
//! convolution), `gap`, `classifier`.

use crate::backend::Device;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::nn::Activation;
use crate::ops::Conv2dParams;
use crate::{bail, Result};

/// Expansion t, output channels c, repeats n, first stride s of each stage.
const STAGES: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// `v` rounded to the nearest multiple of `divisor`, never more than 10%
/// below `v` (torchvision's `_make_divisible`).
pub fn make_divisible(v: f32, divisor: usize) -> usize {
    let d = divisor as f32;
    let mut new = ((v + d / 2.0) / d).floor().max(1.0) as usize * divisor;
    if (new as f32) < 0.9 * v {
        new += divisor;
    }
    new
}

/// The MobileNetV2 graph with width multiplier `width`, for
/// `in_channels`-channel images and `num_classes` classes; `small_input`
/// selects the 28x28 variant.
pub fn mobilenet_v2(
    width: f32,
    small_input: bool,
    in_channels: usize,
    num_classes: usize,
    device: &Device,
    seed: u64,
) -> Result<Graph> {
    if num_classes == 0 || !(width.is_finite() && width > 0.0) {
        bail!(
            Usage,
            "MobileNetV2 needs at least one class and a positive width multiplier"
        );
    }
    let (mut g, x) = GraphBuilder::new(in_channels, device, seed)?;
    let stem_stride = if small_input { 1 } else { 2 };
    let c0 = make_divisible(32.0 * width, 8);
    let mut y = g.conv_bn_with(
        "features.0",
        x,
        c0,
        3,
        Conv2dParams::new(stem_stride, 1),
        Activation::Relu6,
    )?;
    let mut i = 1;
    for (stage, &(t, c, n, s)) in STAGES.iter().enumerate() {
        let c_out = make_divisible(c as f32 * width, 8);
        // The 28x28 variant: the second stage keeps the resolution too.
        let first = if small_input && stage == 1 { 1 } else { s };
        for j in 0..n {
            let stride = if j == 0 { first } else { 1 };
            y = inverted_residual(&mut g, &format!("features.{i}"), y, c_out, stride, t)?;
            i += 1;
        }
    }
    let last = make_divisible(1280.0 * width.max(1.0), 8);
    y = g.conv_bn_with(
        &format!("features.{i}"),
        y,
        last,
        1,
        Conv2dParams::new(1, 0),
        Activation::Relu6,
    )?;
    let pooled = g.global_avg_pool("gap", y)?;
    g.linear("classifier", pooled, num_classes, true)?;
    Ok(g.finish())
}

/// Expansion (when `t > 1`), depthwise 3x3 with `stride`, linear projection,
/// and the residual add when the block keeps its shape.
fn inverted_residual(
    g: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    c_out: usize,
    stride: usize,
    t: usize,
) -> Result<NodeId> {
    let c_in = g.channels(x);
    let hidden = c_in * t;
    let mut y = x;
    if t != 1 {
        y = g.conv_bn_with(
            &format!("{name}.expand"),
            y,
            hidden,
            1,
            Conv2dParams::new(1, 0),
            Activation::Relu6,
        )?;
    }
    let dw = Conv2dParams {
        groups: hidden,
        ..Conv2dParams::new(stride, 1)
    };
    y = g.conv_bn_with(&format!("{name}.dw"), y, hidden, 3, dw, Activation::Relu6)?;
    y = g.conv_bn_with(
        &format!("{name}.project"),
        y,
        c_out,
        1,
        Conv2dParams::new(1, 0),
        Activation::None,
    )?;
    if stride == 1 && c_in == c_out {
        y = g.add(&format!("{name}.add"), y, x, false)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Op;
    use crate::nn::Module;

    #[test]
    fn divisible_widths_as_torchvision() {
        assert_eq!(make_divisible(32.0, 8), 32);
        assert_eq!(make_divisible(32.0 * 0.5, 8), 16);
        assert_eq!(make_divisible(24.0 * 0.35, 8), 8);
        assert_eq!(make_divisible(96.0 * 0.75, 8), 72);
        assert_eq!(make_divisible(1280.0, 8), 1280);
    }

    /// torchvision's mobilenet_v2() has 3,504,872 parameters (weights and
    /// biases of convolutions, batch norms and the classifier, 1000
    /// classes); ours has the same count.
    #[test]
    fn parameter_count_matches_torchvision() {
        let g = mobilenet_v2(1.0, false, 3, 1000, &Device::cpu(), 0).unwrap();
        let n: usize = g.parameters().iter().map(|p| p.tensor.numel()).sum();
        assert_eq!(n, 3_504_872);
        let adds = g
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Add { .. }))
            .count();
        assert_eq!(adds, 10);
        let dw = g
            .nodes()
            .iter()
            .filter(|n| matches!(&n.op, Op::ConvBn(u) if u.conv.params.groups > 1))
            .count();
        assert_eq!(dw, 17);
    }
}
