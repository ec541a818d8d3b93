// Shared by every kernel file: dynamic shared memory and block reductions.
// Compiled by NVRTC for the GPU and, through emu/shim.h, by the host compiler
// for the emulated device (QAT_EMU defined).
#pragma once

#ifndef QAT_EMU
#define QAT_DYN_SHARED(T, name) extern __shared__ T name[]
#endif

// Threads per block of the 1-d kernels (elementwise, reductions).
#define QAT_BLOCK 256

__device__ __forceinline__ float qat_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float qat_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple
// of 32 and every thread must call it; `red` is __shared__ float[32].
__device__ __forceinline__ float qat_block_sum(float v, float *red) {
    v = qat_warp_sum(v);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();  // `red` may still be read from a previous call
    if (lane == 0) red[wid] = v;
    __syncthreads();
    return qat_warp_sum(lane < nw ? red[lane] : 0.0f);
}

__device__ __forceinline__ float qat_block_max(float v, float *red) {
    v = qat_warp_max(v);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    return qat_warp_max(lane < nw ? red[lane] : -__int_as_float(0x7f800000));
}

// Grid-stride loop over [0, n).
#define QAT_FOR(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

// Division by a divisor fixed for a kernel (a layer's width, a stride) with a
// multiply-high instead of a division instruction: for 1 <= d < 2^31 and
// 0 <= n < 2^31, n / d = (umulhi(n, mul) + n) >> shift with shift =
// ceil(log2 d) and mul = floor(2^32 (2^shift - d) / d) + 1 (the round-up
// method of Granlund and Montgomery, "Division by invariant integers using
// multiplication", 1994; n < 2^31 keeps the sum inside 32 bits). Built once
// per thread, outside the loops that use it.
struct QatDivisor {
    int d, shift;
    unsigned mul;
    __device__ explicit QatDivisor(int d_) : d(d_), shift(0) {
        while ((1u << shift) < unsigned(d)) ++shift;
        mul = unsigned((4294967296ull * ((1ull << shift) - unsigned(d))) / unsigned(d) + 1ull);
    }
    __device__ int div(int n) const { return int((__umulhi(unsigned(n), mul) + unsigned(n)) >> shift); }
};
