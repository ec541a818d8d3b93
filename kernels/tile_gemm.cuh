// The tiled matrix-product core shared by GEMM and the three implicit-GEMM
// convolutions: a 128x128 output tile per 256-thread block, in two variants
// with the same operand interface:
// - tile_gemm<false>: FP32 on CUDA cores; K consumed 8 at a time through
//   shared memory, and an 8x8 register block per thread (two 4x4 quadrants 64
//   apart, so shared-memory reads are float4 and conflict-free);
// - tile_gemm<true>: TF32 tensor cores (mma.m16n8k8, kernels/mma.cuh, compute
//   capability 8.0+) fed by a TG_STAGES-deep cp.async pipeline
//   (kernels/async_copy.cuh): the operand tiles of the next TG_STAGES - 1
//   k-steps are in flight while the tensor cores work on the current one,
//   with one barrier per k-step and no register staging; a 64x32 tile per
//   warp (4x4 mma tiles, FP32 accumulators).
//
// Operands come from "loader" objects: `load<ASYNC>(S, base, k0, k_end)`
// fills the shared tile S[k][i] (k < TG_BK, i < 128) with element
// (base + i, k0 + k), writing 0 outside the matrix or past k_end, through
// qat_tile_put<ASYNC> (cp.async for the tensor-core core). A GEMM loader
// reads memory; a convolution loader gathers the implicit im2col matrix on the
// fly, so no im2col buffer ever exists. A loader is called with k0 = k_begin,
// k_begin + TG_BK, ... in order, so the convolution loaders keep their
// position in the reduction as counters (TgCounter) stepped by a stride fixed
// at construction: nothing in the main loop divides. The epilogue hands each
// result to `store(m, n, v)`.
#pragma once
#include "common.cuh"
#include "mma.cuh"
#include "async_copy.cuh"

#define TG_BM 128
#define TG_BN 128
#define TG_BK 8
#define TG_THREADS 256
// Row padding of the shared tiles: with rows 136 floats apart, the tensor-core
// fragment reads (row t, column g, t < 4, g < 8) hit 32 different banks.
#define TG_PAD 8
// Shared-memory stages of the tensor-core pipeline, TG_BK of K each (one
// m16n8k8 step per warp tile): 4 x 2 x 8 x 136 floats = 34 KiB, inside the
// 48 KiB a block gets without opting in to more.
#define TG_STAGES 4

typedef float TgTile[TG_BM + TG_PAD];

template <class LA, class LB, class ST>
__device__ __forceinline__ void tile_gemm_simt(int M, int N, int m0, int n0, int k_begin, int k_end, LA &la, LB &lb,
                                               const ST &st) {
    __shared__ __align__(16) TgTile As[TG_BK];
    __shared__ __align__(16) TgTile Bs[TG_BK];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    for (int k0 = k_begin; k0 < k_end; k0 += TG_BK) {
        la.template load<false>(As, m0, k0, k_end);
        lb.template load<false>(Bs, n0, k0, k_end);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TG_BK; ++kk) {
            const float4 a0 = *reinterpret_cast<const float4 *>(&As[kk][ty * 4]);
            const float4 a1 = *reinterpret_cast<const float4 *>(&As[kk][ty * 4 + 64]);
            const float4 b0 = *reinterpret_cast<const float4 *>(&Bs[kk][tx * 4]);
            const float4 b1 = *reinterpret_cast<const float4 *>(&Bs[kk][tx * 4 + 64]);
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int m = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int n = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
            if (n < N) st(m, n, acc[i][j]);
        }
    }
}

// Tensor-core core. Warp w owns rows 64 (w % 2) .. +64 and columns
// 32 (w / 2) .. +32 of the block tile, as 4 x 4 mma tiles of 16 x 8.
template <class LA, class LB, class ST>
__device__ __forceinline__ void tile_gemm_tc(int M, int N, int m0, int n0, int k_begin, int k_end, LA &la, LB &lb,
                                             const ST &st) {
    __shared__ __align__(16) TgTile As[TG_STAGES][TG_BK];
    __shared__ __align__(16) TgTile Bs[TG_STAGES][TG_BK];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = (warp % 2) * 64, wn = (warp / 2) * 32;

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    const int tiles = k_end > k_begin ? (k_end - k_begin + TG_BK - 1) / TG_BK : 0;
    auto stage = [&](int kt) {
        const int buf = kt % TG_STAGES, k0 = k_begin + kt * TG_BK;
        la.template load<true>(As[buf], m0, k0, k_end);
        lb.template load<true>(Bs[buf], n0, k0, k_end);
    };
    // Prologue: the first TG_STAGES - 1 k-steps in flight, one group each
    // (empty groups past the end keep the wait count below uniform).
#pragma unroll
    for (int s = 0; s < TG_STAGES - 1; ++s) {
        if (s < tiles) stage(s);
        qat_cp_async_commit();
    }
    for (int kt = 0; kt < tiles; ++kt) {
        // This thread's copies of step kt have landed (those of the next
        // TG_STAGES - 2 steps may not have); the barrier makes every thread's
        // visible, and ends the reads of the buffer that is refilled next
        // (step kt - 1's, read in the previous iteration).
        qat_cp_async_wait<TG_STAGES - 2>();
        __syncthreads();
        if (kt + TG_STAGES - 1 < tiles) stage(kt + TG_STAGES - 1);
        qat_cp_async_commit();
        const TgTile *A = As[kt % TG_STAGES], *B = Bs[kt % TG_STAGES];
        unsigned a[4][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = wm + i * 16 + g;
            a[i][0] = qat_tf32(A[t][m]);
            a[i][1] = qat_tf32(A[t][m + 8]);
            a[i][2] = qat_tf32(A[t + 4][m]);
            a[i][3] = qat_tf32(A[t + 4][m + 8]);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = wn + j * 8 + g;
            b[j][0] = qat_tf32(B[t][n]);
            b[j][1] = qat_tf32(B[t + 4][n]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) qat_mma_tf32(acc[i][j], a[i], b[j]);
    }
    // Only empty groups can be left; none may outlive the block.
    qat_cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int m = m0 + wm + i * 16 + g + 8 * (r / 2);
            if (m >= M) continue;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = n0 + wn + j * 8 + 2 * t + r % 2;
                if (n < N) st(m, n, acc[i][j][r]);
            }
        }
}

// The core for a kernel's precision: TF32 tensor cores or FP32 CUDA cores.
template <bool TC, class LA, class LB, class ST>
__device__ __forceinline__ void tile_gemm(int M, int N, int m0, int n0, int k_begin, int k_end, LA &la, LB &lb,
                                          const ST &st) {
    if constexpr (TC)
        tile_gemm_tc(M, N, m0, n0, k_begin, k_end, la, lb, st);
    else
        tile_gemm_simt(M, N, m0, n0, k_begin, k_end, la, lb, st);
}

// Element (r, k) at p[r * ld + k] (k contiguous), rows r < R. Each thread
// loads 4 consecutive k of one row (the tile stores them 136 floats apart).
template <bool ASYNC>
__device__ __forceinline__ void tg_load_k_contig(TgTile *S, const float *__restrict__ p, int ld, int R, int r0,
                                                 int k0, int k_end) {
    const int rr = threadIdx.x / 2, kq = (threadIdx.x % 2) * 4;
    const int r = r0 + rr, k = k0 + kq;
    const float *row = p + (long long)(r < R ? r : 0) * ld;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const bool valid = r < R && k + j < k_end;
        qat_tile_put<ASYNC>(&S[kq + j][rr], valid ? row + k + j : p, valid);
    }
}

// Element (r, k) at p[k * ld + r] (r contiguous), rows r < R. Each thread
// loads 4 consecutive r of one k: one 16-byte copy when aligned and in range.
template <bool ASYNC>
__device__ __forceinline__ void tg_load_r_contig(TgTile *S, const float *__restrict__ p, int ld, int R, int r0,
                                                 int k0, int k_end) {
    const int kk = threadIdx.x / 32, rq = (threadIdx.x % 32) * 4;
    const int r = r0 + rq, k = k0 + kk;
    const float *col = p + (long long)(k < k_end ? k : 0) * ld;
    float *dst = &S[kk][rq];
    if (k < k_end && (ld % 4) == 0 && r + 4 <= R) {
        if constexpr (ASYNC) {
            qat_cp_async<16>(dst, col + r, true);
        } else {
            const float4 q = *reinterpret_cast<const float4 *>(col + r);
            *reinterpret_cast<float4 *>(dst) = q;
        }
    } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const bool valid = k < k_end && r + j < R;
            qat_tile_put<ASYNC>(dst + j, valid ? col + r + j : p, valid);
        }
    }
}

// A reduction index as mixed-radix digits: value (hi * MID + mid) * LO + lo,
// e.g. (input channel, kernel row, kernel column) or (image, output row,
// output column).
struct TgDigits {
    int hi, mid, lo;
};

// The digits of a thread's position in the reduction, stepped by a stride
// fixed at construction (TG_BK, the loader's step between calls) without
// dividing: the stride's own digits are computed once, and each step adds
// them with at most one carry per digit.
struct TgCounter {
    int mid_n, lo_n;  // the radices MID and LO
    TgDigits at, step;
    __device__ TgCounter(int value, int stride, int mid_n_, int lo_n_) : mid_n(mid_n_), lo_n(lo_n_) {
        at = split(value);
        step = split(stride);
    }
    __device__ TgDigits split(int v) const {
        const int r = v / lo_n;
        return TgDigits{r / mid_n, r % mid_n, v - r * lo_n};
    }
    __device__ void advance() {
        at.lo += step.lo;
        const int c0 = at.lo >= lo_n;
        at.lo -= c0 ? lo_n : 0;
        at.mid += step.mid + c0;
        const int c1 = at.mid >= mid_n;
        at.mid -= c1 ? mid_n : 0;
        at.hi += step.hi + c1;
    }
    // d + 1, for the consecutive elements one call loads.
    __device__ void next(TgDigits &d) const {
        if (++d.lo == lo_n) {
            d.lo = 0;
            if (++d.mid == mid_n) {
                d.mid = 0;
                ++d.hi;
            }
        }
    }
};
