// Max pooling (-inf padding, PyTorch's first-maximum tie rule), average
// pooling (PyTorch's divisor rule) and global average pooling, NCHW.
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

// AvgPool2dGeom of src/backend/geom.rs; the output size already includes
// ceil_mode, so the kernels need only the divisor rule.
struct AvgPoolGeom {
    int n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, include_pad;
};

// Window o on one axis: input positions [lo, hi), and the returned divisor
// extent: the window clipped to the padded extent [-p, size + p) with
// include_pad, else the number of input positions.
__device__ __forceinline__ int avg_span(int o, int size, int k, int s, int p, int include_pad, int &lo, int &hi) {
    const int start = o * s - p, end = min(start + k, size + p);
    lo = max(start, 0);
    hi = min(end, size);
    return include_pad ? end - start : hi - lo;
}

// One thread per output element; the window is summed in row-major order.
extern "C" __global__ void avgpool2d_fwd_f32(const float *__restrict__ x, float *__restrict__ y, AvgPoolGeom g) {
    QAT_FOR(i, g.n * g.c * g.oh * g.ow) {
        const int ow = i % g.ow, oh = (i / g.ow) % g.oh, nc = i / (g.ow * g.oh);
        const float *plane = x + (long long)nc * g.h * g.w;
        int h0, h1, w0, w1;
        const int eh = avg_span(oh, g.h, g.kh, g.sh, g.ph, g.include_pad, h0, h1);
        const int ew = avg_span(ow, g.w, g.kw, g.sw, g.pw, g.include_pad, w0, w1);
        float s = 0.0f;
        for (int ih = h0; ih < h1; ++ih)
            for (int iw = w0; iw < w1; ++iw) s += plane[ih * g.w + iw];
        y[i] = s / float(eh * ew);
    }
}

// One thread per input element, gathering dy / divisor from every window that
// covers it (as maxpool2d_bwd_f32: no atomics, every dx written).
extern "C" __global__ void avgpool2d_bwd_f32(const float *__restrict__ dy, float *__restrict__ dx, AvgPoolGeom g) {
    QAT_FOR(i, g.n * g.c * g.h * g.w) {
        const int iw = i % g.w, ih = (i / g.w) % g.h, nc = i / (g.w * g.h);
        const float *dplane = dy + (long long)nc * g.oh * g.ow;
        const int oh_lo = max(0, (ih + g.ph - g.kh + g.sh) / g.sh), oh_hi = min(g.oh - 1, (ih + g.ph) / g.sh);
        const int ow_lo = max(0, (iw + g.pw - g.kw + g.sw) / g.sw), ow_hi = min(g.ow - 1, (iw + g.pw) / g.sw);
        float s = 0.0f;
        for (int oh = oh_lo; oh <= oh_hi; ++oh) {
            int lo, hi;
            const int eh = avg_span(oh, g.h, g.kh, g.sh, g.ph, g.include_pad, lo, hi);
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
                const int ew = avg_span(ow, g.w, g.kw, g.sw, g.pw, g.include_pad, lo, hi);
                s += dplane[oh * g.ow + ow] / float(eh * ew);
            }
        }
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
