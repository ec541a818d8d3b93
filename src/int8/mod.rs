//! The integer-exact form of a QAT ResNet (S5-S9): every quantized layer's
//! int8 weights, int32 biases, requantization multipliers and activation
//! scales, built once from the trained model by the same functions export
//! uses, and an eval forward that computes every layer's exact integer
//! accumulator on the model's device. Each activation it produces equals
//! `(q - z) * s` with the very `q` the int8 executor computes.

mod layers;

pub use layers::{QBlock, QConv};

use crate::backend::{Device, FqTensor, QGapArgs};
use crate::models::ResNet;
use crate::nn::ActQuant;
use crate::ops::{self, MaxPool2dParams};
use crate::quant::fake::quantize;
use crate::quant::params::{ACT_QMAX, ACT_QMIN};
use crate::quant::pool::gap_multiplier;
use crate::quant::QParams;
use crate::tensor::Tensor;
use crate::{bail, Result};

/// One quantized tensor of a forward pass, for layer-by-layer comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub q: QParams,
    pub values: Vec<i8>,
}

pub struct Int8ResNet {
    pub input_q: QParams,
    pub stem: QConv,
    pub stem_pool: Option<MaxPool2dParams>,
    pub blocks: Vec<QBlock>,
    pub gap_q: QParams,
    /// The classifier as a 1x1 convolution over `[N, C, 1, 1]`.
    pub fc: QConv,
    pub num_classes: usize,
    pub device: Device,
}

pub(crate) fn qparams_of(q: &Option<ActQuant>, what: &str) -> Result<QParams> {
    match q {
        Some(q) => q.qparams(),
        None => bail!(
            Usage,
            "{what} has no activation quantizer: the model is not a QAT model"
        ),
    }
}

impl Int8ResNet {
    /// Folds, quantizes and uploads every layer of a QAT model.
    pub fn build(m: &ResNet) -> Result<Self> {
        let dev = m.fc.weight.device().clone();
        let input_q = qparams_of(&m.input_quant, "the input")?;
        let stem = QConv::from_conv_bn("stem", &m.stem, input_q, &dev)?;
        let mut x_q = stem.out_q;
        let mut blocks = Vec::new();
        for (s, stage) in m.stages.iter().enumerate() {
            for (i, b) in stage.iter().enumerate() {
                let qb = QBlock::build(&format!("layer{}.{i}", s + 1), b, x_q, &dev)?;
                x_q = qb.add_q;
                blocks.push(qb);
            }
        }
        let gap_q = qparams_of(&m.gap_quant, "the global average pool")?;
        let fc = QConv::from_linear(
            "fc",
            &m.fc,
            gap_q,
            qparams_of(&m.fc_quant, "the classifier")?,
            &dev,
        )?;
        Ok(Int8ResNet {
            input_q,
            stem,
            stem_pool: m.stem_pool,
            blocks,
            gap_q,
            num_classes: m.fc.weight.dims()[0],
            fc,
            device: dev,
        })
    }

    /// Float logits `(q - z) * s` of the int8 logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, None)
    }

    /// The forward pass, also returning every quantized tensor (input, each
    /// conv, each residual add, pooled features, logits) as int8.
    pub fn forward_trace(&self, x: &Tensor) -> Result<(Tensor, Vec<LayerOutput>)> {
        let mut trace = Vec::new();
        let y = self.run(x, Some(&mut trace))?;
        Ok((y, trace))
    }

    fn run(&self, x: &Tensor, mut trace: Option<&mut Vec<LayerOutput>>) -> Result<Tensor> {
        if !x.device().same(&self.device) {
            bail!(
                DeviceMismatch,
                "input on {} but model on {}",
                x.device().backend().name(),
                self.device.backend().name()
            );
        }
        let mut record = |name: &str, t: &Tensor, q: QParams| -> Result<()> {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(to_int8(name, t, q)?);
            }
            Ok(())
        };
        crate::autograd::no_grad(|| {
            let be = self.device.backend();
            let xq = Tensor::zeros(x.shape().clone(), &self.device)?;
            let fq = FqTensor {
                scale: self.input_q.scale,
                zero_point: self.input_q.zero_point,
                qmin: ACT_QMIN,
                qmax: ACT_QMAX,
            };
            be.fake_quant_tensor_fwd(&fq, &x.storage(), &mut xq.storage_mut())?;
            record("input", &xq, self.input_q)?;
            let mut y = self.stem.forward(&xq)?;
            record(&self.stem.name, &y, self.stem.out_q)?;
            if let Some(p) = self.stem_pool {
                y = ops::max_pool2d(&y, p)?;
            }
            for b in &self.blocks {
                y = b.forward(&y, &mut record)?;
            }
            let (n, c, h, w) = y.shape().nchw()?;
            let q_in = self.blocks.last().map_or(self.stem.out_q, |b| b.add_q);
            let args = QGapArgs {
                n,
                c,
                hw: h * w,
                s_in: q_in.scale,
                z_in: q_in.zero_point,
                m: gap_multiplier(q_in.scale, self.gap_q.scale, h * w),
                s_out: self.gap_q.scale,
                z_out: self.gap_q.zero_point,
            };
            let pooled = Tensor::zeros([n, c, 1, 1], &self.device)?;
            be.qgap(&args, &y.storage(), &mut pooled.storage_mut())?;
            record("gap", &pooled, self.gap_q)?;
            let logits = self.fc.forward(&pooled)?.reshape([n, self.num_classes])?;
            record(&self.fc.name, &logits, self.fc.out_q)?;
            Ok(logits)
        })
    }
}

/// Recovers the int8 values of an activation stored as `(q - z) * s`.
pub fn to_int8(name: &str, t: &Tensor, q: QParams) -> Result<LayerOutput> {
    let values = t
        .to_vec()?
        .iter()
        .map(|&v| quantize(v, q.scale, q.zero_point, ACT_QMIN, ACT_QMAX) as i8)
        .collect();
    Ok(LayerOutput {
        name: name.to_string(),
        shape: t.dims().to_vec(),
        q,
        values,
    })
}
