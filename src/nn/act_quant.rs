//! The activation quantizer of QAT (S2, S3): an EMA min/max observer and
//! per-tensor fake quantization, with the schedule flags that turn each part
//! on and off.

use crate::backend::FqTensor;
use crate::nn::Mode;
use crate::ops;
use crate::quant::params::{Scheme, ACT_QMAX, ACT_QMIN};
use crate::quant::{EmaObserver, QParams};
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
#[derive(Debug)]
pub struct ActQuant {
    state: Mutex<(EmaObserver, Option<QParams>)>,
    scheme: Scheme,
}

impl ActQuant {
    pub fn new(momentum: f32, scheme: Scheme) -> Self {
        ActQuant {
            state: Mutex::new((EmaObserver::new(momentum), None)),
            scheme,
        }
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (EmaObserver, Option<QParams>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The scale and zero point in force: the frozen ones, else those of the
    /// observed range.
    pub fn qparams(&self) -> Result<QParams> {
        let st = self.lock();
        if let Some(q) = st.1 {
            return Ok(q);
        }
        if !st.0.initialized {
            bail!(Usage, "an activation quantizer has not observed any data yet: train at least one step first");
        }
        self.scheme.qparams(st.0.min, st.0.max)
    }

    /// Fixes the scale and zero point from now on (S2).
    pub fn freeze(&self) -> Result<()> {
        let q = self.qparams()?;
        let mut st = self.lock();
        st.0.frozen = true;
        st.1 = Some(q);
        Ok(())
    }

    pub fn is_frozen(&self) -> bool {
        self.lock().1.is_some()
    }

    pub fn save(&self) -> ActQuantState {
        let st = self.lock();
        ActQuantState {
            min: st.0.min,
            max: st.0.max,
            momentum: st.0.momentum,
            initialized: st.0.initialized,
            frozen: st.1.map(|q| (q.scale, q.zero_point)),
        }
    }

    pub fn load(&self, s: &ActQuantState) {
        let mut st = self.lock();
        st.0 = EmaObserver {
            min: s.min,
            max: s.max,
            momentum: s.momentum,
            initialized: s.initialized,
            frozen: s.frozen.is_some(),
        };
        st.1 = s
            .frozen
            .map(|(scale, zero_point)| QParams { scale, zero_point });
    }

    /// Training forward: observe (unless frozen or disabled), then
    /// fake-quantize when activation quantization is on.
    pub fn forward(&self, x: &Tensor, mode: Mode, flags: QatFlags) -> Result<Tensor> {
        if mode == Mode::Train && flags.observe && !self.is_frozen() {
            let (lo, hi) = x.device().backend().min_max(&x.storage())?;
            self.lock().0.observe_range(lo, hi)?;
        }
        if !flags.quantize_acts {
            return Ok(x.clone());
        }
        let q = self.qparams()?;
        ops::fake_quant_tensor(
            x,
            FqTensor {
                scale: q.scale,
                zero_point: q.zero_point,
                qmin: ACT_QMIN,
                qmax: ACT_QMAX,
            },
        )
    }
}
