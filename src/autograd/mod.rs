//! A tape of backward closures (one tape per thread).
//!
//! Each differentiable op computes its output, then, if gradients are enabled
//! and some input is tracked, pushes a closure that maps the output gradient to
//! input gradients. [`backward`] runs the tape in reverse. The gradient of an
//! intermediate tensor is removed from the map as soon as its closure consumed
//! it, so it is freed at once; only leaf gradients survive. Under [`no_grad`]
//! nothing is recorded and no output is tracked, so evaluation costs nothing
//! extra.

use crate::tensor::{Tensor, TensorId};
use crate::{bail, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

type BackwardFn = Box<dyn FnOnce(&Tensor, &mut Grads) -> Result<()>>;

struct Entry {
    output: TensorId,
    backward: BackwardFn,
}

thread_local! {
    static TAPE: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record onto the tape on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` without recording anything (evaluation, optimizer updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(false)));
    f()
}

/// True when an op over `inputs` must record a backward closure.
pub fn should_record(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.tracked())
}

/// Records the backward closure of `output`. The closure receives the gradient
/// of `output` and accumulates into the gradients of its inputs.
pub fn record(output: &Tensor, backward: impl FnOnce(&Tensor, &mut Grads) -> Result<()> + 'static) {
    TAPE.with(|t| {
        t.borrow_mut().push(Entry {
            output: output.id(),
            backward: Box::new(backward),
        })
    });
}

/// Drops everything recorded on this thread (e.g. after a failed step).
pub fn clear_tape() {
    TAPE.with(|t| t.borrow_mut().clear());
}

/// Number of closures waiting on this thread's tape.
pub fn tape_len() -> usize {
    TAPE.with(|t| t.borrow().len())
}

/// Gradients by tensor id.
#[derive(Default)]
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
}

impl Grads {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Adds `g` to the gradient of `t` (if `t` is tracked). `g` must have
    /// `t`'s shape and device; it is taken over when `t` had no gradient yet,
    /// so one gradient may be handed to several inputs (an add's): a
    /// gradient that is still shared gets the sum in a fresh buffer
    /// (`existing + g`, the bits of the in-place `axpy` with `alpha = 1`).
    pub fn accumulate(&mut self, t: &Tensor, g: Tensor) -> Result<()> {
        if !t.tracked() {
            return Ok(());
        }
        if g.shape() != t.shape() {
            bail!(
                Shape,
                "gradient of shape {} for a tensor of shape {}",
                g.shape(),
                t.shape()
            );
        }
        match self.map.get(&t.id()) {
            Some(existing) if existing.is_shared() => {
                let sum = crate::ops::grad_like(existing)?;
                let b = existing.device().backend();
                b.add(&existing.storage(), &g.storage(), &mut sum.storage_mut())?;
                self.map.insert(t.id(), sum);
            }
            Some(existing) => {
                let b = existing.device().backend();
                b.axpy(1.0, &g.storage(), &mut existing.storage_mut())?;
            }
            None => {
                self.map.insert(t.id(), g);
            }
        }
        Ok(())
    }
}

/// Back-propagates from the scalar `loss` through this thread's tape and
/// returns the gradients of the tracked leaves. Consumes the tape.
pub fn backward(loss: &Tensor) -> Result<Grads> {
    if loss.numel() != 1 {
        bail!(
            Shape,
            "backward() needs a scalar loss, got shape {}",
            loss.shape()
        );
    }
    if !loss.tracked() {
        bail!(Usage, "backward() on a tensor that does not depend on any parameter (was it computed under no_grad?)");
    }
    let tape = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let mut grads = Grads::default();
    grads.map.insert(
        loss.id(),
        Tensor::full(loss.shape().clone(), 1.0, loss.device())?,
    );
    for entry in tape.into_iter().rev() {
        if let Some(gy) = grads.map.remove(&entry.output) {
            (entry.backward)(&gy, &mut grads)?;
        }
    }
    // Each gradient returned owns its buffer (two leaves of one add would
    // otherwise share theirs).
    for g in grads.map.values_mut() {
        if g.is_shared() {
            *g = g.detach_copy()?;
        }
    }
    Ok(grads)
}
