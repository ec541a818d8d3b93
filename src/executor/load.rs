//! Reading an ONNX file: the protobuf parse, and the decoding of initializers
//! into typed constants with every size checked against the bytes that are
//! really there before anything is allocated.

use crate::{bail, Error, Result};
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::{Message, ModelProto, TensorProto};
use protobuf::{CodedInputStream, Enum};
use std::path::Path;

/// Largest model file accepted (protobuf's own limit is 2 GiB).
pub const MAX_FILE_BYTES: u64 = 1 << 31;
/// Largest number of elements of any initializer or per-image activation.
pub const MAX_ELEMENTS: usize = 1 << 26;

/// The element types the int8 graphs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    F32,
    I8,
    /// uint8. A computed uint8 tensor is held as int8 `v - 128` (with its
    /// zero points shifted the same way), which every affine integer op
    /// computes exactly: see docs/INT8.md, "uint8 tensors".
    U8,
    I32,
    /// int64: only as a constant (a Reshape's shape).
    I64,
}

impl ElemType {
    pub fn from_onnx(code: i32) -> Option<Self> {
        match DataType::from_i32(code)? {
            DataType::FLOAT => Some(ElemType::F32),
            DataType::INT8 => Some(ElemType::I8),
            DataType::UINT8 => Some(ElemType::U8),
            DataType::INT32 => Some(ElemType::I32),
            DataType::INT64 => Some(ElemType::I64),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "float",
            ElemType::I8 => "int8",
            ElemType::U8 => "uint8",
            ElemType::I32 => "int32",
            ElemType::I64 => "int64",
        }
    }
}

/// Name of an ONNX element type code, for messages.
pub fn onnx_type_name(code: i32) -> String {
    match DataType::from_i32(code) {
        Some(t) => format!("{t:?}").to_lowercase(),
        None => format!("unknown type {code}"),
    }
}

/// The values of a decoded initializer.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl Data {
    pub fn elem_type(&self) -> ElemType {
        match self {
            Data::F32(_) => ElemType::F32,
            Data::I8(_) => ElemType::I8,
            Data::U8(_) => ElemType::U8,
            Data::I32(_) => ElemType::I32,
            Data::I64(_) => ElemType::I64,
        }
    }

    /// int8 or uint8 values in the int8 domain the executor computes in
    /// (uint8 shifted by -128, see [`ElemType::U8`]); `None` for other types.
    pub fn to_int8_domain(&self) -> Option<Vec<i8>> {
        match self {
            Data::I8(v) => Some(v.clone()),
            Data::U8(v) => Some(v.iter().map(|&u| (u as i32 - 128) as i8).collect()),
            _ => None,
        }
    }
}

/// A decoded initializer.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
}

/// Reads and parses a model file.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            Onnx,
            "{}: {} bytes is more than the 2 GiB a protobuf model can hold",
            path.display(),
            meta.len()
        );
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_model(&bytes).map_err(|e| match e {
        Error::Onnx(msg) => Error::Onnx(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// Parses a serialized model. [`super::wire::check_and_merge`] first checks
/// that every field lies within its message and the file (a truncated file is
/// an error saying where it ends) and merges repeated occurrences of
/// singular message fields as protobuf does; the generated parse then runs
/// with a limit at the end of the input, so that no nested message can end
/// early at the end of the file. The protobuf reader allocates at most in
/// proportion to `bytes` (lengths are checked against the remaining input).
pub fn parse_model(bytes: &[u8]) -> Result<ModelProto> {
    if bytes.is_empty() {
        bail!(
            Onnx,
            "empty file (0 bytes): not an ONNX model; export the model again with `qat export`"
        );
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!(
            Onnx,
            "{} bytes is more than a protobuf model can hold",
            bytes.len()
        );
    }
    let bytes = super::wire::check_and_merge(bytes)?;
    let invalid = |e: protobuf::Error| Error::Onnx(format!("not a valid ONNX protobuf: {e}"));
    let mut is = CodedInputStream::from_bytes(&bytes);
    is.push_limit(bytes.len() as u64).map_err(invalid)?;
    let mut m = ModelProto::new();
    m.merge_from(&mut is).map_err(invalid)?;
    is.check_eof().map_err(invalid)?;
    Ok(m)
}

/// Checked dimensions: non-negative, and a product of at most
/// [`MAX_ELEMENTS`].
pub fn checked_dims(dims: &[i64], what: &str) -> Result<(Vec<usize>, usize)> {
    let mut n: usize = 1;
    let mut out = Vec::with_capacity(dims.len().min(8));
    if dims.len() > 8 {
        bail!(Onnx, "{what}: rank {} is not supported", dims.len());
    }
    for &d in dims {
        if d < 0 {
            bail!(Onnx, "{what}: negative dimension {d}");
        }
        let d = usize::try_from(d)
            .map_err(|_| Error::Onnx(format!("{what}: dimension {d} too large")))?;
        n = match n.checked_mul(d) {
            Some(v) if v <= MAX_ELEMENTS => v,
            _ => bail!(
                Onnx,
                "{what}: dimensions {dims:?} exceed the limit of {MAX_ELEMENTS} elements"
            ),
        };
        out.push(d);
    }
    Ok((out, n))
}

/// Decodes an initializer (raw little-endian data or the typed fields).
pub fn decode_tensor(t: &TensorProto) -> Result<Const> {
    let what = format!("initializer '{}'", t.name);
    if t.data_location.value() == DataLocation::EXTERNAL as i32 || !t.external_data.is_empty() {
        bail!(Onnx, "{what}: external data is not supported");
    }
    if t.segment.is_some() {
        bail!(Onnx, "{what}: segmented tensors are not supported");
    }
    let Some(ty) = ElemType::from_onnx(t.data_type) else {
        bail!(
            Onnx,
            "{what}: element type {} is not supported (float, int8, uint8, int32, int64 only)",
            onnx_type_name(t.data_type)
        );
    };
    let (dims, n) = checked_dims(&t.dims, &what)?;
    let raw = &t.raw_data;
    let size = match ty {
        ElemType::I8 | ElemType::U8 => 1,
        ElemType::F32 | ElemType::I32 => 4,
        ElemType::I64 => 8,
    };
    let typed_len = match ty {
        ElemType::F32 => t.float_data.len(),
        ElemType::I8 | ElemType::U8 | ElemType::I32 => t.int32_data.len(),
        ElemType::I64 => t.int64_data.len(),
    };
    if !raw.is_empty() && typed_len != 0 {
        bail!(Onnx, "{what}: has both raw_data and typed data");
    }
    let have = if raw.is_empty() {
        typed_len
    } else {
        raw.len() / size
    };
    if (!raw.is_empty() && !raw.len().is_multiple_of(size)) || have != n {
        bail!(
            Onnx,
            "{what}: dimensions {:?} need {n} {} values, the file holds {}",
            dims,
            ty.name(),
            if raw.is_empty() {
                typed_len.to_string()
            } else {
                format!("{} bytes", raw.len())
            }
        );
    }
    let data = match ty {
        ElemType::F32 if raw.is_empty() => Data::F32(t.float_data.clone()),
        ElemType::F32 => Data::F32(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        ElemType::I32 if raw.is_empty() => Data::I32(t.int32_data.clone()),
        ElemType::I32 => Data::I32(
            raw.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        ElemType::I8 if raw.is_empty() => Data::I8(
            t.int32_data
                .iter()
                .map(|&v| {
                    i8::try_from(v).map_err(|_| Error::Onnx(format!("{what}: {v} is not an int8")))
                })
                .collect::<Result<_>>()?,
        ),
        ElemType::I8 => Data::I8(raw.iter().map(|&b| b as i8).collect()),
        ElemType::U8 if raw.is_empty() => Data::U8(
            t.int32_data
                .iter()
                .map(|&v| {
                    u8::try_from(v).map_err(|_| Error::Onnx(format!("{what}: {v} is not a uint8")))
                })
                .collect::<Result<_>>()?,
        ),
        ElemType::U8 => Data::U8(raw.clone()),
        ElemType::I64 if raw.is_empty() => Data::I64(t.int64_data.clone()),
        ElemType::I64 => Data::I64(
            raw.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
    };
    Ok(Const { dims, data })
}
