// Batch norm over an N x C x HW view. Training: batchnorm_stats_fwd_f32 (one
// block per channel) computes the batch mean and biased variance in two passes
// (no E[x^2] - E[x]^2 cancellation), saves mean and 1/sqrt(var + eps), and
// updates the running statistics with the unbiased variance (PyTorch); then
// batchnorm_apply_fwd_f32 normalizes elementwise.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    batchnorm_stats_fwd_f32(const float *__restrict__ x, float *__restrict__ save_mean,
                            float *__restrict__ save_invstd, float *__restrict__ running_mean,
                            float *__restrict__ running_var, int n, int c, int hw, float eps, float momentum) {
    __shared__ float red[32];
    const int ch = blockIdx.x;
    const float count = float(n) * float(hw);
    float s = 0.0f;
    for (int b = 0; b < n; ++b) {
        const float *row = x + ((long long)b * c + ch) * hw;
        for (int i = threadIdx.x; i < hw; i += blockDim.x) s += row[i];
    }
    const float mean = qat_block_sum(s, red) / count;
    float q = 0.0f;
    for (int b = 0; b < n; ++b) {
        const float *row = x + ((long long)b * c + ch) * hw;
        for (int i = threadIdx.x; i < hw; i += blockDim.x) {
            const float d = row[i] - mean;
            q += d * d;
        }
    }
    const float var = qat_block_sum(q, red) / count;
    if (threadIdx.x == 0) {
        save_mean[ch] = mean;
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

// One block per channel: dbeta = sum dy, dgamma = sum dy * xhat, then
// dx = gamma * invstd / M * (M * dy - dbeta - xhat * dgamma), M = N * HW.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    batchnorm_bwd_f32(const float *__restrict__ x, const float *__restrict__ dy, const float *__restrict__ gamma,
                      const float *__restrict__ save_mean, const float *__restrict__ save_invstd,
                      float *__restrict__ dx, float *__restrict__ dgamma, float *__restrict__ dbeta, int n, int c,
                      int hw) {
    __shared__ float red[32];
    const int ch = blockIdx.x;
    const float mean = save_mean[ch], invstd = save_invstd[ch];
    float sd = 0.0f, sdx = 0.0f;
    for (int b = 0; b < n; ++b) {
        const long long off = ((long long)b * c + ch) * hw;
        for (int i = threadIdx.x; i < hw; i += blockDim.x) {
            const float g = dy[off + i];
            sd += g;
            sdx += g * (x[off + i] - mean) * invstd;
        }
    }
    const float db = qat_block_sum(sd, red);
    const float dg = qat_block_sum(sdx, red);
    if (threadIdx.x == 0) {
        dbeta[ch] = db;
        dgamma[ch] = dg;
    }
    const float count = float(n) * float(hw);
    const float k = gamma[ch] * invstd / count;
    for (int b = 0; b < n; ++b) {
        const long long off = ((long long)b * c + ch) * hw;
        for (int i = threadIdx.x; i < hw; i += blockDim.x) {
            const float xhat = (x[off + i] - mean) * invstd;
            dx[off + i] = k * (count * dy[off + i] - db - xhat * dg);
        }
    }
}
