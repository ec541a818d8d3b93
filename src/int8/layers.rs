//! Integer-exact conv / FC layers and residual blocks.

use super::qparams_of;
use crate::backend::{Conv2dGeom, Device, QAddArgs, QConvArgs, Storage};
use crate::models::resnet::Block;
use crate::nn::{ConvBn, Linear};
use crate::ops::Conv2dParams;
use crate::quant::fold::fold_conv_bn;
use crate::quant::params::weight_scales;
use crate::quant::requant::{output_bounds, quantize_bias_slice, requant_multiplier};
use crate::quant::{fake::quantize_per_channel, AddRequant, QParams};
use crate::tensor::Tensor;
use crate::Result;

/// A quantized convolution (or FC as a 1x1 convolution) with everything the
/// int8 graph stores for it.
pub struct QConv {
    pub name: String,
    pub params: Conv2dParams,
    /// OIHW.
    pub w_shape: [usize; 4],
    pub w_q: Vec<i8>,
    pub s_w: Vec<f32>,
    pub bias_q: Vec<i32>,
    pub multipliers: Vec<f32>,
    pub in_q: QParams,
    pub out_q: QParams,
    pub relu: bool,
    w_dev: Tensor,
    bias_dev: Tensor,
    mult_dev: Tensor,
}

impl QConv {
    /// Quantizes folded float weights and bias (S5).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        w_fold: &[f32],
        w_shape: [usize; 4],
        b_fold: &[f32],
        params: Conv2dParams,
        in_q: QParams,
        out_q: QParams,
        relu: bool,
        dev: &Device,
    ) -> Result<Self> {
        let c_out = w_shape[0];
        let s_w = weight_scales(w_fold, c_out)?;
        let mut w_q = vec![0i8; w_fold.len()];
        quantize_per_channel(w_fold, &s_w, &mut w_q)?;
        let bias_q = quantize_bias_slice(b_fold, in_q.scale, &s_w)?;
        let multipliers: Vec<f32> = s_w
            .iter()
            .map(|&s| requant_multiplier(in_q.scale, s, out_q.scale))
            .collect();
        let w_f: Vec<f32> = w_q.iter().map(|&v| v as f32).collect();
        Ok(QConv {
            name: name.to_string(),
            params,
            w_shape,
            w_dev: Tensor::from_vec(w_f, w_shape, dev)?,
            bias_dev: Tensor::from_vec(Storage::from_i32(&bias_q), [c_out], dev)?,
            mult_dev: Tensor::from_vec(multipliers.clone(), [c_out], dev)?,
            w_q,
            s_w,
            bias_q,
            multipliers,
            in_q,
            out_q,
            relu,
        })
    }

    /// Folds a ConvBn unit with its running statistics (S4) and quantizes it.
    pub fn from_conv_bn(name: &str, u: &ConvBn, in_q: QParams, dev: &Device) -> Result<Self> {
        let out_q = qparams_of(&u.out_quant, name)?;
        let bn = &u.bn;
        let b_conv = u.conv.bias.as_ref().map(|b| b.to_vec()).transpose()?;
        let (w_fold, b_fold) = fold_conv_bn(
            &u.conv.weight.to_vec()?,
            b_conv.as_deref(),
            &bn.weight.to_vec()?,
            &bn.bias.to_vec()?,
            &bn.running_mean.to_vec()?,
            &bn.running_var.to_vec()?,
            bn.eps,
        );
        let d = u.conv.weight.dims();
        QConv::new(
            name,
            &w_fold,
            [d[0], d[1], d[2], d[3]],
            &b_fold,
            u.conv.params,
            in_q,
            out_q,
            u.relu,
            dev,
        )
    }

    /// The classifier: `[out, in]` weights as a 1x1 convolution.
    pub fn from_linear(
        name: &str,
        l: &Linear,
        in_q: QParams,
        out_q: QParams,
        dev: &Device,
    ) -> Result<Self> {
        let d = l.weight.dims();
        let bias = match &l.bias {
            Some(b) => b.to_vec()?,
            None => vec![0.0; d[0]],
        };
        QConv::new(
            name,
            &l.weight.to_vec()?,
            [d[0], d[1], 1, 1],
            &bias,
            Conv2dParams::default(),
            in_q,
            out_q,
            false,
            dev,
        )
    }

    pub fn geom(&self, x: &Tensor) -> Result<Conv2dGeom> {
        self.params.geom(x, &self.w_dev)
    }

    /// `x` holds `(q_x - z_x) * s_x`; returns `(q_y - z_y) * s_y`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.geom(x)?;
        let (lo, hi) = output_bounds(self.out_q.zero_point, self.relu);
        let args = QConvArgs {
            s_x: self.in_q.scale,
            z_x: self.in_q.zero_point,
            s_y: self.out_q.scale,
            z_y: self.out_q.zero_point,
            lo,
            hi,
        };
        let y = Tensor::zeros([g.n, g.c_out, g.out_h(), g.out_w()], x.device())?;
        x.device().backend().qconv2d(
            &g,
            &args,
            &x.storage(),
            &self.w_dev.storage(),
            &self.bias_dev.storage(),
            &self.mult_dev.storage(),
            &mut y.storage_mut(),
        )?;
        Ok(y)
    }
}

/// A quantized residual block: convs, optional projection, exact add + ReLU.
pub struct QBlock {
    pub name: String,
    pub convs: Vec<QConv>,
    pub downsample: Option<QConv>,
    pub in_q: QParams,
    pub add: QAddArgs,
    pub add_q: QParams,
}

impl QBlock {
    pub fn build(name: &str, b: &Block, in_q: QParams, dev: &Device) -> Result<Self> {
        let mut convs = Vec::new();
        let mut q = in_q;
        for (j, c) in b.convs.iter().enumerate() {
            let qc = QConv::from_conv_bn(&format!("{name}.conv{}", j + 1), c, q, dev)?;
            q = qc.out_q;
            convs.push(qc);
        }
        let downsample = b
            .downsample
            .as_ref()
            .map(|d| QConv::from_conv_bn(&format!("{name}.downsample"), d, in_q, dev))
            .transpose()?;
        let short_q = downsample.as_ref().map_or(in_q, |d| d.out_q);
        let add_q = qparams_of(&b.add_quant, &format!("{name}.add"))?;
        let r = AddRequant::new(
            q.scale,
            q.zero_point,
            short_q.scale,
            short_q.zero_point,
            add_q.scale,
            add_q.zero_point,
            true,
        )?;
        let add = QAddArgs {
            s_a: q.scale,
            s_b: short_q.scale,
            s_c: add_q.scale,
            rq: r,
        };
        Ok(QBlock {
            name: name.to_string(),
            convs,
            downsample,
            in_q,
            add,
            add_q,
        })
    }

    pub(super) fn forward(
        &self,
        x: &Tensor,
        record: &mut dyn FnMut(&str, &Tensor, QParams) -> Result<()>,
    ) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward(&y)?;
            record(&c.name, &y, c.out_q)?;
        }
        let short = match &self.downsample {
            Some(d) => {
                let s = d.forward(x)?;
                record(&d.name, &s, d.out_q)?;
                s
            }
            None => x.clone(),
        };
        let out = Tensor::zeros(y.shape().clone(), y.device())?;
        y.device().backend().qadd(
            &self.add,
            &y.storage(),
            &short.storage(),
            &mut out.storage_mut(),
        )?;
        record(&format!("{}.add", self.name), &out, self.add_q)?;
        Ok(out)
    }
}
