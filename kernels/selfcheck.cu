// Self-check kernels: they compute nothing for training, only results whose
// values the CUDA programming guide or the PTX ISA defines, so that the host emulator's
// semantics can be compared with the documented ones (and with a GPU's).

#include "common.cuh"
#include "mma.cuh"
#include "async_copy.cuh"

// One warp. For each width w in {32, 16, 8, 4} (index k), lane l writes
//   out[(k * 4 + 0) * 32 + l] = __shfl_sync(full, 100 + l, l + 3, w)
//   out[(k * 4 + 1) * 32 + l] = __shfl_xor_sync(full, 100 + l, 5, w)
//   out[(k * 4 + 2) * 32 + l] = __shfl_down_sync(full, 100 + l, 3, w)
//   out[(k * 4 + 3) * 32 + l] = __shfl_up_sync(full, 100 + l, 3, w)
extern "C" __global__ void shfl_semantics_i32(int *__restrict__ out) {
    const int l = threadIdx.x;
    const int v = 100 + l;
    for (int k = 0; k < 4; ++k) {
        const int w = 32 >> k;
        out[(k * 4 + 0) * 32 + l] = __shfl_sync(0xffffffffu, v, l + 3, w);
        out[(k * 4 + 1) * 32 + l] = __shfl_xor_sync(0xffffffffu, v, 5, w);
        out[(k * 4 + 2) * 32 + l] = __shfl_down_sync(0xffffffffu, v, 3u, w);
        out[(k * 4 + 3) * 32 + l] = __shfl_up_sync(0xffffffffu, v, 3u, w);
    }
}

// One warp, compute capability 8.0+: d = c + a b for a (16 x 8), b (8 x 8)
// and c (16 x 8), all row-major, through one mma.m16n8k8 TF32 with each lane
// loading and storing its fragments as kernels/mma.cuh documents them.
extern "C" __global__ void mma_tf32_semantics(const float *__restrict__ a, const float *__restrict__ b,
                                              const float *__restrict__ c, float *__restrict__ d) {
    const int l = threadIdx.x, g = l / 4, t = l % 4;
    const unsigned fa[4] = {qat_tf32(a[g * 8 + t]), qat_tf32(a[(g + 8) * 8 + t]), qat_tf32(a[g * 8 + t + 4]),
                            qat_tf32(a[(g + 8) * 8 + t + 4])};
    const unsigned fb[2] = {qat_tf32(b[t * 8 + g]), qat_tf32(b[(t + 4) * 8 + g])};
    float fd[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
    qat_mma_tf32(fd, fa, fb);
    d[g * 8 + 2 * t] = fd[0];
    d[g * 8 + 2 * t + 1] = fd[1];
    d[(g + 8) * 8 + 2 * t] = fd[2];
    d[(g + 8) * 8 + 2 * t + 1] = fd[3];
}

// out[i] = the bits of cvt.rna.tf32.f32(x[i]), for i < n (one block).
extern "C" __global__ void tf32_round_semantics(const float *__restrict__ x, float *__restrict__ out, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = __int_as_float(int(qat_tf32(x[i])));
}

// out[0] = the sum of x[0..n) through qat_block_sum, by one block declared for
// at most QAT_BLOCK threads (the emulator's launch-bounds check uses it).
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    block_sum_check_f32(const float *__restrict__ x, float *__restrict__ out, int n) {
    __shared__ float red[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = qat_block_sum(s, red);
    if (threadIdx.x == 0) out[0] = s;
}

// q[i] = n[i] / d[i] through QatDivisor, for i < len (one block).
extern "C" __global__ void divisor_semantics_i32(const int *__restrict__ d, const int *__restrict__ n,
                                                 int *__restrict__ q, int len) {
    for (int i = threadIdx.x; i < len; i += blockDim.x) q[i] = QatDivisor(d[i]).div(n[i]);
}

// One warp, compute capability 8.0+: cp.async in three groups (4-byte copies
// and a 4-byte zero fill; 16-byte copies; a 16-byte zero fill into shared
// memory first set to NaN), each read after its wait and a barrier, from
// another lane than the one that copied it. With l the lane and l' = (l + 1)
// % 32, out (320 floats) gets src[l'] at [l], 0 at [32 + l], src[4 l' + j] at
// [64 + 4 l + j] and 0 at [192 + 4 l + j] (j < 4); src has 128 floats.
extern "C" __global__ void cp_async_semantics(const float *__restrict__ src, float *__restrict__ out) {
    __shared__ __align__(16) float s0[64];
    __shared__ __align__(16) float s1[128];
    __shared__ __align__(16) float s2[128];
    const int l = threadIdx.x, l1 = (l + 1) % 32;
    const float nan = __int_as_float(0x7fffffff);
    s0[32 + l] = nan;
    for (int j = 0; j < 4; ++j) s2[4 * l + j] = nan;
    __syncthreads();
    qat_cp_async<4>(&s0[l], src + l, true);
    qat_cp_async<4>(&s0[32 + l], src, false);
    qat_cp_async_commit();
    qat_cp_async<16>(&s1[4 * l], src + 4 * l, true);
    qat_cp_async_commit();
    qat_cp_async<16>(&s2[4 * l], src, false);
    qat_cp_async_commit();
    qat_cp_async_wait<2>();
    __syncthreads();
    out[l] = s0[l1];
    out[32 + l] = s0[32 + l1];
    qat_cp_async_wait<0>();
    __syncthreads();
    for (int j = 0; j < 4; ++j) {
        out[64 + 4 * l + j] = s1[4 * l1 + j];
        out[192 + 4 * l + j] = s2[4 * l1 + j];
    }
}
