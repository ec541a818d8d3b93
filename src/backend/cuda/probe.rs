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

/// Ok when libnvrtc loads. It is looked up by name (LD_LIBRARY_PATH and the
/// system paths), then in `$QAT_NVRTC_DIR`, `$CUDA_HOME/lib64`,
/// `/usr/local/cuda/lib64` and the `nvidia-cuda-nvrtc` pip wheel
/// (`site-packages/nvidia/cu13/lib` of [`python`]).
pub fn nvrtc() -> Result<(), String> {
    static R: OnceLock<Result<(), String>> = OnceLock::new();
    R.get_or_init(|| {
        // SAFETY: only tries to dlopen the library.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Ok(());
        }
        if preload_nvrtc() && unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Ok(());
        }
        Err(format!(
            "libnvrtc.so.13 was not found (looked by name, in $QAT_NVRTC_DIR, \
             $CUDA_HOME/lib64, $CUDA_PATH/lib64, /usr/local/cuda/lib64 and the nvidia-cuda-nvrtc wheel \
             of `{}`): pip install \"nvidia-cuda-nvrtc==13.0.*\", \
             or put a CUDA 13 lib directory on LD_LIBRARY_PATH",
            python()
        ))
    })
    .clone()
}

/// The Python whose `nvidia-cuda-nvrtc` wheel is searched: `$QAT_PYTHON`,
/// else `python3`.
pub fn python() -> String {
    std::env::var("QAT_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Loads libnvrtc by absolute path from the usual install places. Once loaded,
/// cudarc's later `dlopen("libnvrtc.so.13")` finds it by its soname.
#[cfg(target_os = "linux")]
fn preload_nvrtc() -> bool {
    use std::ffi::{c_char, c_int, c_void, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;
    extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    }
    const RTLD_NOW: c_int = 2;
    const RTLD_GLOBAL: c_int = 0x100;

    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["QAT_NVRTC_DIR"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(d.into());
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(PathBuf::from(d).join("lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    // The pip wheel: ask Python where its `nvidia` namespace package lives.
    let py = "import nvidia, os; print('\\n'.join(os.path.join(p, 'cu13', 'lib') for p in nvidia.__path__))";
    if let Ok(out) = std::process::Command::new(python())
        .args(["-c", py])
        .output()
    {
        dirs.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(PathBuf::from),
        );
    }
    let load = |path: &std::path::Path| -> bool {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: loading a shared library by path; the handle is kept for
        // the life of the process on purpose.
        !unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) }.is_null()
    };
    for dir in dirs {
        let lib = dir.join("libnvrtc.so.13");
        if !lib.exists() {
            continue;
        }
        // libnvrtc opens its builtins library (`libnvrtc-builtins.so.13.N`)
        // by soname at the first compile, and the pip wheel's libnvrtc has no
        // RUNPATH, so outside LD_LIBRARY_PATH that lookup fails. Loading the
        // builtins from the same folder first lets the later lookup find the
        // already-loaded library by its soname.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("libnvrtc-builtins.so.13") {
                    load(&e.path());
                }
            }
        }
        if load(&lib) {
            return true;
        }
    }
    false
}

#[cfg(not(target_os = "linux"))]
fn preload_nvrtc() -> bool {
    false
}
