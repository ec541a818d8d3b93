//! The emulated CUDA device: device memory is host memory, and launches go to
//! the host-compiled copies of `kernels/*.cu` (built by `build.rs` through the
//! shim in `kernels/emu/shim.h`; see docs/EMULATOR.md). The CUDA backend's
//! launch code runs unchanged on top of it.

use super::runtime::{KernelRuntime, Transfers};
use crate::{bail, Result};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::Mutex;

extern "C" {
    fn qat_emu_launch(
        name: *const c_char,
        gx: c_uint,
        gy: c_uint,
        gz: c_uint,
        bx: c_uint,
        by: c_uint,
        bz: c_uint,
        shared_bytes: c_uint,
        args: *mut *mut c_void,
    ) -> c_int;
}

const ALIGN: usize = 256;

/// Host memory and host threads standing in for a GPU.
#[derive(Default)]
pub struct EmuRuntime {
    /// Live allocations and their sizes, to free with the right layout and to
    /// reject foreign pointers in copies.
    allocs: Mutex<HashMap<u64, usize>>,
    transfers: Transfers,
}

impl EmuRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks that `[ptr, ptr + bytes)` lies inside one live allocation.
    fn check(&self, ptr: u64, bytes: usize) -> Result<()> {
        let allocs = self.allocs.lock().unwrap_or_else(|e| e.into_inner());
        let ok = allocs
            .iter()
            .any(|(&base, &size)| ptr >= base && ptr + bytes as u64 <= base + size as u64);
        if !ok {
            bail!(
                Device,
                "cuda-emu: {bytes} bytes at {ptr:#x} are not inside an allocation"
            );
        }
        Ok(())
    }
}

impl KernelRuntime for EmuRuntime {
    fn name(&self) -> String {
        "cuda-emu".into()
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|e| crate::Error::Device(e.to_string()))?;
        // SAFETY: the layout has non-zero size.
        let p = unsafe { alloc(layout) };
        if p.is_null() {
            bail!(Device, "cuda-emu: out of memory allocating {bytes} bytes");
        }
        // A GPU hands out memory holding whatever was there; poison it so
        // that a kernel reading before writing shows up: every byte 0xFF is
        // a NaN as f32 and -1 as an integer.
        // SAFETY: `p` points to `layout.size()` freshly allocated bytes.
        unsafe { std::ptr::write_bytes(p, 0xFF, layout.size()) };
        self.allocs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p as u64, bytes.max(1));
        Ok(p as u64)
    }

    unsafe fn free(&self, ptr: u64, _bytes: usize) {
        if let Some(size) = self
            .allocs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ptr)
        {
            // SAFETY: allocated in `alloc` with this size and alignment.
            unsafe {
                dealloc(
                    ptr as *mut u8,
                    Layout::from_size_align_unchecked(size, ALIGN),
                )
            }
        }
    }

    fn upload(&self, dst: u64, src: &[f32]) -> Result<()> {
        self.check(dst, std::mem::size_of_val(src))?;
        self.transfers.host_to_device();
        // SAFETY: the destination range was checked to be allocated.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut f32, src.len()) };
        Ok(())
    }

    fn download(&self, src: u64, dst: &mut [f32]) -> Result<()> {
        self.check(src, std::mem::size_of_val(dst))?;
        self.transfers.device_to_host();
        // SAFETY: the source range was checked to be allocated.
        unsafe { std::ptr::copy_nonoverlapping(src as *const f32, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.check(dst, bytes)?;
        self.check(src, bytes)?;
        // SAFETY: both ranges were checked; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    unsafe fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let name = CString::new(kernel).map_err(|e| crate::Error::Device(e.to_string()))?;
        self.transfers.launch();
        // SAFETY: the caller guarantees `args` match the kernel's parameters.
        let rc = unsafe {
            qat_emu_launch(
                name.as_ptr(),
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                shared_bytes,
                args.as_mut_ptr(),
            )
        };
        match rc {
            0 => Ok(()),
            1 => bail!(Device, "cuda-emu: no kernel named {kernel}"),
            3 => bail!(
                Device,
                "cuda-emu: launch of {kernel} asks for {shared_bytes} bytes of dynamic shared \
memory, above the 48 KiB a launch gets without opting in"
            ),
            4 => bail!(
                Device,
                "cuda-emu: launch of {kernel} with a block of {block:?} threads, more than its \
__launch_bounds__ allow (a GPU refuses it too)"
            ),
            _ => bail!(
                Device,
                "cuda-emu: invalid launch of {kernel}: grid {grid:?}, block {block:?}"
            ),
        }
    }

    fn synchronize(&self) -> Result<()> {
        self.transfers.synchronization();
        Ok(())
    }

    fn transfers(&self) -> &Transfers {
        &self.transfers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_allocations_hold_nan_not_zeros() {
        let rt = EmuRuntime::new();
        let p = rt.alloc(4 * 1000).unwrap();
        let mut v = vec![0.0f32; 1000];
        rt.download(p, &mut v).unwrap();
        assert!(
            v.iter().all(|x| x.is_nan()),
            "fresh emulated memory must be poisoned"
        );
        rt.upload(p, &[1.0; 1000]).unwrap();
        rt.download(p, &mut v).unwrap();
        assert!(v.iter().all(|&x| x == 1.0));
        // SAFETY: allocated above with this size, not used afterwards.
        unsafe { rt.free(p, 4 * 1000) };
    }

    #[test]
    fn launches_above_the_dynamic_shared_limit_are_refused() {
        let rt = EmuRuntime::new();
        let y = rt.alloc(4 * 32).unwrap();
        let (mut ptr, mut value, mut n) = (y, 2.0f32, 32i32);
        let mut args: Vec<*mut c_void> = vec![
            (&mut ptr as *mut u64).cast(),
            (&mut value as *mut f32).cast(),
            (&mut n as *mut i32).cast(),
        ];
        // SAFETY: the arguments match fill_fwd_f32(float *y, float value, int n).
        let ok = unsafe { rt.launch("fill_fwd_f32", (1, 1, 1), (32, 1, 1), 48 * 1024, &mut args) };
        assert!(ok.is_ok());
        let err = unsafe {
            rt.launch(
                "fill_fwd_f32",
                (1, 1, 1),
                (32, 1, 1),
                48 * 1024 + 4,
                &mut args,
            )
        }
        .unwrap_err()
        .to_string();
        assert!(err.contains("48 KiB"), "{err}");
        // SAFETY: allocated above with this size, not used afterwards.
        unsafe { rt.free(y, 4 * 32) };
    }

    /// A block larger than the kernel's `__launch_bounds__` is refused
    /// before it runs, as a GPU refuses it; at the bound it runs.
    #[test]
    fn blocks_beyond_launch_bounds_are_refused() {
        let rt = EmuRuntime::new();
        let n = 4usize;
        let x = rt.alloc(4 * n).unwrap();
        rt.upload(x, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let out = rt.alloc(4).unwrap();
        let (mut px, mut po, mut len) = (x, out, n as i32);
        let mut args: Vec<*mut c_void> = vec![
            (&mut px as *mut u64).cast(),
            (&mut po as *mut u64).cast(),
            (&mut len as *mut i32).cast(),
        ];
        // block_sum_check_f32: __launch_bounds__(QAT_BLOCK), QAT_BLOCK = 256.
        for (threads, ok) in [(256, true), (288, false), (1024, false)] {
            // SAFETY: the arguments match block_sum_check_f32(x, out, n).
            let r = unsafe {
                rt.launch(
                    "block_sum_check_f32",
                    (1, 1, 1),
                    (threads, 1, 1),
                    0,
                    &mut args,
                )
            };
            assert_eq!(r.is_ok(), ok, "{threads} threads: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("__launch_bounds__"), "{e}");
            }
        }
        let mut got = [0f32];
        rt.download(out, &mut got).unwrap();
        assert_eq!(got[0], 10.0);
        // SAFETY: allocated above with these sizes, not used afterwards.
        unsafe {
            rt.free(x, 4 * n);
            rt.free(out, 4);
        }
    }

    /// `kernels/selfcheck.cu`'s shuffles against the programming guide's
    /// rules for every width, written out here lane by lane.
    #[test]
    fn warp_shuffles_follow_the_documented_width_rules() {
        let rt = EmuRuntime::new();
        let out = rt.alloc(4 * 16 * 32).unwrap();
        let mut ptr = out;
        let mut args: Vec<*mut c_void> = vec![(&mut ptr as *mut u64).cast()];
        // SAFETY: the argument matches shfl_semantics_i32(int *out).
        unsafe { rt.launch("shfl_semantics_i32", (1, 1, 1), (32, 1, 1), 0, &mut args) }.unwrap();
        let mut raw = vec![0f32; 16 * 32];
        rt.download(out, &mut raw).unwrap();
        let got: Vec<i32> = raw.iter().map(|v| v.to_bits() as i32).collect();
        for k in 0..4 {
            let w = 32 >> k;
            for l in 0..32i32 {
                let seg = l & !(w - 1);
                let own = 100 + l;
                let idx = l + 3;
                let xor = l ^ 5;
                let want = [
                    100 + seg + (idx & (w - 1)),
                    if xor >= seg + w { own } else { 100 + xor },
                    if (l & (w - 1)) + 3 >= w { own } else { own + 3 },
                    if (l & (w - 1)) < 3 { own } else { own - 3 },
                ];
                for (f, want) in want.iter().enumerate() {
                    let g = got[(k * 4 + f) * 32 + l as usize];
                    assert_eq!(g, *want, "width {w}, lane {l}, shuffle {f}");
                }
            }
        }
        // SAFETY: allocated above with this size, not used afterwards.
        unsafe { rt.free(out, 4 * 16 * 32) };
    }
}
