//! Model builders: each writes one architecture as a [`crate::graph::Graph`]
//! and nothing else (every pass reads the graph). Adding an architecture is a
//! builder file here and its entries in [`Arch`].

pub mod mobilenet;
pub mod resnet;

pub use mobilenet::mobilenet_v2;
pub use resnet::{resnet, ResNetKind};

use crate::backend::Device;
use crate::graph::Graph;
use crate::{bail, Result};
use std::str::FromStr;

/// The built-in architectures, by the names `--arch` and checkpoints use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ResNet(ResNetKind),
    /// MobileNetV2 with a width multiplier (in hundredths: 100, 75, 50 or
    /// 35, torchvision's published ones); `small_input` is the 28x28
    /// variant.
    MobileNetV2 {
        small_input: bool,
        width_pct: u32,
    },
}

#[allow(non_upper_case_globals)]
impl Arch {
    pub const Small: Arch = Arch::ResNet(ResNetKind::Small);
    pub const ResNet18: Arch = Arch::ResNet(ResNetKind::ResNet18);
    pub const ResNet34: Arch = Arch::ResNet(ResNetKind::ResNet34);
    pub const ResNet50: Arch = Arch::ResNet(ResNetKind::ResNet50);

    /// Every architecture with its name.
    pub const ALL: [(Arch, &'static str); 12] = [
        (Arch::Small, "small"),
        (Arch::ResNet18, "resnet18"),
        (Arch::ResNet34, "resnet34"),
        (Arch::ResNet50, "resnet50"),
        (Arch::mobilenet(false, 100), "mobilenet_v2"),
        (Arch::mobilenet(false, 75), "mobilenet_v2_x0.75"),
        (Arch::mobilenet(false, 50), "mobilenet_v2_x0.5"),
        (Arch::mobilenet(false, 35), "mobilenet_v2_x0.35"),
        (Arch::mobilenet(true, 100), "mobilenet_v2_small"),
        (Arch::mobilenet(true, 75), "mobilenet_v2_small_x0.75"),
        (Arch::mobilenet(true, 50), "mobilenet_v2_small_x0.5"),
        (Arch::mobilenet(true, 35), "mobilenet_v2_small_x0.35"),
    ];

    const fn mobilenet(small_input: bool, width_pct: u32) -> Arch {
        Arch::MobileNetV2 {
            small_input,
            width_pct,
        }
    }

    pub fn name(self) -> &'static str {
        Arch::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("unknown", |(_, n)| n)
    }

    /// The family, for descriptions ("ResNet", "MobileNetV2").
    pub fn family(self) -> &'static str {
        match self {
            Arch::ResNet(_) => "ResNet",
            Arch::MobileNetV2 { .. } => "MobileNetV2",
        }
    }
}

impl FromStr for Arch {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "resnet-small" {
            return Ok(Arch::Small);
        }
        match Arch::ALL.iter().find(|(_, n)| *n == s) {
            Some((a, _)) => Ok(*a),
            None => {
                let names: Vec<&str> = Arch::ALL.iter().map(|(_, n)| *n).collect();
                bail!(
                    Usage,
                    "unknown architecture '{s}': use one of {}",
                    names.join(", ")
                )
            }
        }
    }
}

/// The graph of `arch` for `in_channels`-channel images and `num_classes`
/// classes, initialized from `seed`.
pub fn build(
    arch: Arch,
    in_channels: usize,
    num_classes: usize,
    device: &Device,
    seed: u64,
) -> Result<Graph> {
    match arch {
        Arch::ResNet(kind) => resnet(kind, in_channels, num_classes, device, seed),
        Arch::MobileNetV2 {
            small_input,
            width_pct,
        } => mobilenet_v2(
            width_pct as f32 / 100.0,
            small_input,
            in_channels,
            num_classes,
            device,
            seed,
        ),
    }
}
