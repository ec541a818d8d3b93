//! ONNX export of trained network graphs (built with `onnx-protobuf`):
//! - [`export_int8`]: the integer-only graph of an [`Int8Net`]
//!   (QuantizeLinear, QLinearConv, QLinearAdd, MaxPool on int8,
//!   QLinearGlobalAveragePool, the classifier as a 1x1 QLinearConv, Flatten,
//!   DequantizeLinear), opset 13 plus `com.microsoft` version 1;
//! - [`export_fp32`]: the float graph of a [`crate::graph::Graph`] (Conv,
//!   BatchNormalization, Relu, Add, MaxPool, GlobalAveragePool, Flatten, Gemm).
//!
//! Scales, zero points, int8 weights and int32 biases are the
//! [`Int8Net`]'s buffers copied verbatim: nothing is recomputed here. The
//! int8 executor that runs these graphs is [`crate::executor`].
//!
//! Tensor names: the float input is `image`, the float output `logits`; every
//! int8 activation is named after the layer that produces it, exactly as in
//! [`Int8Net::forward_trace`] (`input`, `stem`, `layer1.0.conv1`,
//! `layer1.0.add`, `gap`, `fc`), so a graph can be compared with the model
//! layer by layer. Initializers are `<tensor>.scale` / `<tensor>.zero_point`
//! for activations and `<unit>.weight_q`, `<unit>.weight_scale`,
//! `<unit>.weight_zero_point`, `<unit>.bias_q` for the folded Conv+BN units
//! (`<unit>` is the parameter prefix, e.g. `layer1.0.conv1` for
//! `layer1.0.conv1.conv.weight` and `layer1.0.conv1.bn.*`).
//!
//! [`Int8Net`]: crate::int8::Int8Net
//! [`Int8Net::forward_trace`]: crate::int8::Int8Net::forward_trace

mod export;

pub use export::{export_fp32, export_int8, save_model, ExportMeta};

/// The standard opset the graphs are written against.
pub const OPSET: i64 = 13;
/// The domain of QLinearAdd and QLinearGlobalAveragePool.
pub const MS_DOMAIN: &str = "com.microsoft";
/// The `com.microsoft` opset version.
pub const MS_OPSET: i64 = 1;
/// IR version 7 is the one that goes with opset 13 (ONNX 1.8).
pub const IR_VERSION: i64 = 7;
/// Name of the float graph input.
pub const INPUT_NAME: &str = "image";
/// Name of the float graph output.
pub const OUTPUT_NAME: &str = "logits";

use crate::checkpoint::Checkpoint;
use crate::int8::Int8Net;
use crate::{bail, Device, Result};
use std::path::Path;

/// `qat export`: the model of a training checkpoint as an int8 graph (QAT
/// checkpoints) or, with `fp32`, as a float graph. Returns a one-line summary.
pub fn export_checkpoint(checkpoint: &Path, out: &Path, fp32: bool) -> Result<String> {
    let ck = Checkpoint::load(checkpoint)?;
    let dev = Device::cpu();
    let (model, info) = crate::saved_model::load(&ck, &dev)?;
    let proto = if fp32 {
        export_fp32(&model, &info)?
    } else {
        if !model.is_quantized() {
            bail!(
                Usage,
                "{} is an FP32 checkpoint: export it with --fp32, or train with QAT for an int8 graph",
                checkpoint.display()
            );
        }
        export_int8(&Int8Net::build(&model)?, &info)?
    };
    save_model(&proto, out)?;
    let g = proto.graph.as_ref();
    Ok(format!(
        "{} {} graph: {} nodes, {} initializers -> {}",
        info.arch,
        if fp32 { "fp32" } else { "int8" },
        g.map_or(0, |g| g.node.len()),
        g.map_or(0, |g| g.initializer.len()),
        out.display()
    ))
}
