//! A backend that times every primitive of another one, for `qat train
//! --profile`: each call is attributed to its primitive and to the phase of
//! the training step the caller set ([`Profiler::set_phase`]: data,
//! forward, backward, optimizer). On a device that queues work (CUDA, also
//! emulated) every call is followed by a synchronize, so the time is the
//! primitive's own; that serializes the device and is the price of the
//! breakdown.

use super::{
    AvgPool2dGeom, Backend, BnGeom, ConcatGeom, Conv2dGeom, FqTensor, GemmGeom, PairMap,
    Pool2dGeom, QAddArgs, QConvArgs, QGapArgs, SgdStep, Storage,
};
use crate::quant::params::Scheme;
use crate::Result;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The part of a training step a primitive ran in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Building the batch and moving it to the device.
    Data,
    /// The forward pass and the loss.
    Forward,
    /// Backpropagation.
    Backward,
    /// The parameter update.
    Optimizer,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Data,
        Phase::Forward,
        Phase::Backward,
        Phase::Optimizer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Data => "data",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
        }
    }

    fn from_index(i: usize) -> Phase {
        Phase::ALL[i.min(3)]
    }
}

/// What a primitive does, for the grouped table.
pub fn kind(op: &str) -> &'static str {
    match op {
        "zeros" | "empty" | "upload" | "download" | "fill" | "copy" => "memory",
        "gemm" | "add_row_bias" | "sum_rows" => "gemm",
        "min_max" | "observe_act" | "relu_observe_act" => "observers",
        "pair_map" => "fake-quant",
        "sgd_step" => "optimizer",
        "qconv2d" | "qadd" | "qgap" => "integer eval",
        "softmax_xent_fwd" | "softmax_xent_bwd" | "label_hits" => "loss",
        "add" | "add_relu" | "axpy" | "scale" | "relu_fwd" | "relu_bwd" | "clamp_fwd"
        | "clamp_bwd" | "concat_fwd" | "concat_bwd" => "elementwise",
        _ if op.starts_with("conv2d") => "convolution",
        _ if op.starts_with("batchnorm") => "batch norm",
        _ if op.contains("pool") => "pooling",
        _ if op.contains("fake_quant") || op.starts_with("channel_") => "fake-quant",
        _ => "other",
    }
}

/// Calls and time of one primitive in one phase.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpTime {
    pub calls: u64,
    pub time: Duration,
}

/// Wraps a backend; see the module documentation.
pub struct Profiler {
    inner: Arc<dyn Backend>,
    sync: bool,
    phase: AtomicUsize,
    times: Mutex<BTreeMap<(Phase, &'static str), OpTime>>,
}

impl Profiler {
    /// `sync`: synchronize after every call (devices that queue work).
    pub fn new(inner: Arc<dyn Backend>, sync: bool) -> Self {
        Profiler {
            inner,
            sync,
            phase: AtomicUsize::new(0),
            times: Mutex::new(BTreeMap::new()),
        }
    }

    /// Attributes the calls from now on to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        let i = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        self.phase.store(i, Ordering::Relaxed);
    }

    /// The times so far, and a reset to zero.
    pub fn take(&self) -> BTreeMap<(Phase, &'static str), OpTime> {
        std::mem::take(&mut *self.times.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn time<T>(&self, op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        if self.sync {
            self.inner.synchronize()?;
        }
        let dt = t.elapsed();
        let phase = Phase::from_index(self.phase.load(Ordering::Relaxed));
        let mut m = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry((phase, op)).or_default();
        e.calls += 1;
        e.time += dt;
        r
    }
}

/// Forwards each listed primitive to the inner backend under [`Profiler::time`].
macro_rules! timed {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.time(stringify!($name), || self.inner.$name($($arg),*))
            }
        )*
    };
}

impl Backend for Profiler {
    fn name(&self) -> String {
        format!("{} (profiled)", self.inner.name())
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    fn transfer_counts(&self) -> Option<super::cuda::TransferCounts> {
        self.inner.transfer_counts()
    }

    fn recycle(&self, s: Storage) {
        self.inner.recycle(s)
    }

    fn fuses_relu_quant(&self) -> bool {
        self.inner.fuses_relu_quant()
    }

    fn fuses_batchnorm_relu(&self) -> bool {
        self.inner.fuses_batchnorm_relu()
    }

    fn fuses_add_relu(&self) -> bool {
        self.inner.fuses_add_relu()
    }

    fn fuses_scaled_batchnorm(&self) -> bool {
        self.inner.fuses_scaled_batchnorm()
    }

    timed! {
        fn zeros(&self, len: usize) -> Result<Storage>;
        fn empty(&self, len: usize) -> Result<Storage>;
        fn upload(&self, data: &[f32]) -> Result<Storage>;
        fn download(&self, s: &Storage) -> Result<Vec<f32>>;
        fn fill(&self, s: &mut Storage, value: f32) -> Result<()>;
        fn copy(&self, src: &Storage) -> Result<Storage>;
        fn add(&self, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()>;
        fn axpy(&self, alpha: f32, x: &Storage, y: &mut Storage) -> Result<()>;
        fn scale(&self, alpha: f32, x: &mut Storage) -> Result<()>;
        fn relu_fwd(&self, x: &Storage, y: &mut Storage) -> Result<()>;
        fn add_relu(&self, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()>;
        fn relu_bwd(&self, y: &Storage, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn clamp_fwd(&self, lo: f32, hi: f32, x: &Storage, y: &mut Storage) -> Result<()>;
        fn clamp_bwd(&self, lo: f32, hi: f32, x: &Storage, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn concat_fwd(&self, g: &ConcatGeom, x: &Storage, y: &mut Storage) -> Result<()>;
        fn concat_bwd(&self, g: &ConcatGeom, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn pair_map(&self, op: PairMap, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()>;
        fn gemm(&self, g: &GemmGeom, a: &Storage, b: &Storage, c: &mut Storage) -> Result<()>;
        fn add_row_bias(&self, rows: usize, cols: usize, bias: &Storage, y: &mut Storage) -> Result<()>;
        fn sum_rows(&self, rows: usize, cols: usize, dy: &Storage, db: &mut Storage) -> Result<()>;
        fn conv2d_fwd(&self, g: &Conv2dGeom, x: &Storage, w: &Storage, bias: Option<&Storage>, y: &mut Storage) -> Result<()>;
        fn conv2d_bwd_data(&self, g: &Conv2dGeom, dy: &Storage, w: &Storage, dx: &mut Storage) -> Result<()>;
        fn conv2d_bwd_weight(&self, g: &Conv2dGeom, x: &Storage, dy: &Storage, dw: &mut Storage, dbias: Option<&mut Storage>) -> Result<()>;
        fn batchnorm_fwd_train(&self, g: &BnGeom, x: &Storage, gamma: &Storage, beta: &Storage, running_mean: &mut Storage, running_var: &mut Storage, y: &mut Storage, save_mean: &mut Storage, save_invstd: &mut Storage) -> Result<()>;
        fn batchnorm_fwd_eval(&self, g: &BnGeom, x: &Storage, gamma: &Storage, beta: &Storage, running_mean: &Storage, running_var: &Storage, y: &mut Storage) -> Result<()>;
        fn batchnorm_bwd(&self, g: &BnGeom, x: &Storage, dy: &Storage, gamma: &Storage, save_mean: &Storage, save_invstd: &Storage, dx: &mut Storage, dgamma: &mut Storage, dbeta: &mut Storage) -> Result<()>;
        fn batchnorm_relu_fwd_train(&self, g: &BnGeom, x: &Storage, gamma: &Storage, beta: &Storage, running_mean: &mut Storage, running_var: &mut Storage, y: &mut Storage, save_mean: &mut Storage, save_invstd: &mut Storage, affine: &mut Storage) -> Result<()>;
        fn batchnorm_relu_bwd(&self, g: &BnGeom, x: &Storage, affine: &Storage, dy: &Storage, gamma: &Storage, save_mean: &Storage, save_invstd: &Storage, dx: &mut Storage, dgamma: &mut Storage, dbeta: &mut Storage) -> Result<()>;
        fn batchnorm_fwd_train_scaled(&self, g: &BnGeom, x: &Storage, pre: &Storage, gamma: &Storage, beta: &Storage, running_mean: &mut Storage, running_var: &mut Storage, y: &mut Storage, save_mean: &mut Storage, save_invstd: &mut Storage) -> Result<()>;
        fn batchnorm_bwd_scaled(&self, g: &BnGeom, x: &Storage, pre: &Storage, dy: &Storage, gamma: &Storage, save_mean: &Storage, save_invstd: &Storage, dx: &mut Storage, dpre: &mut Storage, dgamma: &mut Storage, dbeta: &mut Storage) -> Result<()>;
        fn maxpool2d_fwd(&self, g: &Pool2dGeom, x: &Storage, y: &mut Storage) -> Result<()>;
        fn maxpool2d_bwd(&self, g: &Pool2dGeom, x: &Storage, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn avgpool2d_fwd(&self, g: &AvgPool2dGeom, x: &Storage, y: &mut Storage) -> Result<()>;
        fn avgpool2d_bwd(&self, g: &AvgPool2dGeom, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn global_avgpool_fwd(&self, n: usize, c: usize, hw: usize, x: &Storage, y: &mut Storage) -> Result<()>;
        fn global_avgpool_bwd(&self, n: usize, c: usize, hw: usize, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn softmax_xent_fwd(&self, rows: usize, classes: usize, eps: f32, logits: &Storage, labels: &Storage, loss: &mut Storage, probs: &mut Storage) -> Result<()>;
        fn softmax_xent_bwd(&self, rows: usize, classes: usize, eps: f32, probs: &Storage, labels: &Storage, dloss: &Storage, dlogits: &mut Storage) -> Result<()>;
        fn label_hits(&self, rows: usize, classes: usize, logits: &Storage, labels: &Storage, loss: &Storage, out: &mut Storage) -> Result<()>;
        fn min_max(&self, x: &Storage) -> Result<(f32, f32)>;
        fn fake_quant_tensor_fwd(&self, q: &FqTensor, x: &Storage, y: &mut Storage) -> Result<()>;
        fn fake_quant_tensor_bwd(&self, q: &FqTensor, x: &Storage, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn observe_act(&self, x: &Storage, momentum: f32, scheme: Scheme, words: &mut Storage) -> Result<()>;
        fn fake_quant_act_fwd(&self, words: &Storage, qmin: i32, qmax: i32, x: &Storage, y: &mut Storage) -> Result<()>;
        fn fake_quant_act_bwd(&self, words: &Storage, qmin: i32, qmax: i32, x: &Storage, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn relu_observe_act(&self, x: &Storage, momentum: f32, scheme: Scheme, words: &mut Storage) -> Result<()>;
        fn relu_fake_quant_act_fwd(&self, words: &Storage, qmin: i32, qmax: i32, x: &Storage, y: &mut Storage) -> Result<()>;
        fn relu_fake_quant_act_bwd(&self, words: &Storage, qmin: i32, qmax: i32, x: &Storage, dy: &Storage, dx: &mut Storage) -> Result<()>;
        fn fake_quant_channel_fwd(&self, channels: usize, inner: usize, w: &Storage, y: &mut Storage, scales: &mut Storage) -> Result<()>;
        fn fake_quant_channel_bwd(&self, channels: usize, inner: usize, w: &Storage, scales: &Storage, dy: &Storage, dw: &mut Storage) -> Result<()>;
        fn channel_scale(&self, outer: usize, c: usize, inner: usize, x: &Storage, s: &Storage, y: &mut Storage) -> Result<()>;
        fn channel_dot(&self, outer: usize, c: usize, inner: usize, a: &Storage, b: &Storage, out: &mut Storage) -> Result<()>;
        fn qconv2d(&self, g: &Conv2dGeom, q: &QConvArgs, x: &Storage, w_q: &Storage, bias_q: &Storage, multipliers: &Storage, y: &mut Storage) -> Result<()>;
        fn qadd(&self, q: &QAddArgs, a: &Storage, b: &Storage, y: &mut Storage) -> Result<()>;
        fn qgap(&self, q: &QGapArgs, x: &Storage, y: &mut Storage) -> Result<()>;
        fn sgd_step(&self, s: &SgdStep, param: &mut Storage, grad: &Storage, momentum_buf: &mut Storage) -> Result<()>;
    }
}
