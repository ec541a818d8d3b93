//! ONNX export of network graphs (built with `onnx-protobuf`):
//! - [`export_int8`]: the integer-only graph of an [`Int8Net`]
//!   (QuantizeLinear, QLinearConv, QLinearAdd, MaxPool on int8,
//!   QLinearAveragePool, QLinearConcat, QLinearGlobalAveragePool, the
//!   classifier as a 1x1 QLinearConv, Flatten, DequantizeLinear), opset 13
//!   plus `com.microsoft` version 1;
//! - [`export_qdq`]: the same integers in QDQ form (QuantizeLinear /
//!   DequantizeLinear around float Conv, Add, pools, Concat, Flatten), for
//!   TensorRT and ONNX Runtime's QDQ fusion, opset 13;
//! - [`export_fp32`]: the float graph of a [`crate::graph::Graph`] (Conv,
//!   BatchNormalization, Relu, Clip, Add, MaxPool, AveragePool, Concat,
//!   GlobalAveragePool, Flatten, Gemm).
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
mod qdq;

pub use export::{export_fp32, export_int8, save_model, ExportMeta};
pub use qdq::{export_qdq, QdqBias};

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
use crate::graph::Graph;
use crate::int8::Int8Net;
use crate::{bail, Device, Error, Result};
use std::path::Path;

/// What `qat export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The float graph ([`export_fp32`]).
    Fp32,
    /// The integer-only QOperator graph ([`export_int8`]), which the int8
    /// executor runs.
    QOperator,
    /// The same integers as QuantizeLinear/DequantizeLinear pairs around
    /// float ops ([`export_qdq`]), for TensorRT and ONNX Runtime's QDQ
    /// transformer.
    Qdq(QdqBias),
}

/// `qat export`: the model of a checkpoint as an int8 graph (QAT
/// checkpoints) or, with `fp32`, as a float graph. Returns a one-line summary.
/// [`export_checkpoint_as`] with [`Format::Fp32`] or [`Format::QOperator`].
pub fn export_checkpoint(checkpoint: &Path, out: &Path, fp32: bool) -> Result<String> {
    let format = if fp32 {
        Format::Fp32
    } else {
        Format::QOperator
    };
    export_checkpoint_as(checkpoint, out, format)
}

/// `qat export --format`: the model of a checkpoint in `format`.
///
/// An int8 export checks every activation quantizer first
/// ([`check_quantizers`]), then loads the serialized QOperator bytes with
/// the int8 executor ([`crate::executor::Executor::from_bytes`], the loader
/// and validator `qat verify` and users run) before writing them: what the
/// executor would refuse is an error here and nothing is written. A QDQ
/// export holds the same integers, so it builds and checks the QOperator
/// graph the same way before writing the QDQ one. The file is written
/// atomically (temporary file, fsync, rename).
pub fn export_checkpoint_as(checkpoint: &Path, out: &Path, format: Format) -> Result<String> {
    let ck = Checkpoint::load(checkpoint)?;
    let dev = Device::cpu();
    let (model, info) = crate::saved_model::load(&ck, &dev)?;
    let refused = |e: Error| {
        let e = match e {
            Error::Onnx(m) | Error::Numerical(m) | Error::Usage(m) | Error::Data(m) => m,
            other => other.to_string(),
        };
        Error::Data(format!(
            "{}: {e}; nothing was written to {}",
            checkpoint.display(),
            out.display()
        ))
    };
    let proto = if format == Format::Fp32 {
        export_fp32(&model, &info)?
    } else {
        if !model.is_quantized() {
            bail!(
                Usage,
                "{} is an FP32 checkpoint: export it with --fp32, or use a QAT checkpoint for an int8 graph",
                checkpoint.display()
            );
        }
        check_quantizers(&model).map_err(refused)?;
        let int8 = Int8Net::build(&model).map_err(refused)?;
        let qop = export_int8(&int8, &info).map_err(refused)?;
        crate::executor::Executor::from_bytes(&export::serialize(&qop)?).map_err(|e| {
            refused(Error::Onnx(format!(
                "the int8 executor refuses the exported bytes: {e}"
            )))
        })?;
        match format {
            Format::Qdq(bias) => export_qdq(&int8, &info, bias).map_err(refused)?,
            _ => qop,
        }
    };
    let bytes = export::serialize(&proto)?;
    export::write_bytes(&bytes, out)?;
    let g = proto.graph.as_ref();
    Ok(format!(
        "{} {} graph{}: {} nodes, {} initializers -> {}",
        info.arch,
        if format == Format::Fp32 {
            "fp32"
        } else {
            "int8"
        },
        match format {
            Format::Qdq(_) => format!(" (QDQ, {} activations)", model.scheme()),
            Format::QOperator if model.scheme() != Default::default() => {
                format!(" ({} activations)", model.scheme())
            }
            _ => String::new(),
        },
        g.map_or(0, |g| g.node.len()),
        g.map_or(0, |g| g.initializer.len()),
        out.display()
    ))
}

/// Every activation quantizer of a QAT model has parameters an int8 graph
/// can be built from (a positive finite scale of at least 2^-23 and an int8
/// zero point, [`crate::quant::QParams::problem`]): an error names the first
/// quantizer that does not, and says what to do.
pub fn check_quantizers(model: &Graph) -> Result<()> {
    for (name, q) in model.quantizers() {
        let qp = q.qparams().map_err(|e| {
            let e = match e {
                Error::Numerical(m) | Error::Usage(m) => m,
                other => other.to_string(),
            };
            Error::Onnx(format!(
                "quantizer '{name}': {e}; the model's quantizer state is damaged or the run that wrote \
it diverged: export an earlier checkpoint, or resume from one"
            ))
        })?;
        let kind = if q.is_frozen() {
            "frozen "
        } else {
            "observed "
        };
        export::check_qparams(name, kind, qp)?;
    }
    Ok(())
}
