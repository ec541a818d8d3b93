//! The real GPU through the CUDA driver API (cudarc, loaded at run time).
//! Kernel files compile with NVRTC on first use, for this GPU's compute
//! capability, and are cached per context (loaded modules) and on disk.

use super::kernels::KERNELS;
use super::runtime::{KernelRuntime, Transfers};
use super::{nvrtc, probe};
use crate::{bail, Error, Result};
use cudarc::driver::{result, sys, CudaContext};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

fn derr(what: &str, e: result::DriverError) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// A loaded kernel function; the driver handles are usable from any thread
/// once the context is current.
#[derive(Clone, Copy)]
struct Func(sys::CUfunction);
// SAFETY: CUfunction handles are plain driver handles, valid in every thread
// that binds the owning context.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}

struct Module(sys::CUmodule);
// SAFETY: as for `Func`.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

pub struct DriverRuntime {
    ctx: Arc<CudaContext>,
    name: String,
    /// `sm_XY` of this GPU.
    arch: String,
    capability: (u32, u32),
    modules: Mutex<HashMap<&'static str, Module>>,
    funcs: Mutex<HashMap<&'static str, Func>>,
    /// Freed allocations by size, for reuse. `cuMemFree` synchronizes the
    /// device, and a training step frees and allocates the same sizes every
    /// time, so freed blocks are kept here instead. Reuse is safe because all
    /// work runs in order on one stream: a kernel that writes a reused block
    /// runs after every kernel that used it before.
    cache: Mutex<HashMap<usize, Vec<u64>>>,
    transfers: Transfers,
}

/// Allocation granularity of the cache (sizes are rounded up to it).
const GRANULE: usize = 512;

impl DriverRuntime {
    /// Opens GPU `ordinal`, or explains why it cannot.
    pub fn new(ordinal: usize) -> Result<Self> {
        probe::cuda_driver().map_err(Error::Device)?;
        probe::nvrtc().map_err(Error::Device)?;
        let ctx =
            CudaContext::new(ordinal).map_err(|e| derr(&format!("opening cuda:{ordinal}"), e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| derr("compute capability", e))?;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(DriverRuntime {
            ctx,
            name: format!("cuda:{ordinal} ({gpu}, sm_{major}{minor})"),
            arch: format!("sm_{major}{minor}"),
            capability: (major as u32, minor as u32),
            modules: Mutex::new(HashMap::new()),
            funcs: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            transfers: Transfers::default(),
        })
    }

    /// Compute capability `(major, minor)`.
    pub fn capability(&self) -> (u32, u32) {
        self.capability
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| derr("binding the CUDA context", e))
    }

    /// The function for `kernel`, compiling and loading its file on first use.
    fn function(&self, kernel: &str) -> Result<sys::CUfunction> {
        let Some(&(name, file)) = KERNELS.iter().find(|(k, _)| *k == kernel) else {
            bail!(Device, "no kernel named {kernel}");
        };
        if let Some(f) = self
            .funcs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(f.0);
        }
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if !modules.contains_key(file) {
            let image = nvrtc::cubin_cached(file, &self.arch)?;
            // SAFETY: a CUBIN image for this device; the context is current.
            let m = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
                .map_err(|e| derr(&format!("loading {file}"), e))?;
            modules.insert(file, Module(m));
        }
        let cname = CString::new(name).unwrap();
        // SAFETY: the module is loaded and the name NUL-terminated.
        let f = unsafe { result::module::get_function(modules[file].0, cname) }
            .map_err(|e| derr(&format!("finding {name} in {file}"), e))?;
        self.funcs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, Func(f));
        Ok(f)
    }

    /// The context, for benchmarks that time with events or call cuBLAS.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

impl KernelRuntime for DriverRuntime {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        let size = bytes.max(1).div_ceil(GRANULE) * GRANULE;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get_mut(&size).and_then(|v| v.pop()) {
            return Ok(p);
        }
        self.bind()?;
        // SAFETY: the context is current.
        if let Ok(p) = unsafe { result::malloc_sync(size) } {
            return Ok(p);
        }
        // Out of memory, perhaps only because of cached blocks: give them
        // back and try once more.
        for (_, ptrs) in cache.drain() {
            for p in ptrs {
                // SAFETY: cached blocks are live allocations nobody uses.
                let _ = unsafe { result::free_sync(p) };
            }
        }
        // SAFETY: the context is current.
        unsafe { result::malloc_sync(size) }
            .map_err(|e| derr(&format!("allocating {bytes} bytes"), e))
    }

    unsafe fn free(&self, ptr: u64, bytes: usize) {
        let size = bytes.max(1).div_ceil(GRANULE) * GRANULE;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(size)
            .or_default()
            .push(ptr);
    }

    fn upload(&self, dst: u64, src: &[f32]) -> Result<()> {
        self.bind()?;
        self.transfers.host_to_device();
        // SAFETY: `dst` is an allocation of at least `src.len()` floats.
        unsafe { result::memcpy_htod_sync(dst, src) }.map_err(|e| derr("copy to device", e))
    }

    fn download(&self, src: u64, dst: &mut [f32]) -> Result<()> {
        self.bind()?;
        self.transfers.device_to_host();
        // SAFETY: `src` is an allocation of at least `dst.len()` floats.
        unsafe { result::memcpy_dtoh_sync(dst, src) }
            .map_err(|e| derr("copy to host (or an earlier kernel)", e))
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both are allocations of at least `bytes` bytes.
        unsafe { result::memcpy_dtod_sync(dst, src, bytes) }.map_err(|e| derr("device copy", e))
    }

    unsafe fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.bind()?;
        let f = self.function(kernel)?;
        self.transfers.launch();
        // SAFETY: the caller guarantees `args` match the kernel's parameters;
        // the null stream orders this launch with the synchronous copies.
        unsafe { result::launch_kernel(f, grid, block, shared_bytes, std::ptr::null_mut(), args) }
            .map_err(|e| {
                derr(
                    &format!("launching {kernel} grid {grid:?} block {block:?}"),
                    e,
                )
            })
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.transfers.synchronization();
        result::ctx::synchronize().map_err(|e| derr("synchronize", e))
    }

    fn transfers(&self) -> &Transfers {
        &self.transfers
    }
}
