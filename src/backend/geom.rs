//! Problem geometries passed from the op layer to a backend. Each carries every
//! size a kernel needs, so backends never re-derive shapes.

use crate::{bail, Result};

/// `C = alpha * op(A) * op(B) + beta * C`, row-major, `op(A)` is `m x k`,
/// `op(B)` is `k x n`, `C` is `m x n`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmGeom {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl GemmGeom {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        GemmGeom {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// A 2-d convolution over NCHW input with OIHW weights (`O x C/groups x KH x KW`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Conv2dGeom {
    /// Checks the geometry and returns it, with the reason when it is invalid.
    pub fn validate(self) -> Result<Self> {
        let g = self;
        if g.groups == 0 || !g.c_in.is_multiple_of(g.groups) || !g.c_out.is_multiple_of(g.groups) {
            bail!(
                Shape,
                "conv2d: groups={} must divide c_in={} and c_out={}",
                g.groups,
                g.c_in,
                g.c_out
            );
        }
        if g.stride.0 == 0 || g.stride.1 == 0 || g.dilation.0 == 0 || g.dilation.1 == 0 {
            bail!(
                Shape,
                "conv2d: stride {:?} and dilation {:?} must be positive",
                g.stride,
                g.dilation
            );
        }
        let eff_h = g.dilation.0 * (g.kh.max(1) - 1) + 1;
        let eff_w = g.dilation.1 * (g.kw.max(1) - 1) + 1;
        if g.kh == 0 || g.kw == 0 || g.h + 2 * g.pad.0 < eff_h || g.w + 2 * g.pad.1 < eff_w {
            bail!(
                Shape,
                "conv2d: kernel {}x{} (dilation {:?}) does not fit input {}x{} with padding {:?}",
                g.kh,
                g.kw,
                g.dilation,
                g.h,
                g.w,
                g.pad
            );
        }
        Ok(g)
    }
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad.0 - self.dilation.0 * (self.kh - 1) - 1) / self.stride.0 + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad.1 - self.dilation.1 * (self.kw - 1) - 1) / self.stride.1 + 1
    }
    pub fn c_in_per_group(&self) -> usize {
        self.c_in / self.groups
    }
    pub fn c_out_per_group(&self) -> usize {
        self.c_out / self.groups
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn w_len(&self) -> usize {
        self.c_out * self.c_in_per_group() * self.kh * self.kw
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w()
    }
    /// A depthwise convolution: every group holds one input channel
    /// (`groups == c_in > 1`), with `c_out = multiplier * c_in`. These run on
    /// dedicated direct kernels instead of the grouped GEMM lowering, which
    /// would spend a whole GEMM tile on each one-channel group. A plain
    /// convolution of a one-channel input (`groups == c_in == 1`) is not
    /// counted: it keeps the GEMM path and its summation order.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.c_in == self.groups
    }
    /// Output channels per input channel of a depthwise convolution
    /// (`c_out / c_in`; output channel `o` reads input channel `o / m`).
    pub fn depthwise_multiplier(&self) -> usize {
        self.c_out / self.groups
    }
    /// Multiply-adds times two, for the forward pass.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.c_out * self.out_h() * self.out_w()) as f64
            * (self.c_in_per_group() * self.kh * self.kw) as f64
    }
}

/// Batch norm over an `N x C x HW` view of the input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnGeom {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub eps: f32,
    /// Weight of the new batch statistic in the running average (PyTorch's
    /// `momentum`, default 0.1).
    pub momentum: f32,
}

/// Max pooling window over NCHW input (`-inf` padding, as PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl Pool2dGeom {
    pub fn validate(self) -> Result<Self> {
        let g = self;
        if g.kh == 0 || g.kw == 0 || g.stride.0 == 0 || g.stride.1 == 0 {
            bail!(
                Shape,
                "max_pool2d: kernel {}x{} and stride {:?} must be positive",
                g.kh,
                g.kw,
                g.stride
            );
        }
        if g.pad.0 * 2 > g.kh || g.pad.1 * 2 > g.kw {
            bail!(
                Shape,
                "max_pool2d: padding {:?} must be at most half the kernel {}x{}",
                g.pad,
                g.kh,
                g.kw
            );
        }
        if g.h + 2 * g.pad.0 < g.kh || g.w + 2 * g.pad.1 < g.kw {
            bail!(
                Shape,
                "max_pool2d: kernel {}x{} larger than padded input {}x{}",
                g.kh,
                g.kw,
                g.h,
                g.w
            );
        }
        Ok(g)
    }
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad.0 - self.kh) / self.stride.0 + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad.1 - self.kw) / self.stride.1 + 1
    }
}

/// Average pooling over NCHW input, PyTorch's `avg_pool2d` (and ONNX
/// AveragePool with symmetric pads). Window `o` on an axis of size `size`
/// starts at `o * stride - pad` and holds `k` positions; the sum runs over the
/// positions inside the input, and the divisor is
/// - `count_include_pad`: the window clipped to the padded extent
///   `[-pad, size + pad)` (so a `k x k` window has divisor `k*k` except where
///   `ceil_mode` lets it hang over the far padding);
/// - otherwise: the number of input positions in the window.
///
/// With `ceil_mode` the output size rounds up, but a window that would start
/// in the far padding is dropped (PyTorch's rule), so every window holds at
/// least one input position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2dGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub count_include_pad: bool,
    pub ceil_mode: bool,
}

/// One window on one axis: input positions `[lo, hi)` and the window's
/// extent for the divisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpan {
    pub lo: usize,
    pub hi: usize,
    pub extent: usize,
}

impl AvgPool2dGeom {
    pub fn validate(self) -> Result<Self> {
        let g = self;
        if g.kh == 0 || g.kw == 0 || g.stride.0 == 0 || g.stride.1 == 0 {
            bail!(
                Shape,
                "avg_pool2d: kernel {}x{} and stride {:?} must be positive",
                g.kh,
                g.kw,
                g.stride
            );
        }
        if g.h == 0 || g.w == 0 {
            bail!(Shape, "avg_pool2d: empty input plane {}x{}", g.h, g.w);
        }
        if g.pad.0 * 2 > g.kh || g.pad.1 * 2 > g.kw {
            bail!(
                Shape,
                "avg_pool2d: padding {:?} must be at most half the kernel {}x{}",
                g.pad,
                g.kh,
                g.kw
            );
        }
        if g.h + 2 * g.pad.0 < g.kh || g.w + 2 * g.pad.1 < g.kw {
            bail!(
                Shape,
                "avg_pool2d: kernel {}x{} larger than input {}x{} with padding {:?}",
                g.kh,
                g.kw,
                g.h,
                g.w,
                g.pad
            );
        }
        Ok(g)
    }

    fn out_len(&self, size: usize, k: usize, s: usize, p: usize) -> usize {
        let span = size + 2 * p - k;
        let mut o = if self.ceil_mode {
            span.div_ceil(s)
        } else {
            span / s
        } + 1;
        // ceil_mode: the last window must start inside the input or the near
        // padding.
        if self.ceil_mode && (o - 1) * s >= size + p {
            o -= 1;
        }
        o
    }
    pub fn out_h(&self) -> usize {
        self.out_len(self.h, self.kh, self.stride.0, self.pad.0)
    }
    pub fn out_w(&self) -> usize {
        self.out_len(self.w, self.kw, self.stride.1, self.pad.1)
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c * self.out_h() * self.out_w()
    }

    fn span(&self, o: usize, size: usize, k: usize, s: usize, p: usize) -> PoolSpan {
        let start = (o * s) as isize - p as isize;
        let end = (start + k as isize).min((size + p) as isize);
        let lo = start.max(0) as usize;
        let hi = (end.min(size as isize)).max(lo as isize) as usize;
        let extent = if self.count_include_pad {
            (end - start) as usize
        } else {
            hi - lo
        };
        PoolSpan { lo, hi, extent }
    }
    /// Rows of output row `oy`.
    pub fn rows(&self, oy: usize) -> PoolSpan {
        self.span(oy, self.h, self.kh, self.stride.0, self.pad.0)
    }
    /// Columns of output column `ox`.
    pub fn cols(&self, ox: usize) -> PoolSpan {
        self.span(ox, self.w, self.kw, self.stride.1, self.pad.1)
    }
    /// The divisor of output `(oy, ox)`.
    pub fn divisor(&self, oy: usize, ox: usize) -> usize {
        self.rows(oy).extent * self.cols(ox).extent
    }
}

/// Concatenation along one axis, seen as matrices: the input is `outer x
/// inner`, the output `outer x row`, and the input fills columns `[offset,
/// offset + inner)` of every output row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcatGeom {
    pub outer: usize,
    pub inner: usize,
    pub row: usize,
    pub offset: usize,
}

impl ConcatGeom {
    pub fn validate(&self) -> Result<()> {
        if self.offset + self.inner > self.row {
            bail!(
                Shape,
                "concat: columns {}..{} outside rows of {}",
                self.offset,
                self.offset + self.inner,
                self.row
            );
        }
        Ok(())
    }
    pub fn x_len(&self) -> usize {
        self.outer * self.inner
    }
    pub fn y_len(&self) -> usize {
        self.outer * self.row
    }
}

/// One SGD step's hyper-parameters (PyTorch's `torch.optim.SGD` semantics,
/// dampening 0): `g = grad + wd * p; buf = momentum * buf + g;
/// p -= lr * (nesterov ? g + momentum * buf : buf)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// An elementwise function of one or two equally long vectors, computed on
/// the device; the batch-norm fold (S4) builds its per-channel factors and
/// their gradients from these, so that a training step keeps them on the
/// device. Each is written exactly as the host expression it replaces, so
/// every backend gives the same bits (IEEE division and square root, no
/// contraction).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PairMap {
    /// `y = sqrt(a + eps)` (`b` unused).
    SqrtAdd(f32),
    /// `y = a / b`.
    Div,
    /// `y = a * (1 / b)`.
    MulRecip,
    /// `y = -a * b`.
    NegMul,
    /// `y = 1 / a` (`b` unused).
    Recip,
    /// `y = a * (-1 / (b * b))`.
    MulNegRecipSq,
}

impl PairMap {
    /// The value at one element, the reference every backend matches.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            PairMap::SqrtAdd(eps) => (a + eps).sqrt(),
            PairMap::Div => a / b,
            PairMap::MulRecip => a * (1.0 / b),
            PairMap::NegMul => -a * b,
            PairMap::Recip => 1.0 / a,
            PairMap::MulNegRecipSq => a * (-1.0 / (b * b)),
        }
    }

    /// The operation code of the CUDA kernel `pair_map_f32`, and its
    /// parameter.
    pub fn code(self) -> (i32, f32) {
        match self {
            PairMap::SqrtAdd(eps) => (0, eps),
            PairMap::Div => (1, 0.0),
            PairMap::MulRecip => (2, 0.0),
            PairMap::NegMul => (3, 0.0),
            PairMap::Recip => (4, 0.0),
            PairMap::MulNegRecipSq => (5, 0.0),
        }
    }
}

/// Per-tensor fake quantization parameters (S3): `q = clamp(RNE(x / scale) +
/// zero_point, qmin, qmax)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FqTensor {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

/// Integer-exact conv / FC (S5, S9). The input holds `(q_x - z_x) * s_x`; the
/// kernel recovers `q_x`, accumulates `sum((q_x - z_x) * w_q) + b_q` exactly,
/// applies R1 with the per-channel float32 multiplier `M_c` and writes
/// `(q_y - z_y) * s_y`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QConvArgs {
    pub s_x: f32,
    pub z_x: i32,
    pub s_y: f32,
    pub z_y: i32,
    /// Output clamp, `[z_y, 127]` with a fused ReLU, else `[-128, 127]`.
    pub lo: i32,
    pub hi: i32,
}

/// Integer-exact residual add (S7): inputs and output stored as `(q - z) *
/// s` with these scales, and the precomputed rational form `rq` of the add
/// (`quant::AddRequant`, which also carries the zero points and bounds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QAddArgs {
    pub s_a: f32,
    pub s_b: f32,
    pub s_c: f32,
    pub rq: crate::quant::AddRequant,
}

/// Integer-exact global average pooling (S6): `acc = sum(q - z_in)` over HW,
/// then R1 with multiplier `m`, output `(q_y - z_out) * s_out`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QGapArgs {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub s_in: f32,
    pub z_in: i32,
    pub m: f32,
    pub s_out: f32,
    pub z_out: i32,
}
