// The tiled matrix-product core shared by GEMM and the three implicit-GEMM
// convolutions: a 128x128 output tile per 256-thread block, in two variants
// with the same operand interface:
// - tile_gemm<false>: FP32 on CUDA cores; K consumed 8 at a time through
//   shared memory, and an 8x8 register block per thread (two 4x4 quadrants 64
//   apart, so shared-memory reads are float4 and conflict-free);
// - tile_gemm<true>: TF32 tensor cores (mma.m16n8k8, kernels/mma.cuh, compute
//   capability 8.0+); K consumed 16 at a time through two shared-memory
//   stages (the next stage is gathered while the tensor cores work on the
//   current one, one barrier per stage), and a 64x32 tile per warp (4x4 mma
//   tiles, FP32 accumulators).
//
// Operands come from "loader" objects: `load(S, base, k0, k_end)` fills the
// shared tile S[k][i] (k < TG_BK, i < 128) with element (base + i, k0 + k),
// writing 0 outside the matrix or past k_end. A GEMM loader reads memory; a
// convolution loader gathers the implicit im2col matrix on the fly, so no
// im2col buffer ever exists. The epilogue hands each result to `store(m, n, v)`.
#pragma once
#include "common.cuh"
#include "mma.cuh"

#define TG_BM 128
#define TG_BN 128
#define TG_BK 8
#define TG_THREADS 256
// Row padding of the shared tiles: with rows 136 floats apart, the tensor-core
// fragment reads (row t, column g, t < 4, g < 8) hit 32 different banks.
#define TG_PAD 8
// K per shared-memory stage of the tensor-core core (TG_TC_BK / TG_BK loader
// calls per operand).
#define TG_TC_BK 16

typedef float TgTile[TG_BM + TG_PAD];

template <class LA, class LB, class ST>
__device__ __forceinline__ void tile_gemm_simt(int M, int N, int m0, int n0, int k_begin, int k_end, const LA &la,
                                               const LB &lb, const ST &st) {
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
        la.load(As, m0, k0, k_end);
        lb.load(Bs, n0, k0, k_end);
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
__device__ __forceinline__ void tile_gemm_tc(int M, int N, int m0, int n0, int k_begin, int k_end, const LA &la,
                                             const LB &lb, const ST &st) {
    __shared__ __align__(16) TgTile As[2][TG_TC_BK];
    __shared__ __align__(16) TgTile Bs[2][TG_TC_BK];
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

    auto stage = [&](int buf, int k0) {
#pragma unroll
        for (int h = 0; h < TG_TC_BK / TG_BK; ++h) {
            la.load(As[buf] + h * TG_BK, m0, k0 + h * TG_BK, k_end);
            lb.load(Bs[buf] + h * TG_BK, n0, k0 + h * TG_BK, k_end);
        }
    };
    int buf = 0;
    if (k_begin < k_end) stage(0, k_begin);
    __syncthreads();
    for (int k0 = k_begin; k0 < k_end; k0 += TG_TC_BK) {
        // The other stage was last read before the barrier that ended the
        // previous iteration, so it can be refilled now.
        if (k0 + TG_TC_BK < k_end) stage(buf ^ 1, k0 + TG_TC_BK);
        const TgTile *A = As[buf], *B = Bs[buf];
#pragma unroll
        for (int kk = 0; kk < TG_TC_BK; kk += 8) {
            unsigned a[4][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int m = wm + i * 16 + g;
                a[i][0] = qat_tf32(A[kk + t][m]);
                a[i][1] = qat_tf32(A[kk + t][m + 8]);
                a[i][2] = qat_tf32(A[kk + t + 4][m]);
                a[i][3] = qat_tf32(A[kk + t + 4][m + 8]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = wn + j * 8 + g;
                b[j][0] = qat_tf32(B[kk + t][n]);
                b[j][1] = qat_tf32(B[kk + t + 4][n]);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) qat_mma_tf32(acc[i][j], a[i], b[j]);
        }
        __syncthreads();
        buf ^= 1;
    }

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
__device__ __forceinline__ void tile_gemm(int M, int N, int m0, int n0, int k_begin, int k_end, const LA &la,
                                          const LB &lb, const ST &st) {
    if constexpr (TC)
        tile_gemm_tc(M, N, m0, n0, k_begin, k_end, la, lb, st);
    else
        tile_gemm_simt(M, N, m0, n0, k_begin, k_end, la, lb, st);
}

// Element (r, k) at p[r * ld + k] (k contiguous), rows r < R. Each thread
// loads 4 consecutive k of one row, as one float4 when aligned and in range.
__device__ __forceinline__ void tg_load_k_contig(TgTile *S, const float *__restrict__ p, int ld, int R, int r0,
                                                 int k0, int k_end) {
    const int rr = threadIdx.x / 2, kq = (threadIdx.x % 2) * 4;
    const int r = r0 + rr, k = k0 + kq;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (r < R) {
        const float *row = p + (long long)r * ld;
        if ((ld % 4) == 0 && k + 4 <= k_end) {
            const float4 q = *reinterpret_cast<const float4 *>(row + k);
            v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (k + j < k_end) v[j] = row[k + j];
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) S[kq + j][rr] = v[j];
}

// Element (r, k) at p[k * ld + r] (r contiguous), rows r < R. Each thread
// loads 4 consecutive r of one k.
__device__ __forceinline__ void tg_load_r_contig(TgTile *S, const float *__restrict__ p, int ld, int R, int r0,
                                                 int k0, int k_end) {
    const int kk = threadIdx.x / 32, rq = (threadIdx.x % 32) * 4;
    const int r = r0 + rq, k = k0 + kk;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (k < k_end) {
        const float *col = p + (long long)k * ld;
        if ((ld % 4) == 0 && r + 4 <= R) {
            const float4 q = *reinterpret_cast<const float4 *>(col + r);
            v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (r + j < R) v[j] = col[r + j];
        }
    }
    *reinterpret_cast<float4 *>(&S[kk][rq]) = make_float4(v[0], v[1], v[2], v[3]);
}
