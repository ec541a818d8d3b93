//! The seam between the CUDA backend's launch code and whatever runs the
//! kernels: the real driver ([`super::driver`]) or the host emulator
//! ([`super::emulator`]). Both take the same driver-style launch (a kernel name,
//! grid, block, dynamic shared bytes and one `*mut c_void` per parameter), so
//! every line of launch code is shared.

use crate::Result;
use std::ffi::c_void;
use std::sync::Arc;

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
