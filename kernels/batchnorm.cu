// Batch norm over an N x C x HW view, and the per-channel sums it (and the
// convolution bias gradient) needs.
//
// Per-channel sums run on a channel x chunk grid: block (ch, j) reduces chunk
// j of channel ch (a segment of one image's HW plane) with float4 loads where
// aligned and four accumulators per thread, into part[ch * P + j]; then one
// warp per channel adds its P partial sums in a fixed order (lane-strided,
// then a fixed shuffle tree). No atomics: the same inputs give the same bits
// on every run, and every channel keeps the whole GPU busy at any batch size.
//
// Training forward: channel_sum_part (x) -> batchnorm_mean_fwd_f32 ->
// channel_sum_part (squared deviations from that mean: two passes, no
// E[x^2] - E[x]^2 cancellation) -> batchnorm_var_fwd_f32 (saves 1/sqrt(var +
// eps) and updates the running statistics with the unbiased variance, as
// PyTorch) -> batchnorm_apply_fwd_f32. Backward: the sums of dy and dy * xhat
// in one pass, batchnorm_bwd_sums_f32, then batchnorm_bwd_dx_f32 elementwise.
#include "common.cuh"

// What channel_sum_part_f32 adds up for element v = a[i] of channel ch.
#define QAT_SUM_A 0         // v
#define QAT_SUM_SQDEV 1     // (v - mean[ch])^2
#define QAT_SUM_A_AXHAT 2   // v, and v * (b[i] - mean[ch]) * invstd[ch] into part[P * C + ...]

template <int MODE>
__device__ __forceinline__ void qat_sum_term(float v, float bv, float mean, float invstd, float &s0, float &s1) {
    if (MODE == QAT_SUM_A) {
        s0 += v;
    } else if (MODE == QAT_SUM_SQDEV) {
        const float d = v - mean;
        s0 += d * d;
    } else {
        s0 += v;
        s1 += v * (bv - mean) * invstd;
    }
}

// grid (C, N * splits), block a multiple of 32: chunk j = (image j / splits,
// segment j % splits of `seg` values of its plane). P = N * splits.
template <int MODE>
__device__ __forceinline__ void channel_sum_part(const float *__restrict__ a, const float *__restrict__ b,
                                                 const float *__restrict__ mean_p, const float *__restrict__ invstd_p,
                                                 float *__restrict__ part, int c, int hw, int splits, int seg) {
    __shared__ float red[32];
    const int ch = blockIdx.x, j = blockIdx.y;
    const int img = j / splits, lo = (j % splits) * seg;
    const int len = min(seg, hw - lo);
    const long long off = ((long long)img * c + ch) * hw + lo;
    const float mean = MODE == QAT_SUM_A ? 0.0f : mean_p[ch];
    const float invstd = MODE == QAT_SUM_A_AXHAT ? invstd_p[ch] : 0.0f;
    // Four independent accumulators (eight for two sums) keep several
    // loads in flight per thread.
    float s0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int done = 0;
    if ((hw % 4) == 0 && (seg % 4) == 0) {
        const float4 *a4 = reinterpret_cast<const float4 *>(a + off);
        const float4 *b4 = reinterpret_cast<const float4 *>(MODE == QAT_SUM_A_AXHAT ? b + off : a + off);
        for (int q = threadIdx.x; q < len / 4; q += blockDim.x) {
            const float4 v = a4[q];
            const float4 w = MODE == QAT_SUM_A_AXHAT ? b4[q] : v;
            qat_sum_term<MODE>(v.x, w.x, mean, invstd, s0[0], s1[0]);
            qat_sum_term<MODE>(v.y, w.y, mean, invstd, s0[1], s1[1]);
            qat_sum_term<MODE>(v.z, w.z, mean, invstd, s0[2], s1[2]);
            qat_sum_term<MODE>(v.w, w.w, mean, invstd, s0[3], s1[3]);
        }
        done = len / 4 * 4;
    }
    for (int i = done + threadIdx.x; i < len; i += blockDim.x)
        qat_sum_term<MODE>(a[off + i], MODE == QAT_SUM_A_AXHAT ? b[off + i] : 0.0f, mean, invstd, s0[0], s1[0]);
    const int P = gridDim.y;
    const float t0 = qat_block_sum((s0[0] + s0[1]) + (s0[2] + s0[3]), red);
    if (threadIdx.x == 0) part[(long long)ch * P + j] = t0;
    if (MODE == QAT_SUM_A_AXHAT) {
        const float t1 = qat_block_sum((s1[0] + s1[1]) + (s1[2] + s1[3]), red);
        if (threadIdx.x == 0) part[(long long)(c + ch) * P + j] = t1;
    }
}

extern "C" __global__ void channel_sum_part_f32(const float *__restrict__ a, float *__restrict__ part, int c, int hw,
                                                int splits, int seg) {
    channel_sum_part<QAT_SUM_A>(a, nullptr, nullptr, nullptr, part, c, hw, splits, seg);
}
extern "C" __global__ void channel_sqdev_part_f32(const float *__restrict__ a, const float *__restrict__ mean,
                                                  float *__restrict__ part, int c, int hw, int splits, int seg) {
    channel_sum_part<QAT_SUM_SQDEV>(a, nullptr, mean, nullptr, part, c, hw, splits, seg);
}
extern "C" __global__ void channel_sum_xhat_part_f32(const float *__restrict__ dy, const float *__restrict__ x,
                                                     const float *__restrict__ mean, const float *__restrict__ invstd,
                                                     float *__restrict__ part, int c, int hw, int splits, int seg) {
    channel_sum_part<QAT_SUM_A_AXHAT>(dy, x, mean, invstd, part, c, hw, splits, seg);
}

// The sum of row `r` of part (P values) in a fixed order, on one warp; every
// lane gets it.
__device__ __forceinline__ float qat_row_sum(const float *__restrict__ part, long long r, int P) {
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    for (int j = lane; j < P; j += 32) s += part[r * P + j];
    return qat_warp_sum(s);
}

// One warp per channel (block 32, grid C): out[ch] = sum of its P partials.
extern "C" __global__ void channel_sum_finish_f32(const float *__restrict__ part, float *__restrict__ out, int P) {
    const float s = qat_row_sum(part, blockIdx.x, P);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

extern "C" __global__ void batchnorm_mean_fwd_f32(const float *__restrict__ part, float *__restrict__ save_mean, int P,
                                                  float count) {
    const float s = qat_row_sum(part, blockIdx.x, P);
    if (threadIdx.x == 0) save_mean[blockIdx.x] = s / count;
}

extern "C" __global__ void batchnorm_var_fwd_f32(const float *__restrict__ part, const float *__restrict__ save_mean,
                                                 float *__restrict__ save_invstd, float *__restrict__ running_mean,
                                                 float *__restrict__ running_var, int P, float count, float eps,
                                                 float momentum) {
    const int ch = blockIdx.x;
    const float var = qat_row_sum(part, ch, P) / count;
    if (threadIdx.x == 0) {
        const float mean = save_mean[ch];
        save_invstd[ch] = 1.0f / sqrtf(var + eps);
        const float unbiased = count > 1.0f ? var * count / (count - 1.0f) : var;
        running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * mean;
        running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * unbiased;
    }
}

// y = (x - mean[c]) * invstd[c] * gamma[c] + beta[c]
extern "C" __global__ void batchnorm_apply_fwd_f32(const float *__restrict__ x, const float *__restrict__ mean,
                                                   const float *__restrict__ invstd, const float *__restrict__ gamma,
                                                   const float *__restrict__ beta, float *__restrict__ y, int n, int c,
                                                   int hw) {
    QAT_FOR(i, n * c * hw) {
        const int ch = (i / hw) % c;
        y[i] = (x[i] - mean[ch]) * invstd[ch] * gamma[ch] + beta[ch];
    }
}

// Inference: the running statistics instead of the batch's.
extern "C" __global__ void batchnorm_eval_fwd_f32(const float *__restrict__ x, const float *__restrict__ running_mean,
                                                  const float *__restrict__ running_var,
                                                  const float *__restrict__ gamma, const float *__restrict__ beta,
                                                  float *__restrict__ y, int n, int c, int hw, float eps) {
    QAT_FOR(i, n * c * hw) {
        const int ch = (i / hw) % c;
        const float invstd = 1.0f / sqrtf(running_var[ch] + eps);
        y[i] = (x[i] - running_mean[ch]) * invstd * gamma[ch] + beta[ch];
    }
}

// dbeta = sum dy and dgamma = sum dy * xhat per channel (one warp each) from
// channel_sum_xhat_part_f32's partials.
extern "C" __global__ void batchnorm_bwd_sums_f32(const float *__restrict__ part, float *__restrict__ dgamma,
                                                  float *__restrict__ dbeta, int c, int P) {
    const int ch = blockIdx.x;
    const float db = qat_row_sum(part, ch, P);
    const float dg = qat_row_sum(part, (long long)c + ch, P);
    if (threadIdx.x == 0) {
        dbeta[ch] = db;
        dgamma[ch] = dg;
    }
}

// dx = gamma * invstd / M * (M * dy - dbeta - xhat * dgamma), M = N * HW.
extern "C" __global__ void batchnorm_bwd_dx_f32(const float *__restrict__ x, const float *__restrict__ dy,
                                                const float *__restrict__ gamma, const float *__restrict__ save_mean,
                                                const float *__restrict__ save_invstd,
                                                const float *__restrict__ dgamma, const float *__restrict__ dbeta,
                                                float *__restrict__ dx, int n, int c, int hw) {
    const float count = float(n) * float(hw);
    QAT_FOR(i, n * c * hw) {
        const int ch = (i / hw) % c;
        const float invstd = save_invstd[ch];
        const float xhat = (x[i] - save_mean[ch]) * invstd;
        dx[i] = gamma[ch] * invstd / count * (count * dy[i] - dbeta[ch] - xhat * dgamma[ch]);
    }
}
