//! Matrix product and fully connected layers (PyTorch's `[out, in]` weights).

use super::{grad_like, output, same_device};
use crate::autograd::{self, Grads};
use crate::backend::GemmGeom;
use crate::tensor::Tensor;
use crate::{bail, Result};

/// `a @ b` for `a: [m, k]`, `b: [k, n]`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (m, k) = a.shape().matrix()?;
    let (k2, n) = b.shape().matrix()?;
    if k != k2 {
        bail!(
            Shape,
            "matmul: inner dimensions of {} and {} differ",
            a.shape(),
            b.shape()
        );
    }
    same_device("matmul", &[a, b])?;
    let y = output([m, n], a.device(), autograd::should_record(&[a, b]))?;
    a.device().backend().gemm(
        &GemmGeom::new(m, n, k),
        &a.storage(),
        &b.storage(),
        &mut y.storage_mut(),
    )?;
    if y.tracked() {
        let (a, b) = (a.clone(), b.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let be = a.device().backend();
            if a.tracked() {
                // da = gy @ b^T
                let da = grad_like(&a)?;
                let g = GemmGeom {
                    trans_b: true,
                    ..GemmGeom::new(m, k, n)
                };
                be.gemm(&g, &gy.storage(), &b.storage(), &mut da.storage_mut())?;
                grads.accumulate(&a, da)?;
            }
            if b.tracked() {
                // db = a^T @ gy
                let db = grad_like(&b)?;
                let g = GemmGeom {
                    trans_a: true,
                    ..GemmGeom::new(k, n, m)
                };
                be.gemm(&g, &a.storage(), &gy.storage(), &mut db.storage_mut())?;
                grads.accumulate(&b, db)?;
            }
            Ok(())
        });
    }
    Ok(y)
}

/// `x @ w^T + b` for `x: [n, in]`, `w: [out, in]`, `b: [out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (n, fin) = x.shape().matrix()?;
    let (fout, fin2) = w.shape().matrix()?;
    if fin != fin2 {
        bail!(
            Shape,
            "linear: input {} does not match weight {}",
            x.shape(),
            w.shape()
        );
    }
    if let Some(b) = b {
        if b.dims() != [fout] {
            bail!(
                Shape,
                "linear: bias {} does not match weight {}",
                b.shape(),
                w.shape()
            );
        }
        same_device("linear", &[x, w, b])?;
    }
    same_device("linear", &[x, w])?;
    let mut inputs = vec![x, w];
    inputs.extend(b);
    let y = output([n, fout], x.device(), autograd::should_record(&inputs))?;
    let be = x.device().backend();
    let g = GemmGeom {
        trans_b: true,
        ..GemmGeom::new(n, fout, fin)
    };
    be.gemm(&g, &x.storage(), &w.storage(), &mut y.storage_mut())?;
    if let Some(b) = b {
        be.add_row_bias(n, fout, &b.storage(), &mut y.storage_mut())?;
    }
    if y.tracked() {
        let (x, w, b) = (x.clone(), w.clone(), b.cloned());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let be = x.device().backend();
            if x.tracked() {
                let dx = grad_like(&x)?;
                be.gemm(
                    &GemmGeom::new(n, fin, fout),
                    &gy.storage(),
                    &w.storage(),
                    &mut dx.storage_mut(),
                )?;
                grads.accumulate(&x, dx)?;
            }
            if w.tracked() {
                let dw = grad_like(&w)?;
                let g = GemmGeom {
                    trans_a: true,
                    ..GemmGeom::new(fout, fin, n)
                };
                be.gemm(&g, &gy.storage(), &x.storage(), &mut dw.storage_mut())?;
                grads.accumulate(&w, dw)?;
            }
            if let Some(b) = b.filter(|b| b.tracked()) {
                let db = grad_like(&b)?;
                be.sum_rows(n, fout, &gy.storage(), &mut db.storage_mut())?;
                grads.accumulate(&b, db)?;
            }
            Ok(())
        });
    }
    Ok(y)
}
