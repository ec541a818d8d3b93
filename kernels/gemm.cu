// C = alpha * op(A) op(B) + beta * C, row-major; op(A) is M x K, op(B) K x N.
#include "tile_gemm.cuh"

struct GemmOperand {
    const float *p;
    int ld, rows;
    bool k_contig;  // element (r, k) at p[r * ld + k], else at p[k * ld + r]
    template <bool ASYNC>
    __device__ void load(TgTile *S, int r0, int k0, int k_end) const {
        if (k_contig)
            tg_load_k_contig<ASYNC>(S, p, ld, rows, r0, k0, k_end);
        else
            tg_load_r_contig<ASYNC>(S, p, ld, rows, r0, k0, k_end);
    }
};

struct GemmStore {
    float *c;
    int ldc;
    float alpha, beta;
    __device__ void operator()(int m, int n, float v) const {
        float *out = c + (long long)m * ldc + n;
        // beta == 0 never reads C (it may hold garbage), as in BLAS.
        *out = beta == 0.0f ? alpha * v : alpha * v + beta * *out;
    }
};

template <bool TC>
__device__ __forceinline__ void gemm_fwd(const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ c,
                                         int M, int N, int K, int trans_a, int trans_b, float alpha, float beta) {
    // op(A)(m, k) is a[m * K + k], or a[k * M + m] when transposed;
    // op(B)(k, n) is b[k * N + n], or b[n * K + k] when transposed.
    GemmOperand la{a, trans_a ? M : K, M, !trans_a};
    GemmOperand lb{b, trans_b ? K : N, N, trans_b != 0};
    const GemmStore st{c, N, alpha, beta};
    tile_gemm<TC>(M, N, blockIdx.x * TG_BM, blockIdx.y * TG_BN, 0, K, la, lb, st);
}

// grid (ceil(M / 128), ceil(N / 128)), block 256; FP32 and TF32.
extern "C" __global__ void __launch_bounds__(TG_THREADS)
    gemm_fwd_f32(const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ c, int M, int N, int K,
                 int trans_a, int trans_b, float alpha, float beta) {
    gemm_fwd<false>(a, b, c, M, N, K, trans_a, trans_b, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(TG_THREADS)
    gemm_fwd_tf32(const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ c, int M, int N, int K,
                  int trans_a, int trans_b, float alpha, float beta) {
    gemm_fwd<true>(a, b, c, M, N, K, trans_a, trans_b, alpha, beta);
}
