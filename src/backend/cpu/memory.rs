//! How the process's allocator treats tensor buffers.
//!
//! A training step allocates and frees the same few hundred buffers, of up
//! to tens of MiB each, every step. With glibc's default tunables every
//! buffer above the (adaptive, at most 32 MiB) mmap threshold is a fresh
//! `mmap`, and freed heap tops beyond the trim threshold go back to the
//! kernel: either way the next step's writes page-fault on every 4 KiB and
//! the kernel zeroes each page. On the small ResNet (batch 128, 2 threads)
//! that made up about a third of a QAT step, spread over every op that
//! writes a fresh output (`docs/PERF.md`, "Memory"). Raising both
//! thresholds keeps freed buffers in the heap, so the steady state reuses
//! mapped, warm memory; peak memory is unchanged (what is freed is reused,
//! not added to).

use std::sync::Once;

/// Keeps freed tensor memory mapped for reuse (glibc: `mallopt` of the mmap
/// and trim thresholds; other C libraries: nothing). Idempotent; called
/// when the CPU backend is created. `QAT_MALLOC_DEFAULTS=1` leaves the
/// allocator as it was (for measuring the difference).
pub fn keep_freed_memory_mapped() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("QAT_MALLOC_DEFAULTS").is_some_and(|v| v == "1") {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes tunables of the allocator; it is
        // called before any large tensor exists and its result is advisory
        // (0 means the allocator refused, which only costs speed).
        unsafe {
            // Buffers below 1 GiB come from the heap; glibc before 2.35
            // caps the threshold at 32 MiB and refuses more (returns 0).
            if libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 0 {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            }
            // Never hand the heap's free top back to the kernel.
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}
