// Mean softmax cross-entropy with label smoothing eps (PyTorch's
// cross_entropy(label_smoothing=eps)): the target of row r is
// t_j = eps / C + (1 - eps) [j == label_r], and loss_r = logsumexp(z) - sum_j t_j z_j.
#include "common.cuh"

__device__ __forceinline__ float xent_target(int j, int label, int classes, float eps) {
    return eps / float(classes) + (j == label ? 1.0f - eps : 0.0f);
}

// One block per row: writes the row's softmax and its loss.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    softmax_xent_fwd_f32(const float *__restrict__ logits, const float *__restrict__ labels,
                         float *__restrict__ probs, float *__restrict__ row_loss, int rows, int classes, float eps) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    const float *z = logits + (long long)r * classes;
    float *p = probs + (long long)r * classes;
    const int label = int(labels[r]);
    float m = -__int_as_float(0x7f800000);
    for (int j = threadIdx.x; j < classes; j += blockDim.x) m = fmaxf(m, z[j]);
    m = qat_block_max(m, red);
    float s = 0.0f, tz = 0.0f;
    for (int j = threadIdx.x; j < classes; j += blockDim.x) {
        s += expf(z[j] - m);
        tz += xent_target(j, label, classes, eps) * z[j];
    }
    s = qat_block_sum(s, red);
    tz = qat_block_sum(tz, red);
    const float inv = 1.0f / s;
    for (int j = threadIdx.x; j < classes; j += blockDim.x) p[j] = expf(z[j] - m) * inv;
    if (threadIdx.x == 0) row_loss[r] = m + logf(s) - tz;
    (void)rows;
}

// loss[0] = mean of row_loss: one block.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    softmax_xent_loss_fwd_f32(const float *__restrict__ row_loss, float *__restrict__ loss, int rows) {
    __shared__ float red[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) s += row_loss[i];
    s = qat_block_sum(s, red);
    if (threadIdx.x == 0) loss[0] = s / float(rows);
}

// dlogits = dloss[0] * (probs - target) / rows
extern "C" __global__ void softmax_xent_bwd_f32(const float *__restrict__ probs, const float *__restrict__ labels,
                                                const float *__restrict__ dloss, float *__restrict__ dlogits,
                                                int rows, int classes, float eps) {
    const float k = dloss[0] / float(rows);
    QAT_FOR(i, rows * classes) {
        const int r = i / classes, j = i % classes;
        dlogits[i] = k * (probs[i] - xent_target(j, int(labels[r]), classes, eps));
    }
}

// The step summary a trainer downloads in one copy: out = [loss, top-1 hits,
// top-5 hits]. One block, a row per thread: the rank of the label is the
// number of classes scoring higher plus those scoring equal at a lower index
// (src/accuracy.rs). The counts are integers below 2^24, exact in any order.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    label_hits_f32(const float *__restrict__ logits, const float *__restrict__ labels,
                   const float *__restrict__ loss, float *__restrict__ out, int rows, int classes) {
    __shared__ float red[32];
    float top1 = 0.0f, top5 = 0.0f;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const float *z = logits + (long long)r * classes;
        const int label = int(labels[r]);
        const float t = z[label];
        int rank = 0;
        for (int j = 0; j < classes; ++j) rank += (z[j] > t || (z[j] == t && j < label)) ? 1 : 0;
        top1 += rank == 0 ? 1.0f : 0.0f;
        top5 += rank < 5 ? 1.0f : 0.0f;
    }
    top1 = qat_block_sum(top1, red);
    top5 = qat_block_sum(top5, red);
    if (threadIdx.x == 0) {
        out[0] = loss[0];
        out[1] = top1;
        out[2] = top5;
    }
}
