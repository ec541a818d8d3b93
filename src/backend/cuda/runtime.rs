//! The seam between the CUDA backend's launch code and whatever runs the
//! kernels: the real driver ([`super::driver`]) or the host emulator
//! ([`super::emulator`]). Both take the same driver-style launch (a kernel name,
//! grid, block, dynamic shared bytes and one `*mut c_void` per parameter), so
//! every line of launch code is shared.

use crate::Result;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a runtime has done that makes the host wait for the device: copies
/// to and from the host (synchronous on the null stream) and explicit
/// synchronizations; launches for scale. A training step that keeps its
/// state on the device makes one device-to-host copy (the loss).
#[derive(Debug, Default)]
pub struct Transfers {
    host_to_device: AtomicU64,
    device_to_host: AtomicU64,
    synchronizations: AtomicU64,
    launches: AtomicU64,
}

/// A snapshot of [`Transfers`]; `b - a` is what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCounts {
    pub host_to_device: u64,
    pub device_to_host: u64,
    pub synchronizations: u64,
    pub launches: u64,
}

impl std::ops::Sub for TransferCounts {
    type Output = TransferCounts;
    fn sub(self, o: TransferCounts) -> TransferCounts {
        TransferCounts {
            host_to_device: self.host_to_device - o.host_to_device,
            device_to_host: self.device_to_host - o.device_to_host,
            synchronizations: self.synchronizations - o.synchronizations,
            launches: self.launches - o.launches,
        }
    }
}

impl Transfers {
    pub fn host_to_device(&self) {
        self.host_to_device.fetch_add(1, Ordering::Relaxed);
    }
    pub fn device_to_host(&self) {
        self.device_to_host.fetch_add(1, Ordering::Relaxed);
    }
    pub fn synchronization(&self) {
        self.synchronizations.fetch_add(1, Ordering::Relaxed);
    }
    pub fn launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }
    pub fn counts(&self) -> TransferCounts {
        TransferCounts {
            host_to_device: self.host_to_device.load(Ordering::Relaxed),
            device_to_host: self.device_to_host.load(Ordering::Relaxed),
            synchronizations: self.synchronizations.load(Ordering::Relaxed),
            launches: self.launches.load(Ordering::Relaxed),
        }
    }
}

/// Memory and launches on one device. Device addresses are `u64`, as in the
/// driver API; the emulator's are host addresses.
pub trait KernelRuntime: Send + Sync {
    /// Short name for messages, e.g. `cuda:0 (NVIDIA H100 80GB HBM3)`.
    fn name(&self) -> String;
    /// Allocates `bytes` (at least 256-byte aligned).
    fn alloc(&self, bytes: usize) -> Result<u64>;
    /// Frees an address from [`alloc`](Self::alloc) of `bytes` bytes (the
    /// runtime may keep it for reuse).
    ///
    /// # Safety
    /// `ptr` came from this runtime's `alloc(bytes)` and is not used afterwards.
    unsafe fn free(&self, ptr: u64, bytes: usize);
    fn upload(&self, dst: u64, src: &[f32]) -> Result<()>;
    fn download(&self, src: u64, dst: &mut [f32]) -> Result<()>;
    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Launches `kernel` (an entry point of `kernels/*.cu`).
    ///
    /// # Safety
    /// `args` must match the kernel's parameters one for one, each pointing to
    /// a value of the parameter's type; device pointers must be valid.
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        args: &mut [*mut c_void],
    ) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// The counts of copies, synchronizations and launches so far.
    fn transfers(&self) -> &Transfers;
}

/// A device allocation of `len` f32 values, freed on drop.
pub struct DeviceBuffer {
    ptr: u64,
    len: usize,
    rt: Arc<dyn KernelRuntime>,
}

impl DeviceBuffer {
    pub fn new(rt: &Arc<dyn KernelRuntime>, len: usize) -> Result<Self> {
        // Zero-length tensors still get a distinct, valid address.
        let ptr = rt.alloc(Self::bytes(len))?;
        Ok(DeviceBuffer {
            ptr,
            len,
            rt: rt.clone(),
        })
    }
    fn bytes(len: usize) -> usize {
        len.max(1) * 4
    }
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The runtime that owns this buffer.
    pub fn runtime(&self) -> &Arc<dyn KernelRuntime> {
        &self.rt
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `rt.alloc` and this is its only owner.
        unsafe { self.rt.free(self.ptr, Self::bytes(self.len)) }
    }
}

/// One kernel argument by value, kept alive while the launch reads it.
#[derive(Clone, Debug)]
pub enum Arg {
    /// A device pointer (0 for a null pointer).
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    /// A by-value struct of `i32` fields, laid out as in C.
    I32s(Vec<i32>),
}

/// The driver-style parameter array: one pointer to each argument's value.
/// The pointers borrow `args`, which must outlive the launch.
pub fn arg_pointers(args: &mut [Arg]) -> Vec<*mut c_void> {
    args.iter_mut()
        .map(|a| match a {
            Arg::Ptr(p) => p as *mut u64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::I64(v) => v as *mut i64 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
            Arg::I32s(v) => v.as_mut_ptr() as *mut c_void,
        })
        .collect()
}
