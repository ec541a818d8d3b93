// The emulator's launcher: runs one kernel launch on host threads. Included
// once, by the registry that build.rs generates (see docs/EMULATOR.md).
#pragma once

#include "shim.h"

#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace qat_emu {

using Thunk = void (*)(void **);

struct Entry {
    const char *name;
    Thunk thunk;
    // The first argument of the kernel's __launch_bounds__ (1024 without).
    unsigned max_threads;
};

// Unpacks the driver-style `void **args` (one pointer per kernel parameter)
// into a typed call, exactly as cuLaunchKernel reads them.
template <class... Args, std::size_t... I>
void call_with(void (*k)(Args...), void **a, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cvref_t<Args> *>(a[I])...);
}
template <class... Args>
void call(void (*k)(Args...), void **a) {
    call_with(k, a, std::index_sequence_for<Args...>{});
}
template <auto K>
void thunk(void **a) {
    call(K, a);
}

// Host threads kept for the whole process (one per CUDA thread of the largest
// block seen): creating hundreds of threads per launch cost ~10 ms each.
class Pool {
  public:
    // Runs f(tid) for tid in [0, n) on pool threads; returns when every pool
    // thread has seen this job (idle ones only acknowledge it), so no thread
    // can lag into the next job. Callers are serialized by the launch lock.
    void run(unsigned n, const std::function<void(unsigned)> &f) {
        // A new thread starts at the current generation, so it waits for
        // this job instead of taking the previous one's (ThreadSanitizer
        // found the race when new threads started from generation 0).
        while (threads_ < n) std::thread(&Pool::worker, this, threads_++, gen_.load()).detach();
        job_ = &f;
        active_ = n;
        remaining_.store(threads_);
        gen_.fetch_add(1, std::memory_order_release);
        gen_.notify_all();
        for (unsigned r; (r = remaining_.load(std::memory_order_acquire)) != 0;) remaining_.wait(r);
    }

  private:
    void worker(unsigned id, unsigned seen) {
        for (;;) {
            for (unsigned g; (g = gen_.load(std::memory_order_acquire)) == seen;) gen_.wait(g);
            seen = gen_.load(std::memory_order_acquire);
            if (id < active_) (*job_)(id);
            if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) remaining_.notify_all();
        }
    }
    const std::function<void(unsigned)> *job_ = nullptr;
    unsigned threads_ = 0, active_ = 0;
    std::atomic<unsigned> gen_{0}, remaining_{0};
};

inline int launch(Thunk t, unsigned max_threads, dim3 grid, dim3 block, unsigned shared_bytes, void **args) {
    // Static "shared" arrays belong to the kernel function, so only one block
    // of one launch may run at a time in the whole process.
    static std::mutex lock;
    std::lock_guard<std::mutex> guard(lock);

    const unsigned nthreads = block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) return 2;
    // A launch gets at most 48 KiB of dynamic shared memory unless the
    // kernel opted in (cuFuncSetAttribute), which the backend never does.
    if (shared_bytes > 48u * 1024u) return 3;
    // A GPU refuses a block larger than __launch_bounds__ promised (the
    // compiler may have used the registers that promise left).
    if (nthreads > max_threads) return 4;
    const unsigned nwarps = (nthreads + 31) / 32;
    const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;

    std::unique_ptr<std::max_align_t[]> dyn(new std::max_align_t[shared_bytes / sizeof(std::max_align_t) + 1]);
    // Shared memory starts as garbage on a GPU, and another block's values
    // are no valid starting point either: poison the dynamic part (0xFF
    // bytes: NaN as float, -1 as an integer) before every block.
    auto poison = [&] { std::memset(dyn.get(), 0xFF, shared_bytes); };
    poison();
    Barrier block_bar(nthreads);
    std::vector<Barrier> warp_bars(nwarps);
    std::vector<Warp> warps(nwarps);
    auto warp_size = [&](unsigned w) { return nthreads - w * 32 < 32 ? nthreads - w * 32 : 32; };
    for (unsigned w = 0; w < nwarps; ++w) {
        warp_bars[w].reset(warp_size(w));
        warps[w].bar = &warp_bars[w];
    }
    // Every thread meets here after each block; the completion step (run by
    // the last thread while the others wait) re-arms the barriers that the
    // finished threads dropped out of.
    Barrier block_end(nthreads, [&] {
        poison();
        block_bar.reset(nthreads);
        for (unsigned w = 0; w < nwarps; ++w) warp_bars[w].reset(warp_size(w));
    });

    std::function<void(unsigned)> body = [&](unsigned tid) {
        blockDim = block;
        gridDim = grid;
        threadIdx = dim3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
        ctx.lane = tid % 32;
        ctx.dyn_smem = reinterpret_cast<unsigned char *>(dyn.get());
        ctx.block_bar = &block_bar;
        ctx.warp = &warps[tid / 32];
        ctx.mma_calls = 0;
        for (unsigned long long b = 0; b < nblocks; ++b) {
            blockIdx = dim3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (1ull * grid.x * grid.y))};
            t(args);
            cp_async_check_drained();
            ctx.warp->bar->arrive_and_drop();
            ctx.block_bar->arrive_and_drop();
            block_end.arrive_and_wait();
        }
    };
    // Never destroyed: its detached threads live until the process exits.
    static Pool *pool = new Pool;
    pool->run(nthreads, body);
    return 0;
}

}  // namespace qat_emu
