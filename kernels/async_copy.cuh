// Asynchronous global-to-shared copies (cp.async, compute capability 8.0 and
// later) for the tensor-core pipeline of tile_gemm.cuh. A thread issues
// copies, closes them into a group with qat_cp_async_commit(), and
// qat_cp_async_wait<N>() returns once all but its N most recent groups have
// landed in shared memory; a __syncthreads() after the wait makes every
// thread's copies visible to the block.
//
// On the emulated device (emu/shim.h) a copy reads its source when issued and
// writes shared memory only when a wait completes its group, so a stage read
// before its wait sees the previous stage's data and the parity tests fail;
// a block that ends with copies in flight aborts.
#pragma once

// The shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned qat_smem_addr(const void *p) {
#if defined(__CUDA_ARCH__) && !defined(QAT_EMU)
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
#else
    (void)p;
    return 0u;
#endif
}

// BYTES (4 or 16) bytes from src to shared dst, or zeros when !valid (then
// nothing is read, but src must still point into global memory: pass the
// tensor's base). Both addresses aligned to BYTES (the emulator checks);
// 16-byte copies bypass L1 (.cg), 4-byte ones may not (.ca only).
template <int BYTES>
__device__ __forceinline__ void qat_cp_async(float *dst, const float *src, bool valid) {
    static_assert(BYTES == 4 || BYTES == 16, "cp.async of 4 or 16 bytes");
#ifdef QAT_EMU
    qat_emu::cp_async(dst, src, BYTES, valid);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(qat_smem_addr(dst)), "l"(src),
                     "r"(valid ? 16 : 0));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(qat_smem_addr(dst)), "l"(src),
                     "r"(valid ? 4 : 0));
#else
    (void)dst, (void)src, (void)valid;
    __trap();
#endif
}

// Closes this thread's copies issued since the last commit into a group.
__device__ __forceinline__ void qat_cp_async_commit() {
#ifdef QAT_EMU
    qat_emu::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#else
    __trap();
#endif
}

// Waits until at most N of this thread's committed groups are in flight.
template <int N>
__device__ __forceinline__ void qat_cp_async_wait() {
#ifdef QAT_EMU
    qat_emu::cp_async_wait(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#else
    __trap();
#endif
}

// One element of an operand tile: dst = valid ? *src : 0, through cp.async
// (ASYNC, the tensor-core pipeline) or an ordinary load and store (the FP32
// path, which also runs before compute capability 8.0).
template <bool ASYNC>
__device__ __forceinline__ void qat_tile_put(float *dst, const float *src, bool valid) {
    if constexpr (ASYNC)
        qat_cp_async<4>(dst, src, valid);
    else
        *dst = valid ? *src : 0.0f;
}
