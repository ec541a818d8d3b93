//! Max pooling, average pooling, global average pooling and flatten.

use super::{reshape, unary_op};
use crate::backend::{AvgPool2dGeom, Pool2dGeom};
use crate::tensor::{Shape, Tensor};
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2dParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl MaxPool2dParams {
    pub fn new(kernel: usize, stride: usize, pad: usize) -> Self {
        MaxPool2dParams {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            pad: (pad, pad),
        }
    }
}

/// Max pooling with `-inf` padding; the gradient goes to the first maximum of
/// each window.
pub fn max_pool2d(x: &Tensor, p: MaxPool2dParams) -> Result<Tensor> {
    let (n, c, h, w) = x.shape().nchw()?;
    let g = Pool2dGeom {
        n,
        c,
        h,
        w,
        kh: p.kernel.0,
        kw: p.kernel.1,
        stride: p.stride,
        pad: p.pad,
    }
    .validate()?;
    unary_op(
        x,
        [n, c, g.out_h(), g.out_w()],
        |be, x, y| be.maxpool2d_fwd(&g, x, y),
        move |be, x, gy, dx| be.maxpool2d_bwd(&g, x, gy, dx),
    )
}

/// Average pooling parameters, as PyTorch's `avg_pool2d` and ONNX
/// AveragePool (symmetric pads, no dilation, no divisor override).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2dParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    /// Whether padding positions count in the divisor. PyTorch's default is
    /// `true`, ONNX AveragePool's is `false` (`count_include_pad = 0`).
    pub count_include_pad: bool,
    /// Round the output size up (a last, partial window), as PyTorch and ONNX.
    pub ceil_mode: bool,
}

impl AvgPool2dParams {
    /// The validated geometry of this pooling over `[n, c, h, w]`.
    pub fn geom(&self, n: usize, c: usize, h: usize, w: usize) -> Result<AvgPool2dGeom> {
        AvgPool2dGeom {
            n,
            c,
            h,
            w,
            kh: self.kernel.0,
            kw: self.kernel.1,
            stride: self.stride,
            pad: self.pad,
            count_include_pad: self.count_include_pad,
            ceil_mode: self.ceil_mode,
        }
        .validate()
    }

    /// A square window; `count_include_pad` has no common default (see the
    /// field), so it is always chosen; `ceil_mode` off.
    pub fn new(kernel: usize, stride: usize, pad: usize, count_include_pad: bool) -> Self {
        AvgPool2dParams {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            pad: (pad, pad),
            count_include_pad,
            ceil_mode: false,
        }
    }
}

/// Average pooling. Each output is the sum of the inputs under its window
/// divided by: with `count_include_pad`, the window's size clipped to the
/// padded input (`kh*kw` except for `ceil_mode` windows that hang past the
/// far padding); without, the number of input positions in the window.
/// These are PyTorch's rules, and ONNX Runtime's for AveragePool with
/// symmetric pads. Each input receives `dy / divisor` from every window
/// that holds it.
pub fn avg_pool2d(x: &Tensor, p: AvgPool2dParams) -> Result<Tensor> {
    let (n, c, h, w) = x.shape().nchw()?;
    let g = p.geom(n, c, h, w)?;
    unary_op(
        x,
        [n, c, g.out_h(), g.out_w()],
        |be, x, y| be.avgpool2d_fwd(&g, x, y),
        move |be, _x, gy, dx| be.avgpool2d_bwd(&g, gy, dx),
    )
}

/// Mean over H and W: `[N, C, H, W] -> [N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.shape().nchw()?;
    let hw = h * w;
    unary_op(
        x,
        [n, c],
        |be, x, y| be.global_avgpool_fwd(n, c, hw, x, y),
        move |be, _x, gy, dx| be.global_avgpool_bwd(n, c, hw, gy, dx),
    )
}

/// `[N, ...] -> [N, prod(...)]`.
pub fn flatten(x: &Tensor) -> Result<Tensor> {
    let n = x.dims().first().copied().unwrap_or(1);
    let rest = x.numel().checked_div(n).unwrap_or(0);
    reshape(x, Shape::new([n, rest]))
}
