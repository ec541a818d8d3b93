//! The CPU backend: the readable reference implementation of every primitive,
//! parallel over all cores with rayon. GEMM and the convolution lowering
//! (`gemm`, `conv`) run on the register-tiled kernels of `tile` (the
//! integer-exact convolution's float64 GEMM on the `gemm` crate);
//! normalization, pooling and loss are ours too. Depthwise convolutions (`Conv2dGeom::is_depthwise`) run on the
//! direct kernels of `depthwise`, every other convolution on the GEMM
//! lowering of `conv`.

mod conv;
pub mod depthwise;
pub mod gemm;
mod isa;
mod loss;
mod map;
mod memory;
mod norm;
mod pool;
mod quant;
mod tile;

use super::{
    AvgPool2dGeom, Backend, BnGeom, ConcatGeom, Conv2dGeom, FqTensor, GemmGeom, PairMap,
    Pool2dGeom, QAddArgs, QConvArgs, QGapArgs, SgdStep, Storage,
};
use crate::quant::observer_words;
use crate::quant::params::Scheme;
use crate::Result;
use rayon::prelude::*;

#[derive(Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        memory::keep_freed_memory_mapped();
        CpuBackend
    }
}

/// `x` clamped to `[lo, hi]`, NaN kept (`f32::clamp` would too, but panics
/// when `lo > hi`; the op layer checks that).
#[inline]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

/// A copy of `data` in a recycled buffer (memory::take), so that copies
/// reuse warm pages too.
fn filled_from(data: &[f32]) -> Vec<f32> {
    let mut v = memory::take(data.len());
    v.copy_from_slice(data);
    v
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn zeros(&self, len: usize) -> Result<Storage> {
        Ok(Storage::Host(vec![0.0; len]))
    }
    fn empty(&self, len: usize) -> Result<Storage> {
        Ok(Storage::Host(memory::take(len)))
    }
    fn recycle(&self, s: Storage) {
        if let Storage::Host(v) = s {
            memory::give_back(v);
        }
    }
    fn upload(&self, data: &[f32]) -> Result<Storage> {
        Ok(Storage::Host(filled_from(data)))
    }
    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        Ok(s.host()?.to_vec())
    }
    fn fill(&self, s: &mut Storage, value: f32) -> Result<()> {
        s.host_mut()?.par_iter_mut().for_each(|v| *v = value);
        Ok(())
    }
    fn copy(&self, src: &Storage) -> Result<Storage> {
        Ok(Storage::Host(filled_from(src.host()?)))
    }

    fn add(&self, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()> {
        map::map2(a.host()?, b.host()?, y.host_mut()?, |x, z| x + z);
        Ok(())
    }
    fn pair_map(&self, op: PairMap, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()> {
        map::map2(a.host()?, b.host()?, y.host_mut()?, |x, z| op.apply(x, z));
        Ok(())
    }
    fn axpy(&self, alpha: f32, x: &Storage, y: &mut Storage) -> Result<()> {
        map::update(y.host_mut()?, x.host()?, |o, v| o + alpha * v);
        Ok(())
    }
    fn scale(&self, alpha: f32, x: &mut Storage) -> Result<()> {
        map::map_in_place(x.host_mut()?, |v| v * alpha);
        Ok(())
    }
    fn relu_fwd(&self, x: &Storage, y: &mut Storage) -> Result<()> {
        map::map1(x.host()?, y.host_mut()?, |v| v.max(0.0));
        Ok(())
    }
    fn fuses_add_relu(&self) -> bool {
        true
    }
    fn add_relu(&self, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()> {
        map::map2(a.host()?, b.host()?, y.host_mut()?, |x, z| (x + z).max(0.0));
        Ok(())
    }
    fn relu_bwd(&self, y: &Storage, dy: &Storage, dx: &mut Storage) -> Result<()> {
        map::map2(y.host()?, dy.host()?, dx.host_mut()?, |v, d| {
            if v > 0.0 {
                d
            } else {
                0.0
            }
        });
        Ok(())
    }
    fn clamp_fwd(&self, lo: f32, hi: f32, x: &Storage, y: &mut Storage) -> Result<()> {
        map::map1(x.host()?, y.host_mut()?, |v| clamp(v, lo, hi));
        Ok(())
    }
    fn clamp_bwd(
        &self,
        lo: f32,
        hi: f32,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        map::map2(x.host()?, dy.host()?, dx.host_mut()?, |v, d| {
            if lo < v && v < hi {
                d
            } else {
                0.0
            }
        });
        Ok(())
    }
    fn concat_fwd(&self, g: &ConcatGeom, x: &Storage, y: &mut Storage) -> Result<()> {
        g.validate()?;
        let x = &x.host()?[..g.x_len()];
        let y = &mut y.host_mut()?[..g.y_len()];
        y.par_chunks_mut(g.row.max(1))
            .zip(x.par_chunks(g.inner.max(1)))
            .for_each(|(yr, xr)| yr[g.offset..g.offset + g.inner].copy_from_slice(xr));
        Ok(())
    }
    fn concat_bwd(&self, g: &ConcatGeom, dy: &Storage, dx: &mut Storage) -> Result<()> {
        g.validate()?;
        let dy = &dy.host()?[..g.y_len()];
        let dx = &mut dx.host_mut()?[..g.x_len()];
        dx.par_chunks_mut(g.inner.max(1))
            .zip(dy.par_chunks(g.row.max(1)))
            .for_each(|(xr, yr)| xr.copy_from_slice(&yr[g.offset..g.offset + g.inner]));
        Ok(())
    }

    fn gemm(&self, g: &GemmGeom, a: &Storage, b: &Storage, c: &mut Storage) -> Result<()> {
        gemm::sgemm(g, a.host()?, b.host()?, c.host_mut()?, true);
        Ok(())
    }
    fn add_row_bias(
        &self,
        _rows: usize,
        cols: usize,
        bias: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        let bias = bias.host()?;
        y.host_mut()?
            .par_chunks_mut(cols)
            .for_each(|r| r.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        Ok(())
    }
    fn sum_rows(&self, rows: usize, cols: usize, dy: &Storage, db: &mut Storage) -> Result<()> {
        let dy = dy.host()?;
        db.host_mut()?
            .par_iter_mut()
            .enumerate()
            .for_each(|(j, o)| {
                *o = (0..rows).map(|r| dy[r * cols + j] as f64).sum::<f64>() as f32;
            });
        Ok(())
    }

    fn conv2d_fwd(
        &self,
        g: &Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        y: &mut Storage,
    ) -> Result<()> {
        let bias = bias.map(|b| b.host()).transpose()?;
        if g.is_depthwise() {
            depthwise::forward(g, x.host()?, w.host()?, bias, y.host_mut()?);
        } else {
            conv::forward(g, x.host()?, w.host()?, bias, y.host_mut()?);
        }
        Ok(())
    }
    fn conv2d_bwd_data(
        &self,
        g: &Conv2dGeom,
        dy: &Storage,
        w: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        if g.is_depthwise() {
            depthwise::backward_data(g, dy.host()?, w.host()?, dx.host_mut()?);
        } else {
            conv::backward_data(g, dy.host()?, w.host()?, dx.host_mut()?);
        }
        Ok(())
    }
    fn conv2d_bwd_weight(
        &self,
        g: &Conv2dGeom,
        x: &Storage,
        dy: &Storage,
        dw: &mut Storage,
        dbias: Option<&mut Storage>,
    ) -> Result<()> {
        let dbias = dbias.map(|b| b.host_mut()).transpose()?;
        if g.is_depthwise() {
            depthwise::backward_weight(g, x.host()?, dy.host()?, dw.host_mut()?, dbias);
        } else {
            conv::backward_weight(g, x.host()?, dy.host()?, dw.host_mut()?, dbias);
        }
        Ok(())
    }

    fn batchnorm_fwd_train(
        &self,
        g: &BnGeom,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        y: &mut Storage,
        save_mean: &mut Storage,
        save_invstd: &mut Storage,
    ) -> Result<()> {
        norm::forward_train(
            g,
            x.host()?,
            None,
            None,
            gamma.host()?,
            beta.host()?,
            running_mean.host_mut()?,
            running_var.host_mut()?,
            y.host_mut()?,
            save_mean.host_mut()?,
            save_invstd.host_mut()?,
        );
        Ok(())
    }
    fn batchnorm_fwd_eval(
        &self,
        g: &BnGeom,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        norm::forward_eval(
            g,
            x.host()?,
            gamma.host()?,
            beta.host()?,
            running_mean.host()?,
            running_var.host()?,
            y.host_mut()?,
        );
        Ok(())
    }
    fn batchnorm_bwd(
        &self,
        g: &BnGeom,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        save_mean: &Storage,
        save_invstd: &Storage,
        dx: &mut Storage,
        dgamma: &mut Storage,
        dbeta: &mut Storage,
    ) -> Result<()> {
        norm::backward(
            g,
            x.host()?,
            None,
            None,
            dy.host()?,
            gamma.host()?,
            save_mean.host()?,
            save_invstd.host()?,
            dx.host_mut()?,
            dgamma.host_mut()?,
            dbeta.host_mut()?,
        );
        Ok(())
    }

    fn fuses_scaled_batchnorm(&self) -> bool {
        true
    }
    fn batchnorm_fwd_train_scaled(
        &self,
        g: &BnGeom,
        x: &Storage,
        pre: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        y: &mut Storage,
        save_mean: &mut Storage,
        save_invstd: &mut Storage,
    ) -> Result<()> {
        norm::forward_train(
            g,
            x.host()?,
            Some(pre.host()?),
            None,
            gamma.host()?,
            beta.host()?,
            running_mean.host_mut()?,
            running_var.host_mut()?,
            y.host_mut()?,
            save_mean.host_mut()?,
            save_invstd.host_mut()?,
        );
        Ok(())
    }
    fn batchnorm_bwd_scaled(
        &self,
        g: &BnGeom,
        x: &Storage,
        pre: &Storage,
        dy: &Storage,
        gamma: &Storage,
        save_mean: &Storage,
        save_invstd: &Storage,
        dx: &mut Storage,
        dpre: &mut Storage,
        dgamma: &mut Storage,
        dbeta: &mut Storage,
    ) -> Result<()> {
        norm::backward(
            g,
            x.host()?,
            Some((pre.host()?, dpre.host_mut()?)),
            None,
            dy.host()?,
            gamma.host()?,
            save_mean.host()?,
            save_invstd.host()?,
            dx.host_mut()?,
            dgamma.host_mut()?,
            dbeta.host_mut()?,
        );
        Ok(())
    }

    fn fuses_batchnorm_relu(&self) -> bool {
        true
    }
    fn batchnorm_relu_fwd_train(
        &self,
        g: &BnGeom,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        y: &mut Storage,
        save_mean: &mut Storage,
        save_invstd: &mut Storage,
        affine: &mut Storage,
    ) -> Result<()> {
        norm::forward_train(
            g,
            x.host()?,
            None,
            Some(affine.host_mut()?),
            gamma.host()?,
            beta.host()?,
            running_mean.host_mut()?,
            running_var.host_mut()?,
            y.host_mut()?,
            save_mean.host_mut()?,
            save_invstd.host_mut()?,
        );
        Ok(())
    }
    fn batchnorm_relu_bwd(
        &self,
        g: &BnGeom,
        x: &Storage,
        affine: &Storage,
        dy: &Storage,
        gamma: &Storage,
        save_mean: &Storage,
        save_invstd: &Storage,
        dx: &mut Storage,
        dgamma: &mut Storage,
        dbeta: &mut Storage,
    ) -> Result<()> {
        norm::backward(
            g,
            x.host()?,
            None,
            Some(affine.host()?),
            dy.host()?,
            gamma.host()?,
            save_mean.host()?,
            save_invstd.host()?,
            dx.host_mut()?,
            dgamma.host_mut()?,
            dbeta.host_mut()?,
        );
        Ok(())
    }

    fn maxpool2d_fwd(&self, g: &Pool2dGeom, x: &Storage, y: &mut Storage) -> Result<()> {
        pool::max_forward(g, x.host()?, y.host_mut()?);
        Ok(())
    }
    fn maxpool2d_bwd(
        &self,
        g: &Pool2dGeom,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        pool::max_backward(g, x.host()?, dy.host()?, dx.host_mut()?);
        Ok(())
    }
    fn avgpool2d_fwd(&self, g: &AvgPool2dGeom, x: &Storage, y: &mut Storage) -> Result<()> {
        pool::avg_forward(g, x.host()?, y.host_mut()?);
        Ok(())
    }
    fn avgpool2d_bwd(&self, g: &AvgPool2dGeom, dy: &Storage, dx: &mut Storage) -> Result<()> {
        pool::avg_backward(g, dy.host()?, dx.host_mut()?);
        Ok(())
    }
    fn global_avgpool_fwd(
        &self,
        _n: usize,
        _c: usize,
        hw: usize,
        x: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        pool::gap_forward(hw, x.host()?, y.host_mut()?);
        Ok(())
    }
    fn global_avgpool_bwd(
        &self,
        _n: usize,
        _c: usize,
        hw: usize,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        pool::gap_backward(hw, dy.host()?, dx.host_mut()?);
        Ok(())
    }

    fn softmax_xent_fwd(
        &self,
        rows: usize,
        classes: usize,
        eps: f32,
        logits: &Storage,
        labels: &Storage,
        loss: &mut Storage,
        probs: &mut Storage,
    ) -> Result<()> {
        let l = loss::xent_forward(
            rows,
            classes,
            eps,
            logits.host()?,
            labels.host()?,
            probs.host_mut()?,
        );
        loss.host_mut()?[0] = l;
        Ok(())
    }
    fn softmax_xent_bwd(
        &self,
        rows: usize,
        classes: usize,
        eps: f32,
        probs: &Storage,
        labels: &Storage,
        dloss: &Storage,
        dlogits: &mut Storage,
    ) -> Result<()> {
        let d = dloss.host()?[0];
        loss::xent_backward(
            rows,
            classes,
            eps,
            probs.host()?,
            labels.host()?,
            d,
            dlogits.host_mut()?,
        );
        Ok(())
    }

    fn sgd_step(
        &self,
        s: &SgdStep,
        param: &mut Storage,
        grad: &Storage,
        momentum_buf: &mut Storage,
    ) -> Result<()> {
        let s = *s;
        // One loop per form, so that it vectorizes; the same operations
        // either way.
        let step = |p: f32, buf: f32, g: f32, nesterov: bool| {
            let g = g + s.weight_decay * p;
            let buf = s.momentum * buf + g;
            let step = if nesterov { g + s.momentum * buf } else { buf };
            (p - s.lr * step, buf)
        };
        let (p, g, m) = (param.host_mut()?, grad.host()?, momentum_buf.host_mut()?);
        if s.nesterov {
            map::update2(p, m, g, |p, buf, g| step(p, buf, g, true));
        } else {
            map::update2(p, m, g, |p, buf, g| step(p, buf, g, false));
        }
        Ok(())
    }

    fn label_hits(
        &self,
        rows: usize,
        classes: usize,
        logits: &Storage,
        labels: &Storage,
        loss: &Storage,
        out: &mut Storage,
    ) -> Result<()> {
        let labels: Vec<u32> = labels.host()?[..rows].iter().map(|&l| l as u32).collect();
        let mut acc = crate::accuracy::Accuracy::default();
        acc.add(&logits.host()?[..rows * classes], &labels);
        out.host_mut()?[..3].copy_from_slice(&[loss.host()?[0], acc.top1 as f32, acc.top5 as f32]);
        Ok(())
    }
    fn min_max(&self, x: &Storage) -> Result<(f32, f32)> {
        Ok(map::min_max(x.host()?))
    }
    fn fake_quant_tensor_fwd(&self, q: &FqTensor, x: &Storage, y: &mut Storage) -> Result<()> {
        quant::fake_quant_tensor_fwd(q, x.host()?, y.host_mut()?);
        Ok(())
    }
    fn fake_quant_tensor_bwd(
        &self,
        q: &FqTensor,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        quant::fake_quant_tensor_bwd(q, x.host()?, dy.host()?, dx.host_mut()?);
        Ok(())
    }
    fn observe_act(
        &self,
        x: &Storage,
        momentum: f32,
        scheme: Scheme,
        words: &mut Storage,
    ) -> Result<()> {
        let x = x.host()?;
        if x.is_empty() {
            return Ok(());
        }
        let (lo, hi) = map::min_max(x);
        observer_words::observe(words.host_mut()?, lo, hi, momentum, scheme)
    }
    fn fake_quant_act_fwd(
        &self,
        words: &Storage,
        qmin: i32,
        qmax: i32,
        x: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        let q = fq_of_words(words, qmin, qmax)?;
        quant::fake_quant_tensor_fwd(&q, x.host()?, y.host_mut()?);
        Ok(())
    }
    fn fake_quant_act_bwd(
        &self,
        words: &Storage,
        qmin: i32,
        qmax: i32,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        let q = fq_of_words(words, qmin, qmax)?;
        quant::fake_quant_tensor_bwd(&q, x.host()?, dy.host()?, dx.host_mut()?);
        Ok(())
    }
    fn fuses_relu_quant(&self) -> bool {
        true
    }
    fn relu_observe_act(
        &self,
        x: &Storage,
        momentum: f32,
        scheme: Scheme,
        words: &mut Storage,
    ) -> Result<()> {
        let x = x.host()?;
        if x.is_empty() {
            return Ok(());
        }
        // The range of `relu_fwd`'s output, element for element.
        let (lo, hi) = map::min_max_of(x, |v| v.max(0.0));
        observer_words::observe(words.host_mut()?, lo, hi, momentum, scheme)
    }
    fn relu_fake_quant_act_fwd(
        &self,
        words: &Storage,
        qmin: i32,
        qmax: i32,
        x: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        let q = fq_of_words(words, qmin, qmax)?;
        quant::relu_fake_quant_tensor_fwd(&q, x.host()?, y.host_mut()?);
        Ok(())
    }
    fn relu_fake_quant_act_bwd(
        &self,
        words: &Storage,
        qmin: i32,
        qmax: i32,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        let q = fq_of_words(words, qmin, qmax)?;
        quant::relu_fake_quant_tensor_bwd(&q, x.host()?, dy.host()?, dx.host_mut()?);
        Ok(())
    }
    fn fake_quant_channel_fwd(
        &self,
        _channels: usize,
        inner: usize,
        w: &Storage,
        y: &mut Storage,
        scales: &mut Storage,
    ) -> Result<()> {
        quant::fake_quant_channel_fwd(inner, w.host()?, y.host_mut()?, scales.host_mut()?);
        Ok(())
    }
    fn fake_quant_channel_bwd(
        &self,
        _channels: usize,
        inner: usize,
        w: &Storage,
        scales: &Storage,
        dy: &Storage,
        dw: &mut Storage,
    ) -> Result<()> {
        quant::fake_quant_channel_bwd(inner, w.host()?, scales.host()?, dy.host()?, dw.host_mut()?);
        Ok(())
    }
    fn channel_scale(
        &self,
        _outer: usize,
        c: usize,
        inner: usize,
        x: &Storage,
        s: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        map::channel_scale(c, inner, x.host()?, s.host()?, y.host_mut()?);
        Ok(())
    }
    fn channel_dot(
        &self,
        outer: usize,
        c: usize,
        inner: usize,
        a: &Storage,
        b: &Storage,
        out: &mut Storage,
    ) -> Result<()> {
        quant::channel_dot(outer, c, inner, a.host()?, b.host()?, out.host_mut()?);
        Ok(())
    }
    fn qconv2d(
        &self,
        g: &Conv2dGeom,
        q: &QConvArgs,
        x: &Storage,
        w_q: &Storage,
        bias_q: &Storage,
        multipliers: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        let bias: &[i32] = bytemuck::cast_slice(bias_q.host()?);
        quant::qconv2d(
            g,
            q,
            x.host()?,
            w_q.host()?,
            bias,
            multipliers.host()?,
            y.host_mut()?,
        )
    }
    fn qadd(&self, q: &QAddArgs, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()> {
        quant::qadd(q, a.host()?, b.host()?, y.host_mut()?);
        Ok(())
    }
    fn qgap(&self, q: &QGapArgs, x: &Storage, y: &mut Storage) -> Result<()> {
        quant::qgap(q, x.host()?, y.host_mut()?)
    }
}

/// The per-tensor fake quantization of the parameters in force in observer
/// words.
fn fq_of_words(words: &Storage, qmin: i32, qmax: i32) -> Result<FqTensor> {
    let q = observer_words::qparams(words.host()?);
    Ok(FqTensor {
        scale: q.scale,
        zero_point: q.zero_point,
        qmin,
        qmax,
    })
}
