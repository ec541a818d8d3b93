//! ResNets (He et al. 2016) as network graphs of Conv+BN units: a small
//! variant for 28x28 inputs and ResNet-18/34/50 with the ImageNet stem.
//! Parameter names follow torchvision's layout (`layer1.0.conv1...`), with
//! each conv and its batch norm grouped under one unit name.

use crate::backend::Device;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::MaxPool2dParams;
use crate::{bail, Result};

/// The ResNet variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResNetKind {
    /// 3x3 stem, three stages of two basic blocks (16, 32, 64 channels): for
    /// 28x28 images such as Fashion-MNIST.
    Small,
    ResNet18,
    ResNet34,
    ResNet50,
}

impl ResNetKind {
    /// (bottleneck?, blocks per stage, stage widths).
    fn layout(self) -> (bool, &'static [usize], &'static [usize]) {
        match self {
            ResNetKind::Small => (false, &[2, 2, 2], &[16, 32, 64]),
            ResNetKind::ResNet18 => (false, &[2, 2, 2, 2], &[64, 128, 256, 512]),
            ResNetKind::ResNet34 => (false, &[3, 4, 6, 3], &[64, 128, 256, 512]),
            ResNetKind::ResNet50 => (true, &[3, 4, 6, 3], &[64, 128, 256, 512]),
        }
    }
}

/// Builds the graph of `arch` for `in_channels`-channel images and
/// `num_classes` classes, initialized from `seed`. Node names (and so
/// parameter names) follow torchvision's layout: `stem`, `stem.maxpool`,
/// `layer{s}.{b}.conv{k}`, `layer{s}.{b}.downsample`, `layer{s}.{b}.add`,
/// `gap`, `fc`.
pub fn resnet(
    kind: ResNetKind,
    in_channels: usize,
    num_classes: usize,
    device: &Device,
    seed: u64,
) -> Result<Graph> {
    if in_channels == 0 || num_classes == 0 {
        bail!(
            Usage,
            "a ResNet needs at least one input channel and one class"
        );
    }
    let (g, x) = GraphBuilder::new(in_channels, device, seed)?;
    let mut g = g;
    let (bottleneck, blocks, widths) = kind.layout();
    let mut y = if kind == ResNetKind::Small {
        g.conv_bn("stem", x, widths[0], 3, 1, 1, true)?
    } else {
        let stem = g.conv_bn("stem", x, 64, 7, 2, 3, true)?;
        g.max_pool("stem.maxpool", stem, MaxPool2dParams::new(3, 2, 1))?
    };
    for (s, (&n, &width)) in blocks.iter().zip(widths).enumerate() {
        for b in 0..n {
            let stride = if b == 0 && s > 0 { 2 } else { 1 };
            let name = format!("layer{}.{b}", s + 1);
            y = if bottleneck {
                bottleneck_block(&mut g, &name, y, width, stride)?
            } else {
                basic_block(&mut g, &name, y, width, stride)?
            };
        }
    }
    let pooled = g.global_avg_pool("gap", y)?;
    g.linear("fc", pooled, num_classes, true)?;
    Ok(g.finish())
}

/// Two 3x3 ConvBn units (the second without ReLU), the shortcut, add and
/// ReLU.
fn basic_block(
    g: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    c_out: usize,
    stride: usize,
) -> Result<NodeId> {
    let y = g.conv_bn(&format!("{name}.conv1"), x, c_out, 3, stride, 1, true)?;
    let y = g.conv_bn(&format!("{name}.conv2"), y, c_out, 3, 1, 1, false)?;
    let short = shortcut(g, name, x, c_out, stride)?;
    g.add(&format!("{name}.add"), y, short, true)
}

/// torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv.
fn bottleneck_block(
    g: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    width: usize,
    stride: usize,
) -> Result<NodeId> {
    let c_out = width * 4;
    let y = g.conv_bn(&format!("{name}.conv1"), x, width, 1, 1, 0, true)?;
    let y = g.conv_bn(&format!("{name}.conv2"), y, width, 3, stride, 1, true)?;
    let y = g.conv_bn(&format!("{name}.conv3"), y, c_out, 1, 1, 0, false)?;
    let short = shortcut(g, name, x, c_out, stride)?;
    g.add(&format!("{name}.add"), y, short, true)
}

/// The identity, or a 1x1 projection (`downsample`) when the block changes
/// shape.
fn shortcut(
    g: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    c_out: usize,
    stride: usize,
) -> Result<NodeId> {
    if stride == 1 && g.channels(x) == c_out {
        return Ok(x);
    }
    g.conv_bn(&format!("{name}.downsample"), x, c_out, 1, stride, 0, false)
}

#[cfg(test)]
mod tests {
    use crate::backend::Device;
    use crate::models::{build, Arch};
    use crate::nn::Module;

    /// The names the `nn` module docs give as examples are real ones.
    #[test]
    fn documented_names_exist() {
        let m = build(Arch::Small, 1, 10, &Device::cpu(), 0).unwrap();
        let names: Vec<String> = m.state().into_iter().map(|n| n.name).collect();
        for want in [
            "stem.conv.weight",
            "layer1.0.conv1.conv.weight",
            "layer1.0.conv1.bn.running_var",
            "layer2.0.downsample.bn.bias",
            "fc.weight",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
    }
}
