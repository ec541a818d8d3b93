//! The verification harness: the QAT model's integer-exact eval forward
//! ([`Int8Net::forward_trace`], on any device) and the int8 executor run
//! on the same images, and every layer's int8 tensor is compared element by
//! element (spec S10.1). Layers are matched by name: the exporter names each
//! int8 activation after the trace's layer names.

use crate::accuracy::Accuracy;
use crate::checkpoint::Checkpoint;
use crate::executor::{ExecTensor, Executor};
use crate::int8::Int8Net;
use crate::tensor::Tensor;
use crate::{bail, Device, Result};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

/// Comparison of one layer over all images.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStats {
    pub name: String,
    pub elements: usize,
    pub mismatches: usize,
    pub max_abs_diff: i32,
    /// The executor produced no tensor of this name (or of another size).
    pub missing: bool,
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub layers: Vec<LayerStats>,
    pub images: usize,
    /// Images with a label (top-1 is counted over these; a folder of
    /// unlabeled images gives the per-layer comparison only).
    pub labeled: usize,
    pub model_correct: usize,
    pub executor_correct: usize,
    /// Float logits (after DequantizeLinear) that differ in any bit.
    pub logit_mismatches: usize,
}

impl VerifyReport {
    pub fn total_mismatches(&self) -> usize {
        self.layers.iter().map(|l| l.mismatches).sum::<usize>() + self.logit_mismatches
    }

    /// Zero mismatches, every layer present, at least one image.
    pub fn passed(&self) -> bool {
        self.images > 0 && self.total_mismatches() == 0 && self.layers.iter().all(|l| !l.missing)
    }

    pub fn top1_model(&self) -> f64 {
        100.0 * self.model_correct as f64 / self.labeled.max(1) as f64
    }

    pub fn top1_executor(&self) -> f64 {
        100.0 * self.executor_correct as f64 / self.labeled.max(1) as f64
    }

    /// The per-layer table and the accuracy lines.
    pub fn table(&self) -> String {
        let w = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(5)
            .max(16);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<w$} {:>12} {:>11} {:>10}",
            "layer", "elements", "mismatches", "max|diff|"
        );
        for l in &self.layers {
            let diff = if l.missing {
                "missing".to_string()
            } else {
                l.max_abs_diff.to_string()
            };
            let _ = writeln!(
                s,
                "{:<w$} {:>12} {:>11} {:>10}",
                l.name, l.elements, l.mismatches, diff
            );
        }
        let _ = writeln!(
            s,
            "{:<w$} {:>12} {:>11}",
            "logits (float)",
            self.layers.last().map_or(0, |l| l.elements),
            self.logit_mismatches
        );
        if self.labeled == 0 {
            let _ = writeln!(
                s,
                "images: {} (unlabeled: per-layer comparison only, no top-1)",
                self.images
            );
        } else {
            let _ = writeln!(
                s,
                "images: {}, top-1: QAT model (integer-exact) {:.2}%, executor {:.2}%",
                self.images,
                self.top1_model(),
                self.top1_executor()
            );
        }
        let _ = write!(
            s,
            "{}",
            if self.passed() {
                "PASS: every layer identical"
            } else {
                "FAIL: the executor differs from the QAT model"
            }
        );
        s
    }
}

/// Accumulates the comparison over batches.
pub struct Verifier<'a> {
    model: &'a Int8Net,
    exec: &'a Executor,
    report: VerifyReport,
}

impl<'a> Verifier<'a> {
    pub fn new(model: &'a Int8Net, exec: &'a Executor) -> Self {
        Verifier {
            model,
            exec,
            report: VerifyReport::default(),
        }
    }

    /// Runs both on `n` normalized NCHW images with their labels.
    pub fn batch(&mut self, images: &[f32], labels: &[u32], n: usize) -> Result<()> {
        if labels.len() != n {
            bail!(Shape, "{} labels for {n} images", labels.len());
        }
        self.compare(images, Some(labels), n)
    }

    /// Runs both on `n` normalized NCHW images without labels: the per-layer
    /// comparison only.
    pub fn batch_unlabeled(&mut self, images: &[f32], n: usize) -> Result<()> {
        self.compare(images, None, n)
    }

    fn compare(&mut self, images: &[f32], labels: Option<&[u32]>, n: usize) -> Result<()> {
        if n == 0 || !images.len().is_multiple_of(n) {
            bail!(Shape, "{} values are not {n} images", images.len());
        }
        let dims = self.exec.input_dims().to_vec();
        let mut shape = vec![n];
        shape.extend_from_slice(&dims);
        let x = Tensor::from_vec(images.to_vec(), shape, &self.model.device)?;
        let (logits_m, trace) = self.model.forward_trace(&x)?;
        let logits_m = logits_m.to_vec()?;
        let (logits_e, tensors) = self.exec.run_trace(images, n)?;
        let by_name: HashMap<&str, &ExecTensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let r = &mut self.report;
        if r.layers.is_empty() {
            r.layers = trace
                .iter()
                .map(|l| LayerStats {
                    name: l.name.clone(),
                    elements: 0,
                    mismatches: 0,
                    max_abs_diff: 0,
                    missing: false,
                })
                .collect();
        }
        if r.layers.len() != trace.len() {
            bail!(Usage, "the model's trace changed between batches");
        }
        for (st, l) in r.layers.iter_mut().zip(&trace) {
            st.elements += l.values.len();
            match by_name.get(l.name.as_str()) {
                Some(t) if t.values.len() == l.values.len() => {
                    for (&a, &b) in l.values.iter().zip(&t.values) {
                        let d = (a as i32 - b as i32).abs();
                        if d != 0 {
                            st.mismatches += 1;
                            st.max_abs_diff = st.max_abs_diff.max(d);
                        }
                    }
                }
                _ => {
                    st.missing = true;
                    st.mismatches += l.values.len();
                }
            }
        }
        if logits_m.len() != logits_e.len() {
            bail!(
                Shape,
                "the model gives {} logits and the executor {}",
                logits_m.len(),
                logits_e.len()
            );
        }
        r.logit_mismatches += logits_m
            .iter()
            .zip(&logits_e)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        // Top-1 as `qat eval` counts it (ties by class index).
        if let Some(labels) = labels {
            let (mut acc_m, mut acc_e) = (Accuracy::default(), Accuracy::default());
            acc_m.add(&logits_m, labels);
            acc_e.add(&logits_e, labels);
            r.model_correct += acc_m.top1;
            r.executor_correct += acc_e.top1;
            r.labeled += n;
        }
        r.images += n;
        Ok(())
    }

    pub fn finish(self) -> VerifyReport {
        self.report
    }
}

/// `qat verify`: the checkpoint's QAT model on `device` against the ONNX
/// file in the executor, on the first `images` test images of `data`
/// (Fashion-MNIST, `imagenet:ROOT`'s validation split, or the files of
/// `images:DIR`, prepared for the model's input).
pub fn verify_checkpoint(
    checkpoint: &Path,
    onnx: &Path,
    data: &Path,
    images: usize,
    batch_size: usize,
    device: &Device,
) -> Result<VerifyReport> {
    if images == 0 {
        bail!(Usage, "--images must be at least 1");
    }
    let ck = Checkpoint::load(checkpoint)?;
    let (model, info) = crate::saved_model::load(&ck, device)?;
    if !model.is_quantized() {
        bail!(
            Usage,
            "{} is an FP32 checkpoint: verify needs a QAT model",
            checkpoint.display()
        );
    }
    let int8 = Int8Net::build(&model)?;
    let exec = Executor::load(onnx)?;
    let mut v = Verifier::new(&int8, &exec);
    crate::data::test_batches::for_each(data, &info, Some(images), batch_size, |b| {
        match b.labels {
            Some(labels) => v.batch(b.images, labels, b.n),
            None => v.batch_unlabeled(b.images, b.n),
        }
    })?;
    Ok(v.finish())
}
