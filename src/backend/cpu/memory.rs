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
//!
//! Raising the thresholds keeps the pages, but every output was still
//! zero-filled before the op overwrote it (about 9% of a QAT step). So the
//! CPU backend also recycles: a dropped tensor's buffer goes back to a pool
//! by length ([`give_back`]), and [`take`] hands it out again, with its old
//! values, for an output the next op writes in full (`Backend::empty`).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, Once};

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

/// Buffers shorter than this are allocated and dropped as usual (the fill
/// costs nothing next to the bookkeeping).
const MIN_POOLED: usize = 4096;
/// At most this many bytes wait in the pool; more are freed.
const POOL_BYTES: usize = 1 << 30;

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(Default::default);

/// `QAT_POISON_EMPTY=1` (set by the test script) or a debug build: every
/// buffer [`take`] hands out is filled with NaN, so an op that leaves part of
/// its output unwritten shows up as NaN in the tests.
static POISON: LazyLock<bool> = LazyLock::new(|| {
    cfg!(debug_assertions) || std::env::var_os("QAT_POISON_EMPTY").is_some_and(|v| v == "1")
});

/// A buffer of `len` values with unspecified contents: a recycled one of
/// that length when the pool has one, else a fresh zeroed one.
pub fn take(len: usize) -> Vec<f32> {
    let recycled = if len >= MIN_POOLED {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let v = pool.free.get_mut(&len).and_then(|l| l.pop());
        if v.is_some() {
            pool.bytes -= 4 * len;
        }
        v
    } else {
        None
    };
    let mut v = recycled.unwrap_or_else(|| vec![0.0; len]);
    if *POISON {
        v.fill(f32::NAN);
    }
    v
}

/// Keeps `v` for a later [`take`] of its length, while the pool has room.
pub fn give_back(v: Vec<f32>) {
    let len = v.len();
    if len < MIN_POOLED || v.capacity() != len {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.bytes + 4 * len > POOL_BYTES {
        return;
    }
    pool.bytes += 4 * len;
    pool.free.entry(len).or_default().push(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A returned buffer comes back for the next request of its length (its
    /// allocation, not a copy), and not for another length.
    #[test]
    fn buffers_are_reused_by_length() {
        let len = MIN_POOLED + 12_345; // a length no other test uses
        let v = take(len);
        let p = v.as_ptr();
        give_back(v);
        let other = take(len + 1);
        assert_ne!(other.as_ptr(), p);
        let again = take(len);
        assert_eq!(again.as_ptr(), p, "the pooled buffer was not reused");
        assert_eq!(again.len(), len);
    }
}
