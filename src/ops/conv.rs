//! 2-d convolution (NCHW input, OIHW weights, optional bias).

use super::{grad_like, output, same_device};
use crate::autograd::{self, Grads};
use crate::backend::Conv2dGeom;
use crate::tensor::Tensor;
use crate::{bail, Result};

/// Stride, padding, dilation (each as (h, w)) and groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: (1, 1),
            pad: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

impl Conv2dParams {
    pub fn new(stride: usize, pad: usize) -> Self {
        Conv2dParams {
            stride: (stride, stride),
            pad: (pad, pad),
            ..Default::default()
        }
    }
    /// The full geometry for input `x` and weight `w`, checked.
    pub fn geom(&self, x: &Tensor, w: &Tensor) -> Result<Conv2dGeom> {
        let (n, c_in, h, wd) = x.shape().nchw()?;
        let (c_out, cg, kh, kw) = w.shape().nchw()?;
        if self.groups == 0 || c_in % self.groups != 0 || cg * self.groups != c_in {
            bail!(
                Shape,
                "conv2d: input {} does not match weight {} with groups={}",
                x.shape(),
                w.shape(),
                self.groups
            );
        }
        Conv2dGeom {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
            groups: self.groups,
        }
        .validate()
    }
}

/// `conv2d(x, w) + b`.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let g = p.geom(x, w)?;
    same_device("conv2d", &[x, w])?;
    if let Some(b) = b {
        if b.dims() != [g.c_out] {
            bail!(
                Shape,
                "conv2d: bias {} does not match weight {}",
                b.shape(),
                w.shape()
            );
        }
        same_device("conv2d", &[x, b])?;
    }
    let mut inputs = vec![x, w];
    inputs.extend(b);
    let y = output(
        [g.n, g.c_out, g.out_h(), g.out_w()],
        x.device(),
        autograd::should_record(&inputs),
    )?;
    let bias = b.map(|b| b.storage());
    x.device().backend().conv2d_fwd(
        &g,
        &x.storage(),
        &w.storage(),
        bias.as_deref(),
        &mut y.storage_mut(),
    )?;
    drop(bias);
    if y.tracked() {
        let (x, w, b) = (x.clone(), w.clone(), b.cloned());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let be = x.device().backend();
            if x.tracked() {
                let dx = grad_like(&x)?;
                be.conv2d_bwd_data(&g, &gy.storage(), &w.storage(), &mut dx.storage_mut())?;
                grads.accumulate(&x, dx)?;
            }
            let b = b.filter(|b| b.tracked());
            if w.tracked() || b.is_some() {
                let dw = grad_like(&w)?;
                let db = b.as_ref().map(grad_like).transpose()?;
                {
                    let mut db_s = db.as_ref().map(|d| d.storage_mut());
                    be.conv2d_bwd_weight(
                        &g,
                        &x.storage(),
                        &gy.storage(),
                        &mut dw.storage_mut(),
                        db_s.as_deref_mut(),
                    )?;
                }
                grads.accumulate(&w, dw)?;
                if let (Some(b), Some(db)) = (b, db) {
                    grads.accumulate(&b, db)?;
                }
            }
            Ok(())
        });
    }
    Ok(y)
}
