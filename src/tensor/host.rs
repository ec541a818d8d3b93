//! Host tensors of any plain element type (i8, u8, i32 for quantized data).

use super::Shape;
use crate::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor<T> {
    pub shape: Shape,
    pub data: Vec<T>,
}

impl<T: Copy + Default> HostTensor<T> {
    pub fn new(data: Vec<T>, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            bail!(Shape, "{} values cannot fill shape {shape}", data.len());
        }
        Ok(HostTensor { shape, data })
    }
    pub fn zeros(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        HostTensor {
            data: vec![T::default(); shape.numel()],
            shape,
        }
    }
}
