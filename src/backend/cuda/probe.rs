//! Finds out, without crashing, whether the CUDA driver and NVRTC can be used.
//! cudarc panics on the first call into a library it cannot load, so every
//! path into cudarc goes through these checks first.

use std::sync::OnceLock;

/// Ok when libcuda loads, initializes and sees at least one GPU; otherwise the
/// reason, for messages.
pub fn cuda_driver() -> Result<(), String> {
    static R: OnceLock<Result<(), String>> = OnceLock::new();
    R.get_or_init(|| {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("libcuda (the NVIDIA driver library) was not found".into());
        }
        cudarc::driver::result::init().map_err(|e| format!("cuInit failed: {e:?}"))?;
        let n = cudarc::driver::result::device::get_count()
            .map_err(|e| format!("cuDeviceGetCount failed: {e:?}"))?;
        if n < 1 {
            return Err("the CUDA driver sees no GPU".into());
        }
        Ok(())
    })
    .clone()
}

/// Ok when libnvrtc loads (it is found through LD_LIBRARY_PATH and the usual
/// library paths, e.g. the `nvidia-cuda-nvrtc` wheel's `nvidia/cu13/lib`).
pub fn nvrtc() -> Result<(), String> {
    static R: OnceLock<Result<(), String>> = OnceLock::new();
    R.get_or_init(|| {
        // SAFETY: only tries to dlopen the library.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            Ok(())
        } else {
            Err("libnvrtc was not found (set LD_LIBRARY_PATH to a CUDA 13 lib directory)".into())
        }
    })
    .clone()
}
