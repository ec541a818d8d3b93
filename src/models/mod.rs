//! Model definitions.

mod resnet;

pub use resnet::{Arch, ResNet};
