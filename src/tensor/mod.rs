//! f32 tensors on a device, and plain host tensors of quantized integers.

mod host;
mod shape;

pub use host::HostTensor;
pub use shape::Shape;

use crate::autograd;
use crate::backend::{Device, Storage};
use crate::{bail, Result};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Identity of a tensor for the autograd tape and the gradient map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

struct Inner {
    id: TensorId,
    shape: Shape,
    device: Device,
    storage: RwLock<Storage>,
    /// True for trainable leaves and for op results that depend on one while
    /// gradients are enabled.
    tracked: bool,
}

impl Drop for Inner {
    /// Hands the buffer back to its backend, which may reuse it for the next
    /// output of the same size (the CPU backend does: `Backend::empty`).
    fn drop(&mut self) {
        let storage = self.storage.get_mut().unwrap_or_else(|e| e.into_inner());
        let s = std::mem::replace(storage, Storage::Host(Vec::new()));
        self.device.backend().recycle(s);
    }
}

/// An f32 tensor, row-major (NCHW for images). Cloning shares the storage.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

impl Tensor {
    pub(crate) fn from_storage(
        storage: Storage,
        shape: Shape,
        device: Device,
        tracked: bool,
    ) -> Tensor {
        debug_assert_eq!(storage.len(), shape.numel());
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape,
            device,
            storage: RwLock::new(storage),
            tracked,
        }))
    }

    /// A constant tensor from host data; errors if `data` does not fill `shape`.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::new_leaf(data, shape.into(), device, false)
    }

    fn new_leaf(data: Vec<f32>, shape: Shape, device: &Device, tracked: bool) -> Result<Tensor> {
        if data.len() != shape.numel() {
            bail!(Shape, "{} values cannot fill shape {shape}", data.len());
        }
        let storage = if device.is_cpu() {
            Storage::Host(data)
        } else {
            device.backend().upload(&data)?
        };
        Ok(Tensor::from_storage(
            storage,
            shape,
            device.clone(),
            tracked,
        ))
    }

    pub fn from_slice(data: &[f32], shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    pub fn zeros(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let s = device.backend().zeros(shape.numel())?;
        Ok(Tensor::from_storage(s, shape, device.clone(), false))
    }

    pub fn full(shape: impl Into<Shape>, value: f32, device: &Device) -> Result<Tensor> {
        let t = Tensor::zeros(shape, device)?;
        device.backend().fill(&mut t.storage_mut(), value)?;
        Ok(t)
    }

    /// A trainable leaf: gradients flow into it.
    pub fn param(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::new_leaf(data, shape.into(), device, true)
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }
    pub fn numel(&self) -> usize {
        self.0.shape.numel()
    }
    pub fn device(&self) -> &Device {
        &self.0.device
    }
    /// Whether gradients flow through this tensor.
    pub fn tracked(&self) -> bool {
        self.0.tracked
    }
    /// Whether another handle to this tensor exists (a gradient handed to
    /// two inputs, which must not be accumulated into in place).
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies the values to the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.device().backend().download(&self.storage())
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            bail!(
                Shape,
                "item() needs a single-element tensor, got shape {}",
                self.shape()
            );
        }
        Ok(self.to_vec()?[0])
    }

    /// An untracked copy with its own storage.
    pub fn detach_copy(&self) -> Result<Tensor> {
        let s = self.device().backend().copy(&self.storage())?;
        Ok(Tensor::from_storage(
            s,
            self.shape().clone(),
            self.device().clone(),
            false,
        ))
    }

    /// A copy of the values under another shape with the same element count:
    /// the result has its own storage, so writing to either tensor later
    /// (e.g. [`Tensor::copy_from_slice`]) leaves the other as it was. The
    /// result is tracked like `self` and passes gradients through.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        crate::ops::reshape(self, shape.into())
    }

    /// Overwrites the values from host data of the same length.
    pub fn copy_from_slice(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            bail!(
                Shape,
                "cannot copy {} values into a tensor of shape {}",
                data.len(),
                self.shape()
            );
        }
        *self.storage_mut() = self.device().backend().upload(data)?;
        Ok(())
    }

    /// Copies to another device.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.to_vec()?, self.shape().clone(), device)
    }

    /// Runs backward from this scalar, returning the gradients of all tracked
    /// leaves it depends on.
    pub fn backward(&self) -> Result<autograd::Grads> {
        autograd::backward(self)
    }

    /// Checks that `other` lives on this tensor's device.
    pub(crate) fn check_same_device(&self, other: &Tensor, op: &str) -> Result<()> {
        if !self.device().same(other.device()) {
            bail!(
                DeviceMismatch,
                "{op}: operands on {} and {}",
                self.device().backend().name(),
                other.device().backend().name()
            );
        }
        Ok(())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(id={:?}, shape={}, device={})",
            self.0.id,
            self.0.shape,
            self.0.device.backend().name()
        )
    }
}
