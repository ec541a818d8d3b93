// Max pooling (-inf padding, PyTorch's first-maximum tie rule) and global
// average pooling, NCHW.
#include "common.cuh"

struct PoolGeom {
    int n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
};

// The flat index in the (h, w) plane of the first maximum of window (oh, ow).
__device__ __forceinline__ int pool_argmax(const float *__restrict__ plane, const PoolGeom &g, int oh, int ow) {
    float best = -__int_as_float(0x7f800000);
    int arg = -1;
    const int h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
    for (int i = 0; i < g.kh; ++i) {
        const int ih = h0 + i;
        if (ih < 0 || ih >= g.h) continue;
        for (int j = 0; j < g.kw; ++j) {
            const int iw = w0 + j;
            if (iw < 0 || iw >= g.w) continue;
            const float v = plane[ih * g.w + iw];
            if (arg < 0 || v > best) {
                best = v;
                arg = ih * g.w + iw;
            }
        }
    }
    return arg;
}

// One thread per output element.
extern "C" __global__ void maxpool2d_fwd_f32(const float *__restrict__ x, float *__restrict__ y, PoolGeom g) {
    QAT_FOR(i, g.n * g.c * g.oh * g.ow) {
        const int ow = i % g.ow, oh = (i / g.ow) % g.oh, nc = i / (g.ow * g.oh);
        const float *plane = x + (long long)nc * g.h * g.w;
        y[i] = plane[pool_argmax(plane, g, oh, ow)];
    }
}

// One thread per input element: it gathers dy from every window that covers
// it and picked it as the maximum, in output order. A gather instead of a
// scatter: no atomics, deterministic, and every dx element is written.
extern "C" __global__ void maxpool2d_bwd_f32(const float *__restrict__ x, const float *__restrict__ dy,
                                             float *__restrict__ dx, PoolGeom g) {
    QAT_FOR(i, g.n * g.c * g.h * g.w) {
        const int iw = i % g.w, ih = (i / g.w) % g.h, nc = i / (g.w * g.h);
        const float *plane = x + (long long)nc * g.h * g.w;
        const float *dplane = dy + (long long)nc * g.oh * g.ow;
        // windows oh with oh*sh - ph <= ih <= oh*sh - ph + kh - 1
        const int oh_lo = max(0, (ih + g.ph - g.kh + g.sh) / g.sh), oh_hi = min(g.oh - 1, (ih + g.ph) / g.sh);
        const int ow_lo = max(0, (iw + g.pw - g.kw + g.sw) / g.sw), ow_hi = min(g.ow - 1, (iw + g.pw) / g.sw);
        float s = 0.0f;
        for (int oh = oh_lo; oh <= oh_hi; ++oh)
            for (int ow = ow_lo; ow <= ow_hi; ++ow)
                if (pool_argmax(plane, g, oh, ow) == ih * g.w + iw) s += dplane[oh * g.ow + ow];
        dx[i] = s;
    }
}

// y[r] = mean of x[r, 0..hw): one warp per row (n, c), 8 rows per block.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    global_avgpool_fwd_f32(const float *__restrict__ x, float *__restrict__ y, int rows, int hw) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp leaves together
    const float *p = x + (long long)row * hw;
    float s = 0.0f;
    for (int i = lane; i < hw; i += 32) s += p[i];
    s = qat_warp_sum(s);
    if (lane == 0) y[row] = s / float(hw);
}

extern "C" __global__ void global_avgpool_bwd_f32(const float *__restrict__ dy, float *__restrict__ dx, int rows,
                                                  int hw) {
    QAT_FOR(i, rows * hw) dx[i] = dy[i / hw] / float(hw);
}
