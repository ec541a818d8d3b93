//! Run-time compilation of `kernels/*.cu` with NVRTC, and the on-disk cache of
//! the results.

use super::kernels::{KERNEL_FILES, KERNEL_HEADERS};
use super::probe;
use crate::{bail, Result};
use cudarc::nvrtc::sys;
use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;

/// Options every kernel file is compiled with, the floating-point ones
/// pinned rather than left to NVRTC's defaults: no fast math (parity with the
/// CPU reference matters more than the last few percent). IEEE division and
/// square root and no flush-to-zero, as the host build of the emulator;
/// multiply-adds may fuse into FMA (`--fmad=true`, as PyTorch's kernels),
/// which the host build does not do (`-ffp-contract=off`): the float parity
/// tests' tolerances cover that difference, and the bit-exact kernels
/// (quantization, integer layers) contain no multiply-add to fuse.
pub const OPTIONS: &[&str] = &[
    "-std=c++17",
    "--fmad=true",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
];

/// What NVRTC produced for one file.
pub struct Compiled {
    /// CUBIN for an `sm_XY` target, NUL-terminated PTX for `compute_XY`.
    pub image: Vec<u8>,
    /// The compiler log (warnings); empty on a clean compile.
    pub log: String,
}

/// The NVRTC version as (major, minor).
pub fn version() -> Result<(i32, i32)> {
    probe::nvrtc().map_err(crate::Error::Device)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the out-pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| crate::Error::Device(format!("nvrtcVersion: {e}")))?;
    Ok((major, minor))
}

/// The source of a kernel file, by file name.
pub fn source(file: &str) -> Result<&'static str> {
    match KERNEL_FILES.iter().find(|(f, _)| *f == file) {
        Some((_, s)) => Ok(s),
        None => bail!(Device, "no kernel file {file}"),
    }
}

/// Compiles `file` for `arch` (`sm_90` gives CUBIN, `compute_90` gives PTX).
/// Errors carry the compiler log.
pub fn compile(file: &str, arch: &str) -> Result<Compiled> {
    probe::nvrtc().map_err(crate::Error::Device)?;
    let dev = |what: &str, e: sys::nvrtcResult| {
        crate::Error::Device(format!("NVRTC {what} ({file}): {e:?}"))
    };
    let src = CString::new(source(file)?).unwrap();
    let name = CString::new(file).unwrap();
    let bodies: Vec<CString> = KERNEL_HEADERS
        .iter()
        .map(|(_, s)| CString::new(*s).unwrap())
        .collect();
    let names: Vec<CString> = KERNEL_HEADERS
        .iter()
        .map(|(n, _)| CString::new(*n).unwrap())
        .collect();
    let body_ptrs: Vec<*const c_char> = bodies.iter().map(|s| s.as_ptr()).collect();
    let name_ptrs: Vec<*const c_char> = names.iter().map(|s| s.as_ptr()).collect();
    let mut opts: Vec<CString> = OPTIONS.iter().map(|o| CString::new(*o).unwrap()).collect();
    opts.push(CString::new(format!("--gpu-architecture={arch}")).unwrap());
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: all strings are NUL-terminated and outlive the calls; the
    // program is destroyed before returning.
    unsafe {
        let r = sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            body_ptrs.len() as i32,
            body_ptrs.as_ptr(),
            name_ptrs.as_ptr(),
        );
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(dev("create", r));
        }
        let compiled = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        let mut log_len = 0usize;
        sys::nvrtcGetProgramLogSize(prog, &mut log_len);
        let mut log_buf = vec![0 as c_char; log_len.max(1)];
        sys::nvrtcGetProgramLog(prog, log_buf.as_mut_ptr());
        let log = CStr::from_ptr(log_buf.as_ptr())
            .to_string_lossy()
            .trim()
            .to_string();
        let result = if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
            Err(crate::Error::Device(format!(
                "NVRTC failed to compile {file} for {arch}:\n{log}"
            )))
        } else if arch.starts_with("sm_") {
            let mut size = 0usize;
            sys::nvrtcGetCUBINSize(prog, &mut size);
            let mut image = vec![0u8; size];
            let r = sys::nvrtcGetCUBIN(prog, image.as_mut_ptr() as *mut c_char);
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                Err(dev("get CUBIN", r))
            } else {
                Ok(Compiled { image, log })
            }
        } else {
            let mut size = 0usize;
            sys::nvrtcGetPTXSize(prog, &mut size);
            let mut image = vec![0u8; size];
            let r = sys::nvrtcGetPTX(prog, image.as_mut_ptr() as *mut c_char);
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                Err(dev("get PTX", r))
            } else {
                Ok(Compiled { image, log })
            }
        };
        sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}

/// 64-bit FNV-1a: a hash that is stable across Rust versions, for cache keys.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The kernel cache directory: `$QAT_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/qat/kernels`, else `~/.cache/qat/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("QAT_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("qat").join("kernels"))
}

/// CUBIN of `file` for `arch`, from the disk cache when present. The key
/// covers the file and all headers, the architecture, the options and the
/// NVRTC version, so any change recompiles.
pub fn cubin_cached(file: &str, arch: &str) -> Result<Vec<u8>> {
    let (major, minor) = version()?;
    let mut parts: Vec<&[u8]> = vec![source(file)?.as_bytes(), arch.as_bytes()];
    for (n, s) in KERNEL_HEADERS {
        parts.push(n.as_bytes());
        parts.push(s.as_bytes());
    }
    for o in OPTIONS {
        parts.push(o.as_bytes());
    }
    let ver = format!("nvrtc {major}.{minor}");
    parts.push(ver.as_bytes());
    let key = fnv1a(&parts);
    let stem = file.trim_end_matches(".cu");
    let path = cache_dir().map(|d| d.join(format!("{stem}-{arch}-{key:016x}.cubin")));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            return Ok(bytes);
        }
    }
    let c = compile(file, arch)?;
    if let Some(p) = &path {
        // Best effort: a read-only home only costs a recompile next time.
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &c.image).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    }
    Ok(c.image)
}
