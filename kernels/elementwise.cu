// Elementwise kernels (clamp for ReLU6 among them), concatenation, the bias
// of a linear layer, and the SGD update.
// All 1-d, grid-stride loops over QAT_BLOCK-thread blocks.
#include "common.cuh"

extern "C" __global__ void fill_fwd_f32(float *__restrict__ y, float value, int n) {
    QAT_FOR(i, n) y[i] = value;
}

// y = a + b
extern "C" __global__ void add_fwd_f32(const float *__restrict__ a, const float *__restrict__ b,
                                       float *__restrict__ y, int n) {
    QAT_FOR(i, n) y[i] = a[i] + b[i];
}

// y += alpha * x
extern "C" __global__ void axpy_fwd_f32(float alpha, const float *__restrict__ x, float *__restrict__ y, int n) {
    QAT_FOR(i, n) y[i] += alpha * x[i];
}

// x *= alpha
extern "C" __global__ void scale_fwd_f32(float alpha, float *__restrict__ x, int n) {
    QAT_FOR(i, n) x[i] *= alpha;
}

// y = op(a, b) for the per-channel factors of the batch-norm fold (PairMap in
// src/backend/geom.rs, whose codes these are). No operation here has an
// addition next to a product, so --fmad cannot contract anything: the bits
// are those of the host expressions.
extern "C" __global__ void pair_map_f32(const float *__restrict__ a, const float *__restrict__ b,
                                        float *__restrict__ y, int n, int op, float param) {
    QAT_FOR(i, n) {
        const float u = a[i];
        float v;
        switch (op) {
            case 0: v = sqrtf(u + param); break;
            case 1: v = u / b[i]; break;
            case 2: v = u * (1.0f / b[i]); break;
            case 3: v = -u * b[i]; break;
            case 4: v = 1.0f / u; break;
            default: {
                const float w = b[i];
                v = u * (-1.0f / (w * w));
            }
        }
        y[i] = v;
    }
}

extern "C" __global__ void relu_fwd_f32(const float *__restrict__ x, float *__restrict__ y, int n) {
    QAT_FOR(i, n) y[i] = fmaxf(x[i], 0.0f);
}

// dx = dy * [y > 0], y the forward output
extern "C" __global__ void relu_bwd_f32(const float *__restrict__ y, const float *__restrict__ dy,
                                        float *__restrict__ dx, int n) {
    QAT_FOR(i, n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// y = clamp(x, lo, hi); NaN stays NaN (both comparisons are false), as in
// torch.clamp.
extern "C" __global__ void clamp_fwd_f32(const float *__restrict__ x, float *__restrict__ y, float lo, float hi,
                                         int n) {
    QAT_FOR(i, n) {
        const float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}

// dx = dy where lo < x < hi, 0 at and beyond the bounds and for NaN
// (PyTorch's hardtanh backward; see ops::hardtanh).
extern "C" __global__ void clamp_bwd_f32(const float *__restrict__ x, const float *__restrict__ dy,
                                         float *__restrict__ dx, float lo, float hi, int n) {
    QAT_FOR(i, n) {
        const float v = x[i];
        dx[i] = (lo < v && v < hi) ? dy[i] : 0.0f;
    }
}

// Concatenation seen as matrices: x is outer x inner, y is outer x row, and x
// fills columns [offset, offset + inner) of y. One thread per x element;
// consecutive threads touch consecutive addresses on both sides.
extern "C" __global__ void concat_fwd_f32(const float *__restrict__ x, float *__restrict__ y, int outer, int inner,
                                          int row, int offset) {
    QAT_FOR(i, outer * inner) {
        const int o = i / inner, j = i - o * inner;
        y[(long long)o * row + offset + j] = x[i];
    }
}

// The split: dx = columns [offset, offset + inner) of dy.
extern "C" __global__ void concat_bwd_f32(const float *__restrict__ dy, float *__restrict__ dx, int outer,
                                          int inner, int row, int offset) {
    QAT_FOR(i, outer * inner) {
        const int o = i / inner, j = i - o * inner;
        dx[i] = dy[(long long)o * row + offset + j];
    }
}

// y[r, j] += bias[j] for a rows x cols matrix
extern "C" __global__ void row_bias_fwd_f32(const float *__restrict__ bias, float *__restrict__ y, int rows,
                                            int cols) {
    QAT_FOR(i, rows * cols) y[i] += bias[i % cols];
}

// db[j] = sum_r dy[r, j]: one thread per column, consecutive threads read
// consecutive columns (coalesced); the sum runs in row order.
extern "C" __global__ void row_bias_bwd_f32(const float *__restrict__ dy, float *__restrict__ db, int rows,
                                            int cols) {
    QAT_FOR(j, cols) {
        float s = 0.0f;
        for (int r = 0; r < rows; ++r) s += dy[(long long)r * cols + j];
        db[j] = s;
    }
}

// torch.optim.SGD (dampening 0): g = grad + wd * p; buf = momentum * buf + g;
// p -= lr * (nesterov ? g + momentum * buf : buf). The buffer is updated even
// with momentum 0 (it then holds g), as in the CPU backend.
extern "C" __global__ void sgd_fwd_f32(float *__restrict__ p, const float *__restrict__ grad,
                                       float *__restrict__ buf, float lr, float momentum, float weight_decay,
                                       int nesterov, int n) {
    QAT_FOR(i, n) {
        const float g = grad[i] + weight_decay * p[i];
        const float b = momentum * buf[i] + g;
        buf[i] = b;
        p[i] -= lr * (nesterov ? g + momentum * b : b);
    }
}
