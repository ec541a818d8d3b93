//! Post-training quantization (PTQ): an FP32 graph becomes a QAT graph whose
//! activation quantizers are set from calibration images and frozen. The
//! model runs its eval forward (batch norm with running statistics); every
//! quantized node's output is observed; the range of each comes from
//! [`crate::quant::calibrate`] (`minmax`, `percentile`, `mse`). Weights are
//! quantized per channel by abs-max as in training (S2), when the int8
//! model is built.

use crate::autograd::no_grad;
use crate::checkpoint::Checkpoint;
use crate::graph::Graph;
use crate::nn::{ActQuantState, Mode};
use crate::quant::calibrate::{Histogram, Method};
use crate::quant::params::Scheme;
use crate::saved_model::{checkpoint_extra, ModelInfo};
use crate::tensor::Tensor;
use crate::{bail, Result};

/// The batches to calibrate on; called once per pass (two for histogram
/// methods).
pub type Batches<'a> = &'a dyn Fn() -> Box<dyn Iterator<Item = Result<Tensor>> + 'a>;

/// One quantizer's calibration: the observed extremes and the range set.
#[derive(Clone, Debug, PartialEq)]
pub struct Range {
    pub name: String,
    pub observed: (f32, f32),
    pub chosen: (f32, f32),
}

/// Quantizes the FP32 graph `g` (observer momentum `momentum`, used only
/// if it is trained later) under `scheme` and sets every activation
/// quantizer from the batches by `method`, frozen. Returns the ranges in
/// graph order.
pub fn calibrate(
    g: &mut Graph,
    batches: Batches,
    method: Method,
    momentum: f32,
    scheme: Scheme,
) -> Result<Vec<Range>> {
    if g.is_quantized() {
        bail!(
            Usage,
            "the model is already quantized (a QAT checkpoint): calibrate an FP32 checkpoint"
        );
    }
    let quantized: Vec<bool> = g.nodes().iter().map(|n| n.op.is_quantized()).collect();
    let n = quantized.len();
    let mut seen = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    let mut images = 0usize;
    no_grad(|| -> Result<()> {
        for x in batches() {
            let x = x?;
            images += x.dims()[0];
            g.forward_observed(&x, Mode::Eval, &mut |i, t| {
                if quantized[i] {
                    let (lo, hi) = t.device().backend().min_max(&t.storage())?;
                    seen[i] = (seen[i].0.min(lo), seen[i].1.max(hi));
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    if images == 0 {
        bail!(Usage, "no calibration images");
    }
    let mut chosen = seen.clone();
    if method != Method::MinMax {
        let mut hists: Vec<Option<Histogram>> = Vec::with_capacity(n);
        for (i, node) in g.nodes().iter().enumerate() {
            hists.push(if quantized[i] {
                let h = Histogram::new(seen[i].0, seen[i].1)
                    .map_err(|e| crate::Error::Numerical(format!("{}: {e}", node.name)))?;
                Some(h)
            } else {
                None
            });
        }
        no_grad(|| -> Result<()> {
            for x in batches() {
                g.forward_observed(&x?, Mode::Eval, &mut |i, t| {
                    if let Some(h) = hists[i].as_mut() {
                        h.add(&t.to_vec()?);
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        for (i, h) in hists.iter().enumerate() {
            if let Some(h) = h {
                chosen[i] = h.range(method, scheme)?;
            }
        }
    }
    g.quantize(momentum, scheme);
    let mut out = Vec::new();
    for (i, node) in g.nodes().iter().enumerate() {
        let Some(q) = &node.quant else { continue };
        let (lo, hi) = chosen[i];
        if !(lo.is_finite() && hi.is_finite()) {
            bail!(
                Numerical,
                "{}: calibration range [{lo}, {hi}] is not finite: the model's activations overflow \
or are NaN on the calibration images",
                node.name
            );
        }
        q.load(&ActQuantState {
            min: lo,
            max: hi,
            momentum,
            initialized: true,
            frozen: None,
        });
        q.freeze()?;
        out.push(Range {
            name: node.name.clone(),
            observed: seen[i],
            chosen: (lo, hi),
        });
    }
    Ok(out)
}

/// [`calibrate`] on the first `images` training images of `source` in epoch
/// 0's order (whole batches: up to a batch more), as tensors on `device`.
/// Returns the ranges and the number of images used.
pub fn calibrate_on_source(
    g: &mut Graph,
    source: &dyn crate::data::DataSource,
    images: usize,
    method: Method,
    momentum: f32,
    scheme: Scheme,
    device: &crate::backend::Device,
) -> Result<(Vec<Range>, usize)> {
    let first = source.train_batches(0, 0).next();
    let per_batch = first.as_ref().map_or(1, |b| b.n.max(1));
    drop(first);
    let batches = images.div_ceil(per_batch).max(1);
    let used = std::cell::Cell::new(0usize);
    let make = || -> Box<dyn Iterator<Item = Result<Tensor>> + '_> {
        used.set(0);
        Box::new(source.train_batches(0, 0).take(batches).map(|b| {
            used.set(used.get() + b.n);
            let shape = b.shape();
            Tensor::from_vec(b.images, shape, device)
        }))
    };
    let ranges = calibrate(g, &make, method, momentum, scheme)?;
    Ok((ranges, used.get()))
}

/// The checkpoint of a calibrated graph: weights, frozen quantizers, the
/// model information, and `config` recording the calibration (with its
/// `qat` entry, which makes it a QAT checkpoint for `eval`, `export` and
/// `verify`).
pub fn checkpoint(
    g: &Graph,
    info: &ModelInfo,
    method: Method,
    images: usize,
    momentum: f32,
    source: &str,
) -> Result<Checkpoint> {
    let mut ck = Checkpoint::from_module(g)?;
    let config = serde_json::json!({
        "source": "calibrate",
        "calibrated_from": source,
        "method": method.name(),
        "images": images,
        "qat": {
            "observer_momentum": momentum,
            "scheme": g.scheme(),
            "observers_frozen": true,
            "bn_frozen": true
        },
    });
    ck.extra = checkpoint_extra(g, info, config)?;
    Ok(ck)
}
