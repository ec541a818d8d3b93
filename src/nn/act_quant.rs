//! The activation quantizer of QAT (S2, S3): an EMA min/max observer and
//! per-tensor fake quantization, with the schedule flags that turn each part
//! on and off.

use crate::backend::Device;
use crate::nn::Mode;
use crate::ops;
use crate::quant::params::{Scheme, ACT_QMAX, ACT_QMIN};
use crate::quant::{observer_words, EmaObserver, QParams};
use crate::tensor::Tensor;
use crate::{bail, Result};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Which parts of quantization-aware training are active at a step; the
/// trainer derives them from the QAT schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QatFlags {
    /// Fake-quantize activations in the training forward (weights always are).
    pub quantize_acts: bool,
    /// Update the activation observers.
    pub observe: bool,
    /// Batch norm frozen: running statistics fixed, exact folding (S4).
    pub bn_frozen: bool,
}

impl Default for QatFlags {
    fn default() -> Self {
        QatFlags {
            quantize_acts: true,
            observe: true,
            bn_frozen: false,
        }
    }
}

/// The savable state of one quantizer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActQuantState {
    pub min: f32,
    pub max: f32,
    pub momentum: f32,
    pub initialized: bool,
    /// Scale and zero point fixed at freeze time; export copies them verbatim.
    pub frozen: Option<(f32, i32)>,
}

/// One activation quantizer; interior mutability because the forward pass
/// updates the observer. Its [`Scheme`] turns the observed range into a
/// scale and zero point (S2, or S2s for the symmetric scheme).
///
/// In training the observer lives on the device of the activations, as the
/// words of [`observer_words`]: each step's range reduction, EMA update and
/// new parameters run there, and the fake quantization reads them there, so
/// a step sends nothing to the host. The host copy is brought up to date
/// when it is read (checkpoints, export, freezing).
#[derive(Debug)]
pub struct ActQuant {
    state: Mutex<State>,
    scheme: Scheme,
}

#[derive(Debug)]
struct State {
    /// The host copy of the observer; stale while `words` holds newer data.
    obs: EmaObserver,
    /// Scale and zero point fixed at the freeze.
    frozen: Option<QParams>,
    /// The device words, authoritative when present.
    words: Option<Tensor>,
    /// A batch was sent to the device observer since `words` was made.
    observed: bool,
}

impl State {
    /// Brings the host copy up to date with the device words and returns
    /// the problem they recorded, if any.
    fn sync(&mut self) -> Result<Option<String>> {
        let Some(t) = &self.words else {
            return Ok(None);
        };
        let w = t.to_vec()?;
        self.obs = observer_words::decode(&w, &self.obs);
        Ok(observer_words::status(&w))
    }
}

impl ActQuant {
    pub fn new(momentum: f32, scheme: Scheme) -> Self {
        ActQuant {
            state: Mutex::new(State {
                obs: EmaObserver::new(momentum),
                frozen: None,
                words: None,
                observed: false,
            }),
            scheme,
        }
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The scale and zero point in force: the frozen ones, else those of the
    /// observed range.
    pub fn qparams(&self) -> Result<QParams> {
        let mut st = self.lock();
        if let Some(q) = st.frozen {
            return Ok(q);
        }
        if let Some(problem) = st.sync()? {
            bail!(Numerical, "{problem}");
        }
        if !st.obs.initialized {
            bail!(Usage, "an activation quantizer has not observed any data yet: train at least one step first");
        }
        self.scheme.qparams(st.obs.min, st.obs.max)
    }

    /// What went wrong in the device observer, if anything: the first batch
    /// range it could not use (a NaN or infinite activation), which it skipped.
    pub fn problem(&self) -> Result<Option<String>> {
        self.lock().sync()
    }

    /// Fixes the scale and zero point from now on (S2). The device words
    /// already hold them: they are those of the same range.
    pub fn freeze(&self) -> Result<()> {
        let q = self.qparams()?;
        let mut st = self.lock();
        st.obs.frozen = true;
        st.frozen = Some(q);
        Ok(())
    }

    pub fn is_frozen(&self) -> bool {
        self.lock().frozen.is_some()
    }

    pub fn save(&self) -> Result<ActQuantState> {
        let mut st = self.lock();
        st.sync()?;
        Ok(ActQuantState {
            min: st.obs.min,
            max: st.obs.max,
            momentum: st.obs.momentum,
            initialized: st.obs.initialized,
            frozen: st.frozen.map(|q| (q.scale, q.zero_point)),
        })
    }

    pub fn load(&self, s: &ActQuantState) {
        let mut st = self.lock();
        st.obs = EmaObserver {
            min: s.min,
            max: s.max,
            momentum: s.momentum,
            initialized: s.initialized,
            frozen: s.frozen.is_some(),
        };
        st.frozen = s
            .frozen
            .map(|(scale, zero_point)| QParams { scale, zero_point });
        st.words = None;
        st.observed = false;
    }

    /// The device words on `device` (made from the host copy on first use,
    /// or when the activations moved to another device), and whether the
    /// observer has seen data.
    fn words_on(&self, st: &mut State, device: &Device) -> Result<Tensor> {
        if let Some(t) = &st.words {
            if t.device().same(device) {
                return Ok(t.clone());
            }
            st.sync()?;
        }
        let w = observer_words::encode(&st.obs, st.frozen, self.scheme);
        let t = Tensor::from_vec(w.to_vec(), [observer_words::LEN], device)?;
        st.words = Some(t.clone());
        st.observed = false;
        Ok(t)
    }

    /// Training forward: observe (unless frozen or disabled), then
    /// fake-quantize when activation quantization is on, all on the
    /// activations' device.
    pub fn forward(&self, x: &Tensor, mode: Mode, flags: QatFlags) -> Result<Tensor> {
        self.run(x, mode, flags, false)
    }

    /// [`ActQuant::forward`] of `relu(x)`: ReLU and quantizer in one pass
    /// where the backend [fuses](crate::backend::Backend::fuses_relu_quant)
    /// them (the same values and gradients), else the two ops.
    pub fn forward_relu(&self, x: &Tensor, mode: Mode, flags: QatFlags) -> Result<Tensor> {
        if x.device().backend().fuses_relu_quant() {
            self.run(x, mode, flags, true)
        } else {
            self.run(&ops::relu(x)?, mode, flags, false)
        }
    }

    /// The quantizer of `x`, or with `relu` of `relu(x)` through the fused
    /// primitives.
    fn run(&self, x: &Tensor, mode: Mode, flags: QatFlags, relu: bool) -> Result<Tensor> {
        let mut st = self.lock();
        let observe = mode == Mode::Train && flags.observe && st.frozen.is_none();
        let plain = |x: &Tensor| if relu { ops::relu(x) } else { Ok(x.clone()) };
        if !observe && !flags.quantize_acts {
            return plain(x);
        }
        let words = self.words_on(&mut st, x.device())?;
        if observe {
            let (be, xs, w) = (x.device().backend(), &x.storage(), &mut words.storage_mut());
            let (m, scheme) = (st.obs.momentum, self.scheme);
            if relu {
                be.relu_observe_act(xs, m, scheme, w)?;
            } else {
                be.observe_act(xs, m, scheme, w)?;
            }
            st.observed = true;
        }
        if !flags.quantize_acts {
            return plain(x);
        }
        if st.frozen.is_none() && !st.obs.initialized && !st.observed {
            bail!(Usage, "an activation quantizer has not observed any data yet: train at least one step first");
        }
        drop(st);
        if relu {
            ops::relu_fake_quant_act(x, &words, ACT_QMIN, ACT_QMAX)
        } else {
            ops::fake_quant_act(x, &words, ACT_QMIN, ACT_QMAX)
        }
    }
}
