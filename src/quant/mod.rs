//! Int8 quantization arithmetic: the single source of truth for the numbers in
//! `QUANT_SPEC.md`. Training (fake quantization), the integer-exact eval
//! forward and the int8 executor all call these functions, so that the three
//! agree bit for bit by construction rather than by coincidence.
//!
//! The module is pure (no tensors, no devices, no allocation in per-element
//! paths) and dependency-free:
//! - [`params`]: scales and zero points (S1, S2) and the EMA observer;
//! - [`observer_words`]: the observer as the eight words a device updates
//!   in place during training;
//! - [`fake`]: fake quantization and its straight-through gradient (S3), and
//!   quantization to int8 (S3, S8);
//! - [`requant`]: bias quantization and requantization R1 (S5), as a float32
//!   reference and as the integer-only [`Requant`] the executor runs;
//! - [`fold`]: Conv + BatchNorm folding for inference (S4);
//! - [`pool`]: global average pooling (S6);
//! - [`add`]: the exact rational residual add (S7);
//! - [`calibrate`]: post-training choice of activation ranges (minmax,
//!   percentile, MSE over a histogram).

pub mod add;
pub mod calibrate;
pub mod fake;
pub mod fold;
pub mod observer_words;
pub mod params;
pub mod pool;
pub mod requant;

pub use add::AddRequant;
pub use params::{EmaObserver, QParams};
pub use requant::Requant;
