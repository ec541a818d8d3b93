//! `qat`: quantization-aware training on a hand-written CUDA engine, with an
//! integer-only int8 executor that matches the trained model bit for bit.
//!
//! Layers, bottom up (see `docs/ARCHITECTURE.md`):
//! - [`backend`]: the numerical primitives, once per device (CPU, CUDA);
//! - [`tensor`] and [`autograd`]: f32 tensors and a tape of backward closures;
//! - [`ops`]: differentiable operations (shape checks, forward, backward);
//! - [`nn`], [`models`], [`optim`]: modules, ResNets, SGD and schedules;
//! - [`data`]: datasets and augmentation;
//! - [`checkpoint`]: atomic, checksummed training checkpoints (safetensors);
//! - [`onnx`], [`executor`], [`verify`]: int8 ONNX export, the integer-only
//!   reference executor, and the layer-by-layer verification harness.

pub mod accuracy;
pub mod autograd;
pub mod backend;
pub mod calibrate;
pub mod checkpoint;
pub mod data;
mod error;
pub mod executor;
pub mod graph;
pub mod import;
pub mod int8;
pub mod models;
pub mod nn;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod optim;
pub mod quant;
pub mod rng;
pub mod run;
pub mod saved_model;
pub mod tensor;
pub mod train;
pub mod verify;

pub use backend::Device;
pub use error::{Error, Result};
pub use tensor::{Shape, Tensor};
