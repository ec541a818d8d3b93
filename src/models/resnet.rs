//! ResNets (He et al. 2016) built from [`ConvBn`] units: a small variant for
//! 28x28 inputs and ResNet-18/34/50 with the ImageNet stem. Parameter names
//! follow torchvision's layout (`layer1.0.conv1...`), with each conv and its
//! batch norm grouped under one `ConvBn` name.

use crate::backend::Device;
use crate::nn::{join, ActQuant, ActQuantState, ConvBn, Linear, Mode, Module, Named, QatFlags};
use crate::ops::{self, MaxPool2dParams};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{bail, Result};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// 3x3 stem, three stages of two basic blocks (16, 32, 64 channels): for
    /// 28x28 images such as Fashion-MNIST.
    Small,
    ResNet18,
    ResNet34,
    ResNet50,
}

impl FromStr for Arch {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "small" | "resnet-small" => Arch::Small,
            "resnet18" => Arch::ResNet18,
            "resnet34" => Arch::ResNet34,
            "resnet50" => Arch::ResNet50,
            _ => bail!(
                Usage,
                "unknown architecture '{s}': use small, resnet18, resnet34 or resnet50"
            ),
        })
    }
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Small => "small",
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
        }
    }
    /// (bottleneck?, blocks per stage, stage widths, stem).
    fn layout(self) -> (bool, &'static [usize], &'static [usize]) {
        match self {
            Arch::Small => (false, &[2, 2, 2], &[16, 32, 64]),
            Arch::ResNet18 => (false, &[2, 2, 2, 2], &[64, 128, 256, 512]),
            Arch::ResNet34 => (false, &[3, 4, 6, 3], &[64, 128, 256, 512]),
            Arch::ResNet50 => (true, &[3, 4, 6, 3], &[64, 128, 256, 512]),
        }
    }
}

/// A residual block: a main path of ConvBn units (the last without ReLU), an
/// optional 1x1 projection shortcut, then add and ReLU.
pub struct Block {
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
    /// Output quantizer of add + ReLU (S7), in QAT models.
    pub add_quant: Option<ActQuant>,
}

impl Block {
    fn basic(
        rng: &mut Rng,
        dev: &Device,
        c_in: usize,
        c_out: usize,
        stride: usize,
    ) -> Result<Self> {
        let convs = vec![
            ConvBn::new(rng, dev, c_in, c_out, 3, stride, 1, true)?,
            ConvBn::new(rng, dev, c_out, c_out, 3, 1, 1, false)?,
        ];
        let downsample = Self::projection(rng, dev, c_in, c_out, stride)?;
        Ok(Block {
            convs,
            downsample,
            add_quant: None,
        })
    }

    /// The 1x1 projection shortcut, when the block changes shape.
    fn projection(
        rng: &mut Rng,
        dev: &Device,
        c_in: usize,
        c_out: usize,
        stride: usize,
    ) -> Result<Option<ConvBn>> {
        if stride == 1 && c_in == c_out {
            return Ok(None);
        }
        Ok(Some(ConvBn::new(
            rng, dev, c_in, c_out, 1, stride, 0, false,
        )?))
    }

    /// torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv.
    fn bottleneck(
        rng: &mut Rng,
        dev: &Device,
        c_in: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let c_out = width * 4;
        let convs = vec![
            ConvBn::new(rng, dev, c_in, width, 1, 1, 0, true)?,
            ConvBn::new(rng, dev, width, width, 3, stride, 1, true)?,
            ConvBn::new(rng, dev, width, c_out, 1, 1, 0, false)?,
        ];
        let downsample = Self::projection(rng, dev, c_in, c_out, stride)?;
        Ok(Block {
            convs,
            downsample,
            add_quant: None,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.convs
            .last()
            .map(|c| c.conv.out_channels())
            .unwrap_or(0)
    }
}

impl Block {
    fn forward_qat(&self, x: &Tensor, mode: Mode, flags: QatFlags) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward_qat(&y, mode, flags)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward_qat(x, mode, flags)?,
            None => x.clone(),
        };
        let sum = ops::relu(&ops::add(&y, &shortcut)?)?;
        match &self.add_quant {
            Some(q) => q.forward(&sum, mode, flags),
            None => Ok(sum),
        }
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward(&y, mode)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, mode)?,
            None => x.clone(),
        };
        ops::relu(&ops::add(&y, &shortcut)?)
    }
    fn collect(&self, prefix: &str, out: &mut Vec<Named>) {
        for (i, c) in self.convs.iter().enumerate() {
            c.collect(&join(prefix, &format!("conv{}", i + 1)), out);
        }
        if let Some(d) = &self.downsample {
            d.collect(&join(prefix, "downsample"), out);
        }
    }
}

pub struct ResNet {
    pub arch: Arch,
    pub stem: ConvBn,
    /// Max pooling after the stem (ImageNet variants only).
    pub stem_pool: Option<MaxPool2dParams>,
    pub stages: Vec<Vec<Block>>,
    pub fc: Linear,
    /// Quantizers of the network input, the pooled features and the logits
    /// (QAT models only; see [`ResNet::quantize`]).
    pub input_quant: Option<ActQuant>,
    pub gap_quant: Option<ActQuant>,
    pub fc_quant: Option<ActQuant>,
    flags: Mutex<QatFlags>,
}

impl ResNet {
    pub fn new(
        arch: Arch,
        in_channels: usize,
        num_classes: usize,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        if in_channels == 0 || num_classes == 0 {
            bail!(
                Usage,
                "a ResNet needs at least one input channel and one class"
            );
        }
        let mut rng = Rng::new(seed);
        let rng = &mut rng;
        let (bottleneck, blocks, widths) = arch.layout();
        let (stem, stem_pool) = if arch == Arch::Small {
            (
                ConvBn::new(rng, device, in_channels, widths[0], 3, 1, 1, true)?,
                None,
            )
        } else {
            (
                ConvBn::new(rng, device, in_channels, 64, 7, 2, 3, true)?,
                Some(MaxPool2dParams::new(3, 2, 1)),
            )
        };
        let mut c = stem.conv.out_channels();
        let mut stages = Vec::new();
        for (s, (&n, &width)) in blocks.iter().zip(widths).enumerate() {
            let mut stage = Vec::new();
            for b in 0..n {
                let stride = if b == 0 && s > 0 { 2 } else { 1 };
                let block = if bottleneck {
                    Block::bottleneck(rng, device, c, width, stride)?
                } else {
                    Block::basic(rng, device, c, width, stride)?
                };
                c = block.out_channels();
                stage.push(block);
            }
            stages.push(stage);
        }
        let fc = Linear::new(rng, device, c, num_classes, true)?;
        Ok(ResNet {
            arch,
            stem,
            stem_pool,
            stages,
            fc,
            input_quant: None,
            gap_quant: None,
            fc_quant: None,
            flags: Mutex::new(QatFlags::default()),
        })
    }

    /// Attaches activation quantizers everywhere the int8 graph has a
    /// quantized tensor (input, every ConvBn output, every residual add,
    /// pooled features, logits), making this a QAT model. `momentum` is the
    /// observers' EMA weight.
    pub fn quantize(&mut self, momentum: f32) {
        self.input_quant = Some(ActQuant::new(momentum));
        self.gap_quant = Some(ActQuant::new(momentum));
        self.fc_quant = Some(ActQuant::new(momentum));
        self.stem.out_quant = Some(ActQuant::new(momentum));
        for b in self.stages.iter_mut().flatten() {
            for c in b.convs.iter_mut().chain(b.downsample.iter_mut()) {
                c.out_quant = Some(ActQuant::new(momentum));
            }
            b.add_quant = Some(ActQuant::new(momentum));
        }
    }

    pub fn is_quantized(&self) -> bool {
        self.input_quant.is_some()
    }

    pub fn qat_flags(&self) -> QatFlags {
        *self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the schedule flags used by the next training forwards.
    pub fn set_qat_flags(&self, f: QatFlags) {
        *self.flags.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// Every activation quantizer with its name, in forward order.
    pub fn quantizers(&self) -> Vec<(String, &ActQuant)> {
        fn push<'a>(v: &mut Vec<(String, &'a ActQuant)>, name: String, q: &'a Option<ActQuant>) {
            if let Some(q) = q {
                v.push((name, q));
            }
        }
        let mut v = Vec::new();
        push(&mut v, "input".into(), &self.input_quant);
        push(&mut v, "stem".into(), &self.stem.out_quant);
        for (s, stage) in self.stages.iter().enumerate() {
            for (i, b) in stage.iter().enumerate() {
                let p = format!("layer{}.{i}", s + 1);
                for (j, c) in b.convs.iter().enumerate() {
                    push(&mut v, format!("{p}.conv{}", j + 1), &c.out_quant);
                }
                if let Some(d) = &b.downsample {
                    push(&mut v, format!("{p}.downsample"), &d.out_quant);
                }
                push(&mut v, format!("{p}.add"), &b.add_quant);
            }
        }
        push(&mut v, "gap".into(), &self.gap_quant);
        push(&mut v, "fc".into(), &self.fc_quant);
        v
    }

    /// Observer states by quantizer name (for checkpoints).
    pub fn save_quantizers(&self) -> BTreeMap<String, ActQuantState> {
        self.quantizers()
            .into_iter()
            .map(|(n, q)| (n, q.save()))
            .collect()
    }

    /// Restores observer states; every quantizer must be present.
    pub fn load_quantizers(&self, states: &BTreeMap<String, ActQuantState>) -> Result<()> {
        for (name, q) in self.quantizers() {
            match states.get(&name) {
                Some(s) => q.load(s),
                None => bail!(Data, "checkpoint has no state for quantizer '{name}'"),
            }
        }
        Ok(())
    }

    /// Freezes every activation quantizer (S2).
    pub fn freeze_quantizers(&self) -> Result<()> {
        self.quantizers().iter().try_for_each(|(_, q)| q.freeze())
    }

    fn forward_qat(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let flags = self.qat_flags();
        let quant = |q: &Option<ActQuant>, t: &Tensor| match q {
            Some(q) => q.forward(t, mode, flags),
            None => Ok(t.clone()),
        };
        let x = quant(&self.input_quant, x)?;
        let mut y = self.stem.forward_qat(&x, mode, flags)?;
        if let Some(p) = self.stem_pool {
            y = ops::max_pool2d(&y, p)?;
        }
        for b in self.stages.iter().flatten() {
            y = b.forward_qat(&y, mode, flags)?;
        }
        let pooled = quant(&self.gap_quant, &ops::global_avg_pool(&y)?)?;
        let (w_q, _) = ops::fake_quant_channel(&self.fc.weight)?;
        let logits = ops::linear(&pooled, &w_q, self.fc.bias.as_ref())?;
        quant(&self.fc_quant, &logits)
    }

    /// Every ConvBn unit in forward order.
    pub fn conv_units(&self) -> Vec<&ConvBn> {
        let mut v = vec![&self.stem];
        for b in self.stages.iter().flatten() {
            v.extend(b.convs.iter());
            v.extend(b.downsample.iter());
        }
        v
    }
}

impl Module for ResNet {
    /// FP32 models: the float forward. QAT models: the fake-quantized
    /// training forward in `Train` mode, and the integer-exact forward (S9)
    /// in `Eval` mode.
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if self.is_quantized() {
            return match mode {
                Mode::Train => self.forward_qat(x, mode),
                Mode::Eval => crate::int8::Int8ResNet::build(self)?.forward(x),
            };
        }
        let mut y = self.stem.forward(x, mode)?;
        if let Some(p) = self.stem_pool {
            y = ops::max_pool2d(&y, p)?;
        }
        for b in self.stages.iter().flatten() {
            y = b.forward(&y, mode)?;
        }
        let pooled = ops::global_avg_pool(&y)?;
        self.fc.forward(&pooled, mode)
    }
    fn collect(&self, prefix: &str, out: &mut Vec<Named>) {
        self.stem.collect(&join(prefix, "stem"), out);
        for (s, stage) in self.stages.iter().enumerate() {
            for (i, b) in stage.iter().enumerate() {
                b.collect(&join(prefix, &format!("layer{}.{i}", s + 1)), out);
            }
        }
        self.fc.collect(&join(prefix, "fc"), out);
    }
}
