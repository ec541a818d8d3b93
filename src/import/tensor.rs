//! Constant tensors of an FP32 ONNX graph (initializers and `Constant`
//! nodes): float32 or float16 weights, int64/int32 shapes and axes, raw or
//! typed, every size checked against the bytes really there.

use crate::executor::load::{checked_dims, onnx_type_name};
use crate::{bail, Result};
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::TensorProto;
use protobuf::Enum;

/// A decoded constant: floats (weights, scalars) or integers (shapes, axes).
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    pub dims: Vec<usize>,
    pub values: Values,
    /// The element type in the file, for messages ("float16", ...).
    pub stored_as: String,
}

impl Constant {
    pub fn len(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn floats(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(v),
            Values::I64(_) => None,
        }
    }
    pub fn ints(&self) -> Option<&[i64]> {
        match &self.values {
            Values::I64(v) => Some(v),
            Values::F32(_) => None,
        }
    }
}

/// IEEE binary16 to binary32 (exact: every half value is a float).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: frac * 2^-24, normalized.
            let shift = frac.leading_zeros() - 21; // bring the top bit to bit 10
            let f = (frac << shift) & 0x3ff;
            let e = 127 - 15 + 1 - shift;
            sign | (e << 23) | (f << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Decodes `t`: FLOAT, FLOAT16 and DOUBLE become floats, INT64 and INT32
/// integers; anything else is an error naming the type.
pub fn decode(t: &TensorProto) -> Result<Constant> {
    let what = format!("tensor '{}'", t.name);
    if t.data_location.value() == DataLocation::EXTERNAL as i32 || !t.external_data.is_empty() {
        bail!(
            Onnx,
            "{what}: external data files are not supported (save the model with its weights inside: \
onnx.save(model, path, save_as_external_data=False))"
        );
    }
    let (dims, n) = checked_dims(&t.dims, &what)?;
    let ty = DataType::from_i32(t.data_type);
    let raw = &t.raw_data;
    let size = match ty {
        Some(DataType::FLOAT | DataType::INT32) => 4,
        Some(DataType::FLOAT16) => 2,
        Some(DataType::DOUBLE | DataType::INT64) => 8,
        _ => bail!(
            Onnx,
            "{what}: element type {} is not supported (float, float16, double, int64, int32)",
            onnx_type_name(t.data_type)
        ),
    };
    let typed = match ty {
        Some(DataType::FLOAT) => t.float_data.len(),
        Some(DataType::DOUBLE) => t.double_data.len(),
        Some(DataType::INT64) => t.int64_data.len(),
        // float16 values are stored one per int32 in the typed field.
        _ => t.int32_data.len(),
    };
    if !raw.is_empty() && typed != 0 {
        bail!(Onnx, "{what}: has both raw_data and typed data");
    }
    let have = if raw.is_empty() {
        typed
    } else {
        raw.len() / size
    };
    if (!raw.is_empty() && !raw.len().is_multiple_of(size)) || have != n {
        bail!(
            Onnx,
            "{what}: dimensions {dims:?} need {n} values, the file holds {}",
            if raw.is_empty() {
                typed.to_string()
            } else {
                format!("{} bytes", raw.len())
            }
        );
    }
    let le4 = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    let le8 = |b: &[u8]| [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    let values = match ty {
        Some(DataType::FLOAT) if raw.is_empty() => Values::F32(t.float_data.clone()),
        Some(DataType::FLOAT) => Values::F32(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes(le4(b)))
                .collect(),
        ),
        Some(DataType::FLOAT16) if raw.is_empty() => {
            Values::F32(t.int32_data.iter().map(|&v| f16_to_f32(v as u16)).collect())
        }
        Some(DataType::FLOAT16) => Values::F32(
            raw.chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        ),
        Some(DataType::DOUBLE) if raw.is_empty() => {
            Values::F32(t.double_data.iter().map(|&v| v as f32).collect())
        }
        Some(DataType::DOUBLE) => Values::F32(
            raw.chunks_exact(8)
                .map(|b| f64::from_le_bytes(le8(b)) as f32)
                .collect(),
        ),
        Some(DataType::INT64) if raw.is_empty() => Values::I64(t.int64_data.clone()),
        Some(DataType::INT64) => Values::I64(
            raw.chunks_exact(8)
                .map(|b| i64::from_le_bytes(le8(b)))
                .collect(),
        ),
        _ if raw.is_empty() => Values::I64(t.int32_data.iter().map(|&v| v as i64).collect()),
        _ => Values::I64(
            raw.chunks_exact(4)
                .map(|b| i32::from_le_bytes(le4(b)) as i64)
                .collect(),
        ),
    };
    let stored_as = onnx_type_name(t.data_type);
    Ok(Constant {
        dims,
        values,
        stored_as,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finite half value, against its definition
    /// `(-1)^s * 2^(e - 15) * (1 + f / 1024)` (subnormals `2^-14 * f / 1024`),
    /// computed in f64; infinities and NaN keep their kind.
    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let (s, e, f) = (h >> 15, (h >> 10) & 0x1f, h & 0x3ff);
            let got = f16_to_f32(h);
            if e == 0x1f {
                assert_eq!(got.is_nan(), f != 0, "{h:#x}");
                assert_eq!(got.is_infinite(), f == 0, "{h:#x}");
                continue;
            }
            let m = if e == 0 {
                f as f64 / 1024.0 * 2f64.powi(-14)
            } else {
                (1.0 + f as f64 / 1024.0) * 2f64.powi(e as i32 - 15)
            };
            let want = if s == 1 { -m } else { m };
            assert_eq!(got as f64, want, "{h:#x}");
            assert_eq!(got.is_sign_negative(), s == 1, "{h:#x}");
        }
    }
}
