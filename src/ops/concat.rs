//! Concatenation along one axis (channel concat of NCHW tensors with axis 1).

use super::{grad_like, output, same_device};
use crate::autograd::{self, Grads};
use crate::backend::ConcatGeom;
use crate::tensor::Tensor;
use crate::{bail, Result};

/// Joins `xs` along `axis`: every other dim must agree. The gradient is split
/// back into one slice per input.
pub fn concat(xs: &[&Tensor], axis: usize) -> Result<Tensor> {
    let Some(first) = xs.first() else {
        bail!(Usage, "concat of no tensors");
    };
    same_device("concat", xs)?;
    let rank = first.dims().len();
    if axis >= rank {
        bail!(
            Shape,
            "concat: axis {axis} out of range for shape {}",
            first.shape()
        );
    }
    let mut dims = first.dims().to_vec();
    dims[axis] = 0;
    for x in xs {
        let d = x.dims();
        let agree = d.len() == rank && (0..rank).all(|i| i == axis || d[i] == first.dims()[i]);
        if !agree {
            let shapes: Vec<String> = xs.iter().map(|t| t.shape().to_string()).collect();
            bail!(
                Shape,
                "concat on axis {axis}: shapes {} differ outside that axis",
                shapes.join(", ")
            );
        }
        dims[axis] += d[axis];
    }
    let outer: usize = dims[..axis].iter().product();
    let tail: usize = dims[axis + 1..].iter().product();
    let row = dims[axis] * tail;
    let mut geoms = Vec::with_capacity(xs.len());
    let mut offset = 0;
    for x in xs {
        let inner = x.dims()[axis] * tail;
        geoms.push(ConcatGeom {
            outer,
            inner,
            row,
            offset,
        });
        offset += inner;
    }

    let y = output(dims, first.device(), autograd::should_record(xs))?;
    {
        let be = first.device().backend();
        let mut ys = y.storage_mut();
        for (x, g) in xs.iter().zip(&geoms) {
            be.concat_fwd(g, &x.storage(), &mut ys)?;
        }
    }
    if y.tracked() {
        let inputs: Vec<(Tensor, ConcatGeom)> = xs
            .iter()
            .zip(geoms)
            .filter(|(x, _)| x.tracked())
            .map(|(x, g)| ((*x).clone(), g))
            .collect();
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            for (x, g) in &inputs {
                let dx = grad_like(x)?;
                x.device()
                    .backend()
                    .concat_bwd(g, &gy.storage(), &mut dx.storage_mut())?;
                grads.accumulate(x, dx)?;
            }
            Ok(())
        });
    }
    Ok(y)
}
