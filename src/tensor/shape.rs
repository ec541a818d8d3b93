//! Tensor shapes (row-major, NCHW for images).

use crate::{bail, Result};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    pub fn dim(&self, i: usize) -> usize {
        self.0[i]
    }
    /// The four dims of an NCHW tensor, or an error naming the shape.
    pub fn nchw(&self) -> Result<(usize, usize, usize, usize)> {
        match self.0[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => bail!(Shape, "expected an NCHW tensor, got {self}"),
        }
    }
    /// The two dims of a matrix, or an error naming the shape.
    pub fn matrix(&self) -> Result<(usize, usize)> {
        match self.0[..] {
            [r, c] => Ok((r, c)),
            _ => bail!(Shape, "expected a 2-d tensor, got {self}"),
        }
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
