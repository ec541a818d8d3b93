//! Model builders: each writes one architecture as a [`crate::graph::Graph`]
//! and nothing else (every pass reads the graph).

pub mod resnet;

pub use resnet::{resnet, Arch};

use crate::backend::Device;
use crate::graph::Graph;
use crate::Result;

/// The graph of `arch` for `in_channels`-channel images and `num_classes`
/// classes, initialized from `seed`.
pub fn build(
    arch: Arch,
    in_channels: usize,
    num_classes: usize,
    device: &Device,
    seed: u64,
) -> Result<Graph> {
    resnet(arch, in_channels, num_classes, device, seed)
}
