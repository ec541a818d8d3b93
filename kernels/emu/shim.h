// Host shim: lets kernels/*.cu compile with the host C++ compiler (C++20,
// -pthread) so the emulated CUDA device can run the very same kernel code.
//
// Model (see docs/EMULATOR.md):
// - one host thread per CUDA thread of a block (from a persistent pool, see
//   launch.h); the blocks of a launch run one after another, and launches are
//   serialized by a global lock;
// - threadIdx/blockIdx/blockDim/gridDim are thread_local variables set by the
//   launcher;
// - __syncthreads() is a barrier over the block's threads (class Barrier
//   below, std::barrier's interface); a thread that returns from the kernel
//   drops out of it (arrive_and_drop), so early returns behave as on a GPU;
// - __shared__ is `static`: one copy per kernel function, shared by the threads
//   of the (single) running block;
// - warp intrinsics (__shfl_xor_sync, __shfl_down_sync, __syncwarp) go through
//   a per-warp scratch array and a per-warp barrier.
//
// Limits (kernels must stay inside them):
// - no inline PTX (tensor cores only through kernels/mma.cuh, asynchronous
//   copies only through kernels/async_copy.cuh, both emulated below), no
//   cooperative groups, no textures;
// - warp shuffles need every lane of the warp to call them, and value types
//   of at most 8 bytes (mask and width follow the programming guide);
// - dynamic shared memory only through QAT_DYN_SHARED(type, name);
// - __shared__ arrays must not have initializers, and must not be read before
//   written (they keep the previous block's values, as real shared memory may);
// - at most 1024 threads per block; one host thread each, so keep test shapes
//   small: the emulator checks indexing and synchronization, not speed.
#pragma once

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <deque>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace qat_emu {

// A central barrier with std::barrier's arrive_and_wait / arrive_and_drop,
// plus reset() (only while no thread is inside) and an optional completion
// step run by the last arriver before the others are released.
class Barrier {
  public:
    explicit Barrier(unsigned n = 0, std::function<void()> done = {}) : done_(std::move(done)) { reset(n); }
    void reset(unsigned n) {
        expected_.store(n);
        count_.store(n);
    }
    void arrive_and_wait() {
        const unsigned p = phase_.load(std::memory_order_acquire);
        if (count_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            complete();
        } else {
            while (phase_.load(std::memory_order_acquire) == p) phase_.wait(p, std::memory_order_acquire);
        }
    }
    void arrive_and_drop() {
        expected_.fetch_sub(1, std::memory_order_acq_rel);
        if (count_.fetch_sub(1, std::memory_order_acq_rel) == 1) complete();
    }

  private:
    void complete() {
        if (done_) done_();
        count_.store(expected_.load());
        phase_.fetch_add(1, std::memory_order_acq_rel);
        phase_.notify_all();
    }
    std::atomic<unsigned> expected_{0}, count_{0}, phase_{0};
    std::function<void()> done_;
};

struct Warp {
    Barrier *bar;
    uint64_t slot[32];
    // mma.sync operands of each lane, and the call number that wrote them.
    uint32_t mma_a[32][4], mma_b[32][2];
    uint64_t mma_call[32];
};

struct ThreadCtx {
    Barrier *block_bar = nullptr;
    Warp *warp = nullptr;
    unsigned lane = 0;
    unsigned char *dyn_smem = nullptr;
    // mma.sync calls this thread made in the current launch.
    uint64_t mma_calls = 0;
    // cp.async copies in flight: issued since the last commit, and committed
    // groups, oldest first (kernels/async_copy.cuh).
    struct AsyncCopy {
        unsigned char *dst;
        unsigned char bytes[16];
        unsigned n;
    };
    std::vector<AsyncCopy> async_open;
    std::deque<std::vector<AsyncCopy>> async_groups;
};

inline thread_local ThreadCtx ctx;

template <class T>
inline T shfl_exchange(T v, unsigned src_lane) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 8 bytes");
    Warp *w = ctx.warp;
    uint64_t raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    w->slot[ctx.lane] = raw;
    w->bar->arrive_and_wait();
    uint64_t got = w->slot[src_lane & 31];
    w->bar->arrive_and_wait();
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

// cvt.rna.tf32.f32: x rounded to 10 explicit mantissa bits, to nearest with
// ties away from zero; the 13 low bits of the result are 0. Infinities stay,
// NaN becomes the canonical NaN.
inline uint32_t tf32_rna(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? 0x7fffffffu : u;
    // Adding half a TF32 unit to the magnitude bits and truncating rounds
    // half away from zero (a carry into the exponent is the correct result,
    // up to infinity).
    return (u + 0x1000u) & 0xffffe000u;
}

// The value a TF32 operand register stands for: its 19 high bits (sign,
// exponent, 10 mantissa bits); the tensor core ignores the low 13.
inline float tf32_value(uint32_t r) {
    r &= 0xffffe000u;
    float f;
    std::memcpy(&f, &r, 4);
    return f;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 with D = C (in d):
// each lane publishes its A and B fragments, then computes its own four
// elements of D from the gathered 16x8 and 8x8 matrices (layouts in
// kernels/mma.cuh). The products of TF32 values are exact in double, and each
// sum is rounded to float once: a GPU may round in between, within the
// tolerance the tests state. Every lane of a full warp must call it, the same
// number of times (a warp-synchronous instruction); anything else aborts.
inline void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    Warp *w = ctx.warp;
    const unsigned lane = ctx.lane;
    const uint64_t call = ++ctx.mma_calls;
    std::memcpy(w->mma_a[lane], a, sizeof(w->mma_a[lane]));
    std::memcpy(w->mma_b[lane], b, sizeof(w->mma_b[lane]));
    w->mma_call[lane] = call;
    w->bar->arrive_and_wait();
    for (unsigned l = 0; l < 32; ++l) {
        if (w->mma_call[l] != call) {
            std::fprintf(stderr,
                         "cuda-emu: mma.sync call %llu of lane %u: lane %u of its warp did not make the same "
                         "call (every lane of a full warp must execute it)\n",
                         (unsigned long long)call, lane, l);
            std::abort();
        }
    }
    const unsigned g = lane / 4, t = lane % 4;
    // A(row, k): lane 4 * (row % 8) + k % 4, register (row / 8) + 2 * (k / 4).
    auto A = [&](unsigned row, unsigned k) { return tf32_value(w->mma_a[4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)]); };
    // B(k, col): lane 4 * col + k % 4, register k / 4.
    auto B = [&](unsigned k, unsigned col) { return tf32_value(w->mma_b[4 * col + k % 4][k / 4]); };
    float out[4];
    for (unsigned r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r / 2), col = 2 * t + r % 2;
        double s = d[r];
        for (unsigned k = 0; k < 8; ++k) s += double(A(row, k)) * double(B(k, col));
        out[r] = float(s);
    }
    w->bar->arrive_and_wait();
    std::memcpy(d, out, sizeof(out));
}

// cp.async: the source is read now, shared memory written when a wait
// completes the copy's group (the latest moment a GPU may write it). Both
// addresses must be aligned to the copy's size, as on a GPU.
inline void cp_async(void *dst, const void *src, unsigned n, bool valid) {
    if (reinterpret_cast<uintptr_t>(dst) % n != 0 || reinterpret_cast<uintptr_t>(src) % n != 0) {
        std::fprintf(stderr, "cuda-emu: cp.async of %u bytes with a misaligned address (%p <- %p)\n", n, dst, src);
        std::abort();
    }
    ThreadCtx::AsyncCopy c{static_cast<unsigned char *>(dst), {}, n};
    if (valid) std::memcpy(c.bytes, src, n);
    ctx.async_open.push_back(c);
}
inline void cp_async_commit() {
    ctx.async_groups.push_back(std::move(ctx.async_open));
    ctx.async_open.clear();
}
inline void cp_async_wait(int n) {
    while (ctx.async_groups.size() > size_t(n < 0 ? 0 : n)) {
        for (const auto &c : ctx.async_groups.front()) std::memcpy(c.dst, c.bytes, c.n);
        ctx.async_groups.pop_front();
    }
}
// Called when a thread leaves a block: copies still in flight are a kernel
// bug (their shared memory belongs to the next block by then).
inline void cp_async_check_drained() {
    if (!ctx.async_open.empty() || !ctx.async_groups.empty()) {
        std::fprintf(stderr,
                     "cuda-emu: a thread left its block with cp.async copies in flight (%zu uncommitted, %zu "
                     "groups); end with qat_cp_async_wait<0>()\n",
                     ctx.async_open.size(), ctx.async_groups.size());
        std::abort();
    }
}

}  // namespace qat_emu

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__ inline
#define __host__
#define __forceinline__
#define __noinline__
// Checked at launch instead (launch.h): build.rs records each kernel's bound.
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static const
#define __align__(n) __attribute__((aligned(n)))
#define QAT_DYN_SHARED(T, name) T *name = reinterpret_cast<T *>(qat_emu::ctx.dyn_smem)

inline void __syncthreads() { qat_emu::ctx.block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { qat_emu::ctx.warp->bar->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// The CUDA programming guide's rules, with `width` (a power of two up to 32)
// splitting the warp into segments: __shfl_sync reads lane `src % width` of
// the caller's segment; __shfl_up/down return the caller's own value when
// the source falls outside its segment; __shfl_xor lets a lane read earlier
// segments but returns its own value for a later one. Every lane of the warp
// must call (the emulator's limit); a caller outside `mask` aborts, and a
// value read from a lane outside `mask` is undefined on a GPU, poisoned
// (all bits set) here.
template <class T>
inline T qat_emu_shfl(unsigned mask, T v, int src, int width) {
    const unsigned lane = qat_emu::ctx.lane;
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0 || !(mask >> lane & 1u)) {
        std::fprintf(stderr, "cuda-emu: shuffle with width %d or mask %#x not containing lane %u\n", width, mask,
                     lane);
        std::abort();
    }
    T got = qat_emu::shfl_exchange(v, unsigned(src) & 31u);
    if (!(mask >> (unsigned(src) & 31u) & 1u)) std::memset(&got, 0xFF, sizeof(T));
    return got;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    const int base = int(qat_emu::ctx.lane) & ~(width - 1);
    return qat_emu_shfl(mask, v, base + (src_lane & (width - 1)), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = int(qat_emu::ctx.lane);
    const int src = lane ^ lane_mask;
    const bool later = src >= (lane & ~(width - 1)) + width;
    const T other = qat_emu_shfl(mask, v, later ? lane : src, width);
    return later ? v : other;
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = int(qat_emu::ctx.lane);
    const bool out = (lane & (width - 1)) + int(delta) >= width;
    const T other = qat_emu_shfl(mask, v, out ? lane : lane + int(delta), width);
    return out ? v : other;
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = int(qat_emu::ctx.lane);
    const bool out = (lane & (width - 1)) < int(delta);
    const T other = qat_emu_shfl(mask, v, out ? lane : lane - int(delta), width);
    return out ? v : other;
}

template <class T>
inline T atomicAdd(T *p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}
inline int atomicMax(int *p, int v) {
    std::atomic_ref<int> a(*p);
    int cur = a.load();
    while (cur < v && !a.compare_exchange_weak(cur, v)) {
    }
    return cur;
}

template <class T>
inline T __ldg(const T *p) { return *p; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Round-to-nearest arithmetic that NVRTC never contracts into an FMA; the host
// build contracts nothing (-ffp-contract=off), so plain operators match.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
// Signed DP4A: c + the four products of the int8 lanes of a and b.
inline int __dp4a(int a, int b, int c) {
    for (int j = 0; j < 32; j += 8)
        c += int(static_cast<int8_t>(static_cast<uint32_t>(a) >> j)) *
             int(static_cast<int8_t>(static_cast<uint32_t>(b) >> j));
    return c;
}

template <class T>
inline T min(T a, T b) { return b < a ? b : a; }
template <class T>
inline T max(T a, T b) { return a < b ? b : a; }

#include <bit>
inline int __clzll(long long v) { return std::countl_zero(static_cast<unsigned long long>(v)); }
