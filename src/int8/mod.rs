//! The integer-exact form of a QAT network graph (S5-S9): the graph lowered
//! to int8 steps, each quantized layer's int8 weights, int32 biases,
//! requantization multipliers and activation scales built once from the
//! trained graph by the same functions export uses, and an eval forward that
//! computes every layer's exact integer accumulator on the graph's device.
//! Each activation it produces equals `(q - z) * s` with the very `q` the
//! int8 executor computes.

mod layers;

pub use layers::QConv;

use crate::backend::{Device, FqTensor, QAddArgs, QGapArgs};
use crate::graph::{Graph, NodeId, Op};
use crate::ops::{self, AvgPool2dParams, MaxPool2dParams};
use crate::quant::fake::{dequantize, quantize};
use crate::quant::params::{ACT_QMAX, ACT_QMIN};
use crate::quant::pool::{self, gap_multiplier};
use crate::quant::{AddRequant, QParams};
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

/// What one lowered node computes.
pub enum StepKind {
    /// The float input quantized with the input quantizer.
    Quantize,
    /// A quantized convolution (Conv+BN folded, or a plain conv).
    Conv(QConv),
    /// Exact residual add (S7), with a ReLU (`true`) folded into the clamp.
    Add(QAddArgs, bool),
    /// Max pooling on the quantized values (same parameters in and out).
    MaxPool(MaxPool2dParams),
    /// Integer average pooling (S6): exact window sums, one R1 per divisor.
    AvgPool(AvgPool2dParams),
    /// Channel concatenation (S12): each input requantized to the output's
    /// parameters (kept as is when they are equal), then joined.
    Concat,
    /// Integer-exact global average pooling (S6), `[N, C, 1, 1]` out.
    GlobalAvgPool,
    /// The flatten after global average pooling: the pooled `[N, C, 1, 1]`
    /// tensor is already what the classifier reads.
    Flatten,
    /// The classifier as a 1x1 convolution over `[N, C, 1, 1]`, reshaped to
    /// `[N, classes]`.
    Fc(QConv),
}

/// One graph node lowered to int8: its name (the node's), the steps it reads
/// (indices into [`Int8Net::steps`]), its computation and the quantization
/// of its output.
pub struct Step {
    pub name: String,
    pub inputs: Vec<usize>,
    pub kind: StepKind,
    pub out_q: QParams,
}

impl Step {
    /// Whether the step's output has quantization parameters of its own
    /// (max pooling and flattening share their input's).
    pub fn is_quantized(&self) -> bool {
        !matches!(self.kind, StepKind::MaxPool(_) | StepKind::Flatten)
    }
}

/// A QAT graph lowered to integer-exact steps, one per node, in graph order.
pub struct Int8Net {
    pub steps: Vec<Step>,
    pub num_classes: usize,
    pub device: Device,
}

impl Int8Net {
    /// Folds, quantizes and uploads every layer of a QAT graph.
    pub fn build(g: &Graph) -> Result<Self> {
        let dev = g.device().clone();
        let mut steps: Vec<Step> = Vec::new();
        // Whether each step's output is a pooled `[N, C, 1, 1]` tensor.
        let mut pooled: Vec<bool> = Vec::new();
        for node in g.nodes() {
            let inputs: Vec<NodeId> = node.inputs.clone();
            let in_q = |k: usize| -> Result<QParams> {
                match inputs.get(k) {
                    Some(&i) => Ok(steps[i].out_q),
                    None => bail!(Usage, "{} has no input {k}", node.name),
                }
            };
            let own_q = || node.quantizer()?.qparams();
            let (kind, out_q, is_pooled) = match &node.op {
                Op::Input { .. } => (StepKind::Quantize, own_q()?, false),
                Op::ConvBn(u) => {
                    let out_q = own_q()?;
                    let c = QConv::from_conv_bn(&node.name, u, in_q(0)?, out_q, &dev)?;
                    (StepKind::Conv(c), out_q, false)
                }
                Op::Conv { conv, act } => {
                    let out_q = own_q()?;
                    let c = QConv::from_conv(&node.name, conv, *act, in_q(0)?, out_q, &dev)?;
                    (StepKind::Conv(c), out_q, false)
                }
                Op::Add { relu } => {
                    let (a, b, c) = (in_q(0)?, in_q(1)?, own_q()?);
                    let rq = AddRequant::new(
                        a.scale,
                        a.zero_point,
                        b.scale,
                        b.zero_point,
                        c.scale,
                        c.zero_point,
                        *relu,
                    )?;
                    let args = QAddArgs {
                        s_a: a.scale,
                        s_b: b.scale,
                        s_c: c.scale,
                        rq,
                    };
                    (StepKind::Add(args, *relu), c, false)
                }
                Op::MaxPool(p) => (StepKind::MaxPool(*p), in_q(0)?, false),
                Op::AvgPool(p) => (StepKind::AvgPool(*p), own_q()?, false),
                Op::Concat => (StepKind::Concat, own_q()?, false),
                Op::GlobalAvgPool => (StepKind::GlobalAvgPool, own_q()?, true),
                Op::Flatten => {
                    if !pooled[inputs[0]] {
                        bail!(
                            Usage,
                            "{}: int8 lowering supports flatten only after global average pooling",
                            node.name
                        );
                    }
                    (StepKind::Flatten, in_q(0)?, true)
                }
                Op::Linear(l) => {
                    if !pooled[inputs[0]] {
                        bail!(
                            Usage,
                            "{}: int8 lowering supports a linear layer only on pooled features",
                            node.name
                        );
                    }
                    let out_q = own_q()?;
                    let c = QConv::from_linear(&node.name, l, in_q(0)?, out_q, &dev)?;
                    (StepKind::Fc(c), out_q, false)
                }
            };
            steps.push(Step {
                name: node.name.clone(),
                inputs,
                kind,
                out_q,
            });
            pooled.push(is_pooled);
        }
        if !matches!(steps.last().map(|s| &s.kind), Some(StepKind::Fc(_))) {
            bail!(
                Usage,
                "int8 lowering: the network must end in a linear classifier"
            );
        }
        Ok(Int8Net {
            steps,
            num_classes: g.num_classes(),
            device: dev,
        })
    }

    /// The quantization of the network input.
    pub fn input_q(&self) -> QParams {
        self.steps[0].out_q
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
        let n_steps = self.steps.len();
        let mut last_use: Vec<usize> = (0..n_steps).collect();
        for (i, s) in self.steps.iter().enumerate() {
            for &j in &s.inputs {
                last_use[j] = i;
            }
        }
        crate::autograd::no_grad(|| {
            let be = self.device.backend();
            let mut values: Vec<Option<Tensor>> = vec![None; n_steps];
            for (i, step) in self.steps.iter().enumerate() {
                let arg = |k: usize| -> Result<&Tensor> {
                    match step.inputs.get(k).and_then(|&j| values[j].as_ref()) {
                        Some(t) => Ok(t),
                        None => bail!(Usage, "{}: input {k} is missing", step.name),
                    }
                };
                let y = match &step.kind {
                    StepKind::Quantize => self.requantize(x, step.out_q)?,
                    StepKind::Conv(c) => c.forward(arg(0)?)?,
                    StepKind::Add(args, _) => {
                        let (a, b) = (arg(0)?, arg(1)?);
                        let out = Tensor::zeros(a.shape().clone(), a.device())?;
                        be.qadd(args, &a.storage(), &b.storage(), &mut out.storage_mut())?;
                        out
                    }
                    StepKind::MaxPool(p) => ops::max_pool2d(arg(0)?, *p)?,
                    StepKind::AvgPool(p) => {
                        let q_in = self.steps[step.inputs[0]].out_q;
                        self.avg_pool(arg(0)?, *p, q_in, step.out_q)?
                    }
                    StepKind::Concat => {
                        let mut parts = Vec::with_capacity(step.inputs.len());
                        for (k, &j) in step.inputs.iter().enumerate() {
                            let x = arg(k)?;
                            parts.push(if self.steps[j].out_q == step.out_q {
                                x.clone()
                            } else {
                                self.requantize(x, step.out_q)?
                            });
                        }
                        let refs: Vec<&Tensor> = parts.iter().collect();
                        ops::concat(&refs, 1)?
                    }
                    StepKind::GlobalAvgPool => {
                        let y = arg(0)?;
                        let (n, c, h, w) = y.shape().nchw()?;
                        let q_in = self.steps[step.inputs[0]].out_q;
                        let args = QGapArgs {
                            n,
                            c,
                            hw: h * w,
                            s_in: q_in.scale,
                            z_in: q_in.zero_point,
                            m: gap_multiplier(q_in.scale, step.out_q.scale, h * w),
                            s_out: step.out_q.scale,
                            z_out: step.out_q.zero_point,
                        };
                        let pooled = Tensor::zeros([n, c, 1, 1], &self.device)?;
                        be.qgap(&args, &y.storage(), &mut pooled.storage_mut())?;
                        pooled
                    }
                    StepKind::Flatten => arg(0)?.clone(),
                    StepKind::Fc(c) => {
                        let y = arg(0)?;
                        let n = y.dims()[0];
                        c.forward(y)?.reshape([n, self.num_classes])?
                    }
                };
                if step.is_quantized() {
                    if let Some(tr) = trace.as_deref_mut() {
                        tr.push(to_int8(&step.name, &y, step.out_q)?);
                    }
                }
                for &j in &step.inputs {
                    if last_use[j] == i {
                        values[j] = None;
                    }
                }
                values[i] = Some(y);
            }
            Ok(values[n_steps - 1].take().expect("the output was computed"))
        })
    }
}

impl Int8Net {
    /// `(q - z) * s` of `q = clamp(RNE(x / s) + z)` for float `x` with the
    /// parameters `q`: the input's QuantizeLinear (S8), and on a stored
    /// activation `(q_in - z_in) * s_in` exactly ONNX Runtime's QLinearConcat
    /// table entry (S12).
    fn requantize(&self, x: &Tensor, q: QParams) -> Result<Tensor> {
        let y = Tensor::zeros(x.shape().clone(), &self.device)?;
        let fq = FqTensor {
            scale: q.scale,
            zero_point: q.zero_point,
            qmin: ACT_QMIN,
            qmax: ACT_QMAX,
        };
        self.device
            .backend()
            .fake_quant_tensor_fwd(&fq, &x.storage(), &mut y.storage_mut())?;
        Ok(y)
    }

    /// Integer average pooling (S6) of an activation with parameters `q_in`.
    /// It runs on the host, with one download and one upload (no built-in
    /// architecture pools this way; imported networks may).
    fn avg_pool(
        &self,
        x: &Tensor,
        p: AvgPool2dParams,
        q_in: QParams,
        q_out: QParams,
    ) -> Result<Tensor> {
        let (n, c, h, w) = x.shape().nchw()?;
        let g = p.geom(n, c, h, w)?;
        let xq = to_int8("", x, q_in)?.values;
        let mut yq = vec![0i8; g.y_len()];
        pool::avg_pool2d(
            &g,
            &xq,
            q_in.scale,
            q_in.zero_point,
            q_out.scale,
            q_out.zero_point,
            &mut yq,
        )?;
        let y: Vec<f32> = yq
            .iter()
            .map(|&v| dequantize(v as i32, q_out.scale, q_out.zero_point))
            .collect();
        Tensor::from_vec(y, [n, c, g.out_h(), g.out_w()], &self.device)
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
