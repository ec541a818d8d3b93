//! Integer-exact convolution (and FC as a 1x1 convolution).

use crate::backend::{Conv2dGeom, Device, QConvArgs, Storage};
use crate::nn::{Activation, Conv2d, ConvBn, Linear};
use crate::ops::Conv2dParams;
use crate::quant::fold::fold_conv_bn;
use crate::quant::params::weight_scales;
use crate::quant::requant::{output_bounds, quantize_bias_slice, relu6_bounds, requant_multiplier};
use crate::quant::{fake::quantize_per_channel, QParams};
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
    pub act: Activation,
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
        act: Activation,
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
            act,
        })
    }

    /// Folds a ConvBn unit with its running statistics (S4) and quantizes it.
    pub fn from_conv_bn(
        name: &str,
        u: &ConvBn,
        in_q: QParams,
        out_q: QParams,
        dev: &Device,
    ) -> Result<Self> {
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
            u.act,
            dev,
        )
    }

    /// A convolution with its own bias and no batch norm (already folded).
    pub fn from_conv(
        name: &str,
        c: &Conv2d,
        act: Activation,
        in_q: QParams,
        out_q: QParams,
        dev: &Device,
    ) -> Result<Self> {
        let d = c.weight.dims();
        let bias = match &c.bias {
            Some(b) => b.to_vec()?,
            None => vec![0.0; d[0]],
        };
        QConv::new(
            name,
            &c.weight.to_vec()?,
            [d[0], d[1], d[2], d[3]],
            &bias,
            c.params,
            in_q,
            out_q,
            act,
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
            Activation::None,
            dev,
        )
    }

    /// The requantization clamp: the int8 range, from the zero point for
    /// ReLU (S5), ReLU6's bounds (S11).
    pub fn output_bounds(&self) -> (i32, i32) {
        let (s, z) = (self.out_q.scale, self.out_q.zero_point);
        match self.act {
            Activation::None => output_bounds(z, false),
            Activation::Relu => output_bounds(z, true),
            Activation::Relu6 => relu6_bounds(s, z),
        }
    }

    pub fn geom(&self, x: &Tensor) -> Result<Conv2dGeom> {
        self.params.geom(x, &self.w_dev)
    }

    /// `x` holds `(q_x - z_x) * s_x`; returns `(q_y - z_y) * s_y`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.geom(x)?;
        let (lo, hi) = self.output_bounds();
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
