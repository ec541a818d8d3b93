// Quantization-aware training primitives (docs/QUANT_SPEC.md S2, S3): the
// observers' min/max, per-tensor and per-channel fake quantization with their
// straight-through gradients, and the per-channel scale/dot used by Conv+BN
// folding. Bit-exact with the CPU backend: `x / s` is a true division (NVRTC's
// default -prec-div=true) and rintf rounds half to even.
#include "common.cuh"

// RNE(x / s) + z as a float, before clamping (NaN stays NaN).
__device__ __forceinline__ float fq_unclamped(float x, float s, int z) { return rintf(x / s) + float(z); }

__device__ __forceinline__ float fq_value(float x, float s, int z, int qmin, int qmax) {
    const float v = fq_unclamped(x, s, z);
    if (v != v) return v;  // NaN propagates
    return (fminf(fmaxf(v, float(qmin)), float(qmax)) - float(z)) * s;
}

__device__ __forceinline__ float fq_mask(float x, float s, int z, int qmin, int qmax) {
    const float v = fq_unclamped(x, s, z);
    return (float(qmin) <= v && v <= float(qmax)) ? 1.0f : 0.0f;
}

// One pass of a two-pass min/max: block b reduces its grid-stride share of
// lo_src (for the minimum) and hi_src (for the maximum) into lo[b], hi[b].
// Pass 1 reads the tensor twice (lo_src = hi_src = x); pass 2, one block,
// reduces the per-block results. NaN is ignored, as by f32::min/max.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    min_max_fwd_f32(const float *__restrict__ lo_src, const float *__restrict__ hi_src, int n,
                    float *__restrict__ lo, float *__restrict__ hi) {
    __shared__ float red[32];
    const float inf = __int_as_float(0x7f800000);
    float a = inf, b = -inf;
    QAT_FOR(i, n) {
        a = fminf(a, lo_src[i]);
        b = fmaxf(b, hi_src[i]);
    }
    a = -qat_block_max(-a, red);
    b = qat_block_max(b, red);
    if (threadIdx.x == 0) {
        lo[blockIdx.x] = a;
        hi[blockIdx.x] = b;
    }
}

// The words of an activation observer, as src/quant/observer_words.rs lays
// them out and computes them (the reference this matches bit for bit).
#define QAT_OBS_MIN 0
#define QAT_OBS_MAX 1
#define QAT_OBS_INITIALIZED 2
#define QAT_OBS_STATUS 3
#define QAT_OBS_SCALE 4
#define QAT_OBS_ZERO_POINT 5
#define QAT_OBS_BAD_LO 6
#define QAT_OBS_BAD_HI 7
#define QAT_OBS_BAD_BATCH 1.0f
#define QAT_OBS_BAD_RANGE 2.0f
#define QAT_MIN_SCALE (1.0f / 8388608.0f)

__device__ __forceinline__ bool qat_finite(float v) { return fabsf(v) <= 3.40282347e38f; }

__device__ __forceinline__ void qat_obs_record(float *w, float status, float lo, float hi) {
    if (w[QAT_OBS_STATUS] == 0.0f) {
        w[QAT_OBS_STATUS] = status;
        w[QAT_OBS_BAD_LO] = lo;
        w[QAT_OBS_BAD_HI] = hi;
    }
}

// The second pass of an observer step: one block reduces the per-block
// minima and maxima of min_max_fwd_f32, then thread 0 folds the batch range
// into the words (EMA with `momentum`, the first batch copied) and writes the
// scale and zero point of the new range (S2, or S2s when `symmetric`). The
// EMA is written with __f*_rn so that --fmad cannot fuse it into an FMA the
// host reference does not have.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    observe_act_finish_f32(const float *__restrict__ lo, const float *__restrict__ hi, int blocks,
                           float *__restrict__ w, float momentum, int symmetric) {
    __shared__ float red[32];
    const float inf = __int_as_float(0x7f800000);
    float a = inf, b = -inf;
    for (int i = threadIdx.x; i < blocks; i += blockDim.x) {
        a = fminf(a, lo[i]);
        b = fmaxf(b, hi[i]);
    }
    a = -qat_block_max(-a, red);
    b = qat_block_max(b, red);
    if (threadIdx.x != 0) return;
    if (!qat_finite(a) || !qat_finite(b) || a > b) {
        qat_obs_record(w, QAT_OBS_BAD_BATCH, a, b);
        return;
    }
    float mn = a, mx = b;
    if (w[QAT_OBS_INITIALIZED] != 0.0f) {
        mn = __fadd_rn(w[QAT_OBS_MIN], __fmul_rn(momentum, __fsub_rn(a, w[QAT_OBS_MIN])));
        mx = __fadd_rn(w[QAT_OBS_MAX], __fmul_rn(momentum, __fsub_rn(b, w[QAT_OBS_MAX])));
    }
    float s;
    int z = 0;
    if (symmetric) {
        s = fmaxf(fmaxf(fabsf(mn), fabsf(mx)) / 127.0f, QAT_MIN_SCALE);
    } else {
        const float l = fminf(mn, 0.0f), h = fmaxf(mx, 0.0f);
        s = fmaxf((h - l) / 255.0f, QAT_MIN_SCALE);
        if (qat_finite(s)) z = min(max(-128 - int(rintf(l / s)), -128), 127);
    }
    if (!qat_finite(mn) || !qat_finite(mx) || mn > mx || !qat_finite(s)) {
        qat_obs_record(w, QAT_OBS_BAD_RANGE, mn, mx);
        return;
    }
    w[QAT_OBS_MIN] = mn;
    w[QAT_OBS_MAX] = mx;
    w[QAT_OBS_INITIALIZED] = 1.0f;
    w[QAT_OBS_SCALE] = s;
    w[QAT_OBS_ZERO_POINT] = float(z);
}

// Per-tensor fake quantization with the scale and zero point in force in an
// observer's words (the training forward; no parameter crosses to the host).
extern "C" __global__ void fake_quant_act_fwd_f32(const float *__restrict__ x, float *__restrict__ y, int n,
                                                  const float *__restrict__ w, int qmin, int qmax) {
    const float s = w[QAT_OBS_SCALE];
    const int z = int(w[QAT_OBS_ZERO_POINT]);
    QAT_FOR(i, n) y[i] = fq_value(x[i], s, z, qmin, qmax);
}

extern "C" __global__ void fake_quant_act_bwd_f32(const float *__restrict__ x, const float *__restrict__ dy,
                                                  float *__restrict__ dx, int n, const float *__restrict__ w,
                                                  int qmin, int qmax) {
    const float s = w[QAT_OBS_SCALE];
    const int z = int(w[QAT_OBS_ZERO_POINT]);
    QAT_FOR(i, n) dx[i] = dy[i] * fq_mask(x[i], s, z, qmin, qmax);
}

extern "C" __global__ void fake_quant_tensor_fwd_f32(const float *__restrict__ x, float *__restrict__ y, int n,
                                                     float s, int z, int qmin, int qmax) {
    QAT_FOR(i, n) y[i] = fq_value(x[i], s, z, qmin, qmax);
}

extern "C" __global__ void fake_quant_tensor_bwd_f32(const float *__restrict__ x, const float *__restrict__ dy,
                                                     float *__restrict__ dx, int n, float s, int z, int qmin,
                                                     int qmax) {
    QAT_FOR(i, n) dx[i] = dy[i] * fq_mask(x[i], s, z, qmin, qmax);
}

// One block per output channel of `inner` weights: scale = max(amax / 127,
// 2^-23), then the symmetric fake quantization on [-127, 127].
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    fake_quant_channel_fwd_f32(const float *__restrict__ w, float *__restrict__ y, float *__restrict__ scales,
                               int inner) {
    __shared__ float red[32];
    const long long off = (long long)blockIdx.x * inner;
    float amax = 0.0f;
    for (int i = threadIdx.x; i < inner; i += blockDim.x) amax = fmaxf(amax, fabsf(w[off + i]));
    amax = qat_block_max(amax, red);
    const float s = fmaxf(amax / 127.0f, 1.0f / 8388608.0f);
    if (threadIdx.x == 0) scales[blockIdx.x] = s;
    for (int i = threadIdx.x; i < inner; i += blockDim.x) y[off + i] = fq_value(w[off + i], s, 0, -127, 127);
}

extern "C" __global__ void fake_quant_channel_bwd_f32(const float *__restrict__ w, const float *__restrict__ scales,
                                                      const float *__restrict__ dy, float *__restrict__ dw, int n,
                                                      int inner) {
    QAT_FOR(i, n) dw[i] = dy[i] * fq_mask(w[i], scales[i / inner], 0, -127, 127);
}

// y[o, c, i] = x[o, c, i] * s[c] over an outer x c x inner view.
extern "C" __global__ void channel_scale_fwd_f32(const float *__restrict__ x, const float *__restrict__ s,
                                                 float *__restrict__ y, int n, int c, int inner) {
    QAT_FOR(i, n) y[i] = x[i] * s[(i / inner) % c];
}

// out[c] = sum over o, i of a[o, c, i] * b[o, c, i]: one block per channel,
// accumulated in double like the CPU reference.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    channel_dot_fwd_f32(const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ out, int outer,
                        int c, int inner) {
    __shared__ double red[32];
    double s = 0.0;
    for (int o = 0; o < outer; ++o) {
        const long long off = ((long long)o * c + blockIdx.x) * inner;
        for (int i = threadIdx.x; i < inner; i += blockDim.x) s += double(a[off + i]) * double(b[off + i]);
    }
    for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) red[wid] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < nw; ++w) t += red[w];
        out[blockIdx.x] = float(t);
    }
}
