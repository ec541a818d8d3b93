// The emulator's launcher: runs one kernel launch on host threads. Included
// once, by the registry that build.rs generates (see docs/EMULATOR.md).
#pragma once

#include "shim.h"

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace qat_emu {

using Thunk = void (*)(void **);

struct Entry {
    const char *name;
    Thunk thunk;
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

inline int launch(Thunk t, dim3 grid, dim3 block, unsigned shared_bytes, void **args) {
    // Static "shared" arrays belong to the kernel function, so only one block
    // of one launch may run at a time in the whole process.
    static std::mutex lock;
    std::lock_guard<std::mutex> guard(lock);

    const unsigned nthreads = block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) return 2;
    const unsigned nwarps = (nthreads + 31) / 32;
    const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;

    std::unique_ptr<std::max_align_t[]> dyn(new std::max_align_t[shared_bytes / sizeof(std::max_align_t) + 1]);
    std::optional<Barrier> block_bar;
    std::vector<std::optional<Barrier>> warp_bars(nwarps);
    std::vector<Warp> warps(nwarps);
    auto rebuild = [&]() noexcept {
        block_bar.emplace(nthreads);
        for (unsigned w = 0; w < nwarps; ++w) {
            unsigned size = nthreads - w * 32 < 32 ? nthreads - w * 32 : 32;
            warp_bars[w].emplace(size);
            warps[w].bar = &*warp_bars[w];
        }
    };
    rebuild();
    // Every thread meets here after each block; the completion step (run by
    // one thread while the others wait) gives the next block fresh barriers.
    std::barrier<decltype(rebuild)> block_end(nthreads, rebuild);

    auto body = [&](unsigned tid) {
        blockDim = block;
        gridDim = grid;
        threadIdx = dim3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
        ctx.lane = tid % 32;
        ctx.dyn_smem = reinterpret_cast<unsigned char *>(dyn.get());
        for (unsigned long long b = 0; b < nblocks; ++b) {
            blockIdx = dim3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (1ull * grid.x * grid.y))};
            ctx.block_bar = &*block_bar;
            ctx.warp = &warps[tid / 32];
            t(args);
            ctx.warp->bar->arrive_and_drop();
            ctx.block_bar->arrive_and_drop();
            block_end.arrive_and_wait();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned tid = 0; tid < nthreads; ++tid) threads.emplace_back(body, tid);
    for (auto &th : threads) th.join();
    return 0;
}

}  // namespace qat_emu
