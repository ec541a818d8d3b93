//! Model definitions.

pub mod resnet;

pub use resnet::{Arch, ResNet};
