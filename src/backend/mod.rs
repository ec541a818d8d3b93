//! The backend interface: every numerical primitive the autograd ops need,
//! implemented once per device. The CPU backend (`cpu`) is the readable
//! reference; the CUDA backend runs hand-written kernels from `kernels/`.
//!
//! Backends work on raw [`Storage`] plus a geometry struct from [`geom`]; shape
//! checking happens one layer up, in `ops`, so a backend may assume sizes fit.

pub mod cpu;
pub mod cuda;
pub mod geom;
pub mod profile;

pub use geom::{
    AvgPool2dGeom, BnGeom, ConcatGeom, Conv2dGeom, FqTensor, GemmGeom, PairMap, Pool2dGeom,
    PoolSpan, QAddArgs, QConvArgs, QGapArgs, SgdStep,
};

use crate::quant::params::Scheme;
use crate::{bail, Result};
use std::fmt;
use std::sync::Arc;

/// The memory behind a tensor: f32 values on some device.
pub enum Storage {
    Host(Vec<f32>),
    /// Memory of a CUDA device (real or emulated), freed on drop.
    Device(cuda::DeviceBuffer),
}

impl Storage {
    pub fn len(&self) -> usize {
        match self {
            Storage::Host(v) => v.len(),
            Storage::Device(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The host slice, or an error if the data lives on a device.
    pub fn host(&self) -> Result<&[f32]> {
        match self {
            Storage::Host(v) => Ok(v),
            Storage::Device(b) => bail!(
                DeviceMismatch,
                "host access to memory on {}",
                b.runtime().name()
            ),
        }
    }
    /// Host storage holding int32 values as 32-bit words (bias of the
    /// integer-exact layers): the bits are kept, never used as floats.
    pub fn from_i32(v: &[i32]) -> Vec<f32> {
        bytemuck::cast_slice(v).to_vec()
    }
    pub fn host_mut(&mut self) -> Result<&mut [f32]> {
        match self {
            Storage::Host(v) => Ok(v),
            Storage::Device(b) => bail!(
                DeviceMismatch,
                "host access to memory on {}",
                b.runtime().name()
            ),
        }
    }
}

/// Every primitive a ResNet needs for training, on one device. All buffers
/// passed in must belong to this backend; outputs (`&mut`) are fully
/// overwritten unless the doc says "accumulates".
pub trait Backend: Send + Sync {
    /// A short name for messages, e.g. `cpu` or `cuda:0 (NVIDIA H100)`.
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------------
    fn zeros(&self, len: usize) -> Result<Storage>;
    /// A buffer for an output that the next primitive overwrites fully: its
    /// contents are unspecified (a recycled buffer's old values; NaN when
    /// `QAT_POISON_EMPTY=1` or in debug builds, so a primitive that leaves
    /// part of its output unwritten fails the tests). Never pass it to a
    /// primitive that accumulates.
    fn empty(&self, len: usize) -> Result<Storage> {
        self.zeros(len)
    }
    /// Takes back the storage of a tensor being dropped, for [`Backend::empty`]
    /// to hand out again (the default frees it).
    fn recycle(&self, s: Storage) {
        drop(s);
    }
    fn upload(&self, data: &[f32]) -> Result<Storage>;
    fn download(&self, s: &Storage) -> Result<Vec<f32>>;
    fn fill(&self, s: &mut Storage, value: f32) -> Result<()>;
    fn copy(&self, src: &Storage) -> Result<Storage>;
    /// Waits for queued work (no-op on the CPU).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Host-device copies, synchronizations and launches so far, on devices
    /// that have them (`None` on the CPU).
    fn transfer_counts(&self) -> Option<cuda::TransferCounts> {
        None
    }

    // ---- elementwise --------------------------------------------------------
    /// `y = a + b`.
    fn add(&self, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()>;
    /// `y += alpha * x` (accumulates).
    fn axpy(&self, alpha: f32, x: &Storage, y: &mut Storage) -> Result<()>;
    /// `x *= alpha` in place.
    fn scale(&self, alpha: f32, x: &mut Storage) -> Result<()>;
    /// `y[i] = op(a[i], b[i])` ([`PairMap`]; the unary maps ignore `b`,
    /// which may then be `a`).
    fn pair_map(&self, op: PairMap, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()>;
    /// `y = max(x, 0)`.
    fn relu_fwd(&self, x: &Storage, y: &mut Storage) -> Result<()>;
    /// Whether this backend runs [`Backend::add_relu`]: a residual add and
    /// the ReLU after it in one pass. The ops call the two separately where
    /// it does not.
    fn fuses_add_relu(&self) -> bool {
        false
    }
    /// `y = max(a + b, 0)`, the bits of [`Backend::add`] then
    /// [`Backend::relu_fwd`].
    fn add_relu(&self, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()> {
        let _ = (a, b, y);
        Err(unsupported(self, "add_relu"))
    }
    /// `dx = dy * [y > 0]`, with `y` the forward output.
    fn relu_bwd(&self, y: &Storage, dy: &Storage, dx: &mut Storage) -> Result<()>;
    /// `y = min(max(x, lo), hi)`; NaN stays NaN (as `torch.clamp`).
    fn clamp_fwd(&self, lo: f32, hi: f32, x: &Storage, y: &mut Storage) -> Result<()>;
    /// `dx = dy` where `lo < x < hi`, else 0 (also for NaN): PyTorch's
    /// `hardtanh` gradient, which is 0 at the bounds themselves.
    fn clamp_bwd(
        &self,
        lo: f32,
        hi: f32,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()>;
    /// Concatenation: writes `x` into its columns of `y` (see [`ConcatGeom`]);
    /// the other columns of `y` are left as they are.
    fn concat_fwd(&self, g: &ConcatGeom, x: &Storage, y: &mut Storage) -> Result<()>;
    /// The split: `dx` = the columns of `dy` that `x` filled.
    fn concat_bwd(&self, g: &ConcatGeom, dy: &Storage, dx: &mut Storage) -> Result<()>;

    // ---- matrix products ----------------------------------------------------
    /// `c = alpha * op(a) op(b) + beta * c`.
    fn gemm(&self, g: &GemmGeom, a: &Storage, b: &Storage, c: &mut Storage) -> Result<()>;
    /// `y[r, j] += bias[j]` for a `rows x cols` matrix (accumulates).
    fn add_row_bias(&self, rows: usize, cols: usize, bias: &Storage, y: &mut Storage)
        -> Result<()>;
    /// `db[j] = sum_r dy[r, j]`.
    fn sum_rows(&self, rows: usize, cols: usize, dy: &Storage, db: &mut Storage) -> Result<()>;

    // ---- convolution --------------------------------------------------------
    fn conv2d_fwd(
        &self,
        g: &Conv2dGeom,
        x: &Storage,
        w: &Storage,
        bias: Option<&Storage>,
        y: &mut Storage,
    ) -> Result<()>;
    fn conv2d_bwd_data(
        &self,
        g: &Conv2dGeom,
        dy: &Storage,
        w: &Storage,
        dx: &mut Storage,
    ) -> Result<()>;
    /// Weight gradient, and the bias gradient when `dbias` is given.
    fn conv2d_bwd_weight(
        &self,
        g: &Conv2dGeom,
        x: &Storage,
        dy: &Storage,
        dw: &mut Storage,
        dbias: Option<&mut Storage>,
    ) -> Result<()>;

    // ---- batch norm ---------------------------------------------------------
    /// Normalizes with batch statistics, saves `mean` and `invstd` for the
    /// backward pass and updates the running statistics with `momentum`
    /// (running variance uses the unbiased batch variance, as PyTorch).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_eval(
        &self,
        g: &BnGeom,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        y: &mut Storage,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// Whether this backend runs [`Backend::batchnorm_relu_fwd_train`] and its
    /// gradient: training batch norm with the ReLU after it in the same
    /// passes. The ops call the two separately where it does not.
    fn fuses_batchnorm_relu(&self) -> bool {
        false
    }
    /// `y = max(batchnorm_fwd_train(x), 0)` with the bits of the two ops;
    /// `affine` (`2 * c` floats) receives what the backward needs to
    /// recompute the ReLU's mask from `x`.
    #[allow(clippy::too_many_arguments)]
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
        let _ = (g, x, gamma, beta, running_mean, running_var, y);
        let _ = (save_mean, save_invstd, affine);
        Err(unsupported(self, "batchnorm_relu_fwd_train"))
    }
    /// The gradient of [`Backend::batchnorm_relu_fwd_train`]: `relu_bwd` then
    /// [`Backend::batchnorm_bwd`], in their bits.
    #[allow(clippy::too_many_arguments)]
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
        let _ = (g, x, affine, dy, gamma, save_mean, save_invstd, dx);
        let _ = (dgamma, dbeta);
        Err(unsupported(self, "batchnorm_relu_bwd"))
    }
    /// Whether this backend runs [`Backend::batchnorm_fwd_train_scaled`] and
    /// its gradient: training batch norm of `t = x * pre[c]` (the QAT unit's
    /// convolution output divided by its fold factor) without storing `t`.
    /// The ops scale and normalize separately where it does not.
    fn fuses_scaled_batchnorm(&self) -> bool {
        false
    }
    /// [`Backend::batchnorm_fwd_train`] of `t = x * pre[c]`, `t` computed as
    /// [`Backend::channel_scale`] does and not stored.
    #[allow(clippy::too_many_arguments)]
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
        let _ = (g, x, pre, gamma, beta, running_mean, running_var, y);
        let _ = (save_mean, save_invstd);
        Err(unsupported(self, "batchnorm_fwd_train_scaled"))
    }
    /// The gradient of [`Backend::batchnorm_fwd_train_scaled`], with the
    /// bits of [`Backend::batchnorm_bwd`] on `t` followed by the
    /// [`Backend::channel_scale`] and [`Backend::channel_dot`] of the
    /// scaling's backward: `dx = dt * pre[c]`, `dpre[c] = Σ dt * x`.
    #[allow(clippy::too_many_arguments)]
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
        let _ = (g, x, pre, dy, gamma, save_mean, save_invstd, dx, dpre);
        let _ = (dgamma, dbeta);
        Err(unsupported(self, "batchnorm_bwd_scaled"))
    }

    // ---- pooling ------------------------------------------------------------
    fn maxpool2d_fwd(&self, g: &Pool2dGeom, x: &Storage, y: &mut Storage) -> Result<()>;
    /// Routes each `dy` to the first maximum of its window in `x` (PyTorch's
    /// tie rule).
    fn maxpool2d_bwd(
        &self,
        g: &Pool2dGeom,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()>;
    /// Average pooling (divisor rule in [`AvgPool2dGeom`]).
    fn avgpool2d_fwd(&self, g: &AvgPool2dGeom, x: &Storage, y: &mut Storage) -> Result<()>;
    /// `dx[i] = sum over the windows holding i of dy / divisor`.
    fn avgpool2d_bwd(&self, g: &AvgPool2dGeom, dy: &Storage, dx: &mut Storage) -> Result<()>;
    /// `y[n, c] = mean over hw of x[n, c, :]`.
    fn global_avgpool_fwd(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &Storage,
        y: &mut Storage,
    ) -> Result<()>;
    fn global_avgpool_bwd(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()>;

    // ---- loss ---------------------------------------------------------------
    /// Mean softmax cross-entropy over `rows` with label smoothing `eps`
    /// (PyTorch's `cross_entropy(label_smoothing=eps)`). Labels are class
    /// indices stored as f32. Writes `loss[0]` and the softmax `probs`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent_fwd(
        &self,
        rows: usize,
        classes: usize,
        eps: f32,
        logits: &Storage,
        labels: &Storage,
        loss: &mut Storage,
        probs: &mut Storage,
    ) -> Result<()>;
    /// `dlogits = dloss[0] * (probs - target) / rows`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent_bwd(
        &self,
        rows: usize,
        classes: usize,
        eps: f32,
        probs: &Storage,
        labels: &Storage,
        dloss: &Storage,
        dlogits: &mut Storage,
    ) -> Result<()>;

    /// The step summary a trainer reads in one copy: `out = [loss[0], top-1
    /// hits, top-5 hits]` over `rows` rows of `logits` against `labels`
    /// (class indices as f32), ranking as [`crate::accuracy::Accuracy`]
    /// (ties broken by class index).
    #[allow(clippy::too_many_arguments)]
    fn label_hits(
        &self,
        rows: usize,
        classes: usize,
        logits: &Storage,
        labels: &Storage,
        loss: &Storage,
        out: &mut Storage,
    ) -> Result<()> {
        let _ = (rows, classes, logits, labels, loss, out);
        Err(unsupported(self, "label_hits"))
    }

    // ---- quantization-aware training (QUANT_SPEC S2, S3, S4) -------------
    /// `(min, max)` over all elements (observers).
    fn min_max(&self, x: &Storage) -> Result<(f32, f32)> {
        let _ = x;
        Err(unsupported(self, "min_max"))
    }
    /// Per-tensor fake quantization `y = (q - z) * s` (S3).
    fn fake_quant_tensor_fwd(&self, q: &FqTensor, x: &Storage, y: &mut Storage) -> Result<()> {
        let _ = (q, x, y);
        Err(unsupported(self, "fake_quant_tensor_fwd"))
    }
    /// Straight-through gradient: `dx = dy * [qmin <= RNE(x / s) + z <= qmax]`.
    fn fake_quant_tensor_bwd(
        &self,
        q: &FqTensor,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        let _ = (q, x, dy, dx);
        Err(unsupported(self, "fake_quant_tensor_bwd"))
    }
    /// One activation observer step on the device (S2): folds the `(min,
    /// max)` of `x` into `words` (the layout of [`observer_words`], updated
    /// in place) with `momentum`, and writes the scale and zero point of the
    /// new range under `scheme` there. An invalid batch range is recorded in
    /// the words and skipped; backends that can also return it as an error.
    ///
    /// [`observer_words`]: crate::quant::observer_words
    fn observe_act(
        &self,
        x: &Storage,
        momentum: f32,
        scheme: Scheme,
        words: &mut Storage,
    ) -> Result<()> {
        let _ = (x, momentum, scheme, words);
        Err(unsupported(self, "observe_act"))
    }
    /// [`Backend::fake_quant_tensor_fwd`] with the scale and zero point in
    /// force in `words` (read on the device).
    fn fake_quant_act_fwd(
        &self,
        words: &Storage,
        qmin: i32,
        qmax: i32,
        x: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        let _ = (words, qmin, qmax, x, y);
        Err(unsupported(self, "fake_quant_act_fwd"))
    }
    /// The straight-through gradient of [`Backend::fake_quant_act_fwd`].
    #[allow(clippy::too_many_arguments)]
    fn fake_quant_act_bwd(
        &self,
        words: &Storage,
        qmin: i32,
        qmax: i32,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        let _ = (words, qmin, qmax, x, dy, dx);
        Err(unsupported(self, "fake_quant_act_bwd"))
    }
    /// Whether this backend runs a ReLU fused into the activation quantizer
    /// that follows it ([`Backend::relu_observe_act`],
    /// [`Backend::relu_fake_quant_act_fwd`] and its gradient): one pass over
    /// the pre-activation instead of a ReLU pass and then the quantizer's.
    /// The ops take the separate ReLU where it does not.
    fn fuses_relu_quant(&self) -> bool {
        false
    }
    /// [`Backend::observe_act`] of `max(x, 0)`, which is not stored.
    fn relu_observe_act(
        &self,
        x: &Storage,
        momentum: f32,
        scheme: Scheme,
        words: &mut Storage,
    ) -> Result<()> {
        let _ = (x, momentum, scheme, words);
        Err(unsupported(self, "relu_observe_act"))
    }
    /// [`Backend::fake_quant_act_fwd`] of `max(x, 0)`.
    fn relu_fake_quant_act_fwd(
        &self,
        words: &Storage,
        qmin: i32,
        qmax: i32,
        x: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        let _ = (words, qmin, qmax, x, y);
        Err(unsupported(self, "relu_fake_quant_act_fwd"))
    }
    /// The gradient of [`Backend::relu_fake_quant_act_fwd`], with the bits of
    /// the two separate ones: with `r = max(x, 0)`, `g = dy * ste_mask(r)`,
    /// `dx = g` where `r > 0`, else `0`.
    #[allow(clippy::too_many_arguments)]
    fn relu_fake_quant_act_bwd(
        &self,
        words: &Storage,
        qmin: i32,
        qmax: i32,
        x: &Storage,
        dy: &Storage,
        dx: &mut Storage,
    ) -> Result<()> {
        let _ = (words, qmin, qmax, x, dy, dx);
        Err(unsupported(self, "relu_fake_quant_act_bwd"))
    }
    /// Per-channel symmetric fake quantization of `channels x inner` weights
    /// (z = 0, [-127, 127]): writes each channel's scale
    /// `max(amax_c / 127, 2^-23)` to `scales` and the fake-quantized weights
    /// to `y`, in one pass over the data where the device allows.
    fn fake_quant_channel_fwd(
        &self,
        channels: usize,
        inner: usize,
        w: &Storage,
        y: &mut Storage,
        scales: &mut Storage,
    ) -> Result<()> {
        let _ = (channels, inner, w, y, scales);
        Err(unsupported(self, "fake_quant_channel_fwd"))
    }
    /// Straight-through gradient of the per-channel fake quantization.
    fn fake_quant_channel_bwd(
        &self,
        channels: usize,
        inner: usize,
        w: &Storage,
        scales: &Storage,
        dy: &Storage,
        dw: &mut Storage,
    ) -> Result<()> {
        let _ = (channels, inner, w, scales, dy, dw);
        Err(unsupported(self, "fake_quant_channel_bwd"))
    }
    /// `y[o, c, i] = x[o, c, i] * s[c]` over an `outer x c x inner` view.
    fn channel_scale(
        &self,
        outer: usize,
        c: usize,
        inner: usize,
        x: &Storage,
        s: &Storage,
        y: &mut Storage,
    ) -> Result<()> {
        let _ = (outer, c, inner, x, s, y);
        Err(unsupported(self, "channel_scale"))
    }
    /// `out[c] = sum over o, i of a[o, c, i] * b[o, c, i]`.
    fn channel_dot(
        &self,
        outer: usize,
        c: usize,
        inner: usize,
        a: &Storage,
        b: &Storage,
        out: &mut Storage,
    ) -> Result<()> {
        let _ = (outer, c, inner, a, b, out);
        Err(unsupported(self, "channel_dot"))
    }

    // ---- integer-exact evaluation (S5, S6, S7, S9) -------------------------
    /// Integer-exact convolution: `w_q` holds int8 values (as f32),
    /// `bias_q` int32 values (bit patterns in f32 words, see
    /// [`Storage::from_i32`]), `multipliers` the float32 `M_c` per channel.
    #[allow(clippy::too_many_arguments)]
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
        let _ = (g, q, x, w_q, bias_q, multipliers, y);
        Err(unsupported(self, "qconv2d"))
    }
    /// Integer-exact residual add (S7).
    fn qadd(&self, q: &QAddArgs, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()> {
        let _ = (q, a, b, y);
        Err(unsupported(self, "qadd"))
    }
    /// Integer-exact global average pooling (S6).
    fn qgap(&self, q: &QGapArgs, x: &Storage, y: &mut Storage) -> Result<()> {
        let _ = (q, x, y);
        Err(unsupported(self, "qgap"))
    }

    // ---- optimizer ----------------------------------------------------------
    /// One SGD step on `param` in place, updating `momentum_buf`.
    fn sgd_step(
        &self,
        s: &SgdStep,
        param: &mut Storage,
        grad: &Storage,
        momentum_buf: &mut Storage,
    ) -> Result<()>;
}

/// The error for a primitive a backend does not implement.
fn unsupported<B: Backend + ?Sized>(b: &B, op: &str) -> crate::Error {
    crate::Error::Device(format!("{op} is not implemented on {}", b.name()))
}

/// The message of a device error without its "device error:" prefix, for
/// wrapping in another message.
fn reason(e: crate::Error) -> String {
    match e {
        crate::Error::Device(m) => m,
        other => other.to_string(),
    }
}

/// What a CUDA device's matrix products (GEMM and the three convolution
/// passes) compute in. The CPU backend always computes FP32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// FP32 on CUDA cores: the reference path.
    #[default]
    Fp32 = 0,
    /// TF32 tensor cores (compute capability 8.0+): operands rounded to 10
    /// mantissa bits, products accumulated in FP32, as PyTorch's default for
    /// convolutions on such GPUs.
    Tf32 = 1,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            other => bail!(Usage, "unknown precision '{other}': use fp32 or tf32"),
        }
    }
}

/// A handle on a backend; cheap to clone. Tensors remember their device.
#[derive(Clone)]
pub struct Device(Arc<dyn Backend>);

impl Device {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Device(backend)
    }
    /// The process-wide CPU backend.
    pub fn cpu() -> Device {
        static CPU: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
        CPU.get_or_init(|| Device(Arc::new(cpu::CpuBackend::new())))
            .clone()
    }
    pub fn backend(&self) -> &dyn Backend {
        &*self.0
    }
    pub fn same(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
    pub fn is_cpu(&self) -> bool {
        self.same(&Device::cpu())
    }
    /// This device behind a [`profile::Profiler`] that times each of its
    /// primitives (and synchronizes after each on devices that queue work).
    pub fn profiled(&self) -> (Device, Arc<profile::Profiler>) {
        let p = Arc::new(profile::Profiler::new(self.0.clone(), !self.is_cpu()));
        (Device(p.clone() as Arc<dyn Backend>), p)
    }
    /// Resolves a `--device` argument: `cpu`; `cuda` (GPU 0, an error when no
    /// GPU works); `cuda-emu` (the CUDA backend on the kernel emulator); or
    /// `auto` (CUDA when a GPU works, else the CPU). Prints nothing; see
    /// [`Device::choose`] for the line that says which.
    pub fn parse(spec: &str) -> Result<Device> {
        Ok(Device::choose(spec)?.0)
    }

    /// [`Device::parse`], with a one-line description of the choice for the
    /// user (`cpu (auto; no usable GPU: ...)`).
    pub fn choose(spec: &str) -> Result<(Device, String)> {
        Device::choose_with(spec, Precision::Fp32)
    }

    /// [`Device::choose`] with the CUDA devices' matrix products in
    /// `precision` (the CPU ignores it).
    pub fn choose_with(spec: &str, precision: Precision) -> Result<(Device, String)> {
        match spec {
            "cpu" => Ok((Device::cpu(), "cpu".into())),
            "cuda" | "cuda:0" => cuda::gpu_device_with(precision)
                .map(|d| {
                    let name = d.backend().name();
                    (d, name)
                })
                .map_err(|e| {
                    crate::Error::Device(format!("--device cuda: no usable GPU: {}", reason(e)))
                }),
            "cuda-emu" => {
                let d = cuda::emulated_device_with(precision);
                let name = d.backend().name();
                Ok((d, name))
            }
            "auto" => match cuda::gpu_device_with(precision) {
                Ok(d) => {
                    let line = format!("{} (auto)", d.backend().name());
                    Ok((d, line))
                }
                Err(e) => Ok((
                    Device::cpu(),
                    format!("cpu (auto; no usable GPU: {})", reason(e)),
                )),
            },
            other => bail!(
                Device,
                "unknown device '{other}': use auto, cpu, cuda or cuda-emu"
            ),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.0.name())
    }
}
