// Depthwise 2-d convolution (NCHW, groups == C, output channel o reads input
// channel o / m, m = O / C; weights [O][1][KH][KW]), as direct kernels: the
// grouped implicit GEMM of conv.cu would give every one-channel group a whole
// 128 x 128 tile. Every output (or input-gradient) element is one thread and
// accumulates its taps with fmaf in the same order as the CPU backend
// (src/backend/cpu/depthwise.rs): forward (ki, kj), backward-data (j, ki, kj).
// Backward-weight reduces in a fixed order (per-thread strided sums, then the
// warp/block tree of qat_block_sum, then split-K slices summed in order), so
// it is deterministic: no atomics.
#include "common.cuh"

// Field for field the ConvGeom of conv.cu (the backend passes the same
// array); its own name because the emulator compiles all kernel files as one
// translation unit.
struct DwGeom {
    int n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow;
};

// Taps per block of the backward-weight kernel (kernel columns held in
// registers by each thread).
#define DW_TAPS 8

// y[n][o][oy][ox] = bias[o] + sum_{ki, kj} w[o][ki][kj] * x[n][o / m][iy][ix]
// with iy = oy * sh - ph + ki * dh, ix = ox * sw - pw + kj * dw (zero outside).
// Grid-stride over the output; consecutive threads write consecutive ox.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    depthwise_conv2d_fwd_f32(const float *__restrict__ x, const float *__restrict__ w,
                             const float *__restrict__ bias, float *__restrict__ y, DwGeom g) {
    const int m = g.o / g.c, ohw = g.oh * g.ow;
    QAT_FOR(i, g.n * g.o * ohw) {
        const int ox = i % g.ow, oy = (i / g.ow) % g.oh, o = (i / ohw) % g.o, n = i / (ohw * g.o);
        const float *xp = x + ((long long)n * g.c + o / m) * g.h * g.w;
        const float *wp = w + (long long)o * g.kh * g.kw;
        float acc = 0.0f;
        for (int ki = 0; ki < g.kh; ++ki) {
            const int iy = oy * g.sh - g.ph + ki * g.dh;
            if (iy < 0 || iy >= g.h) continue;
            const float *xr = xp + (long long)iy * g.w;
            for (int kj = 0; kj < g.kw; ++kj) {
                const int ix = ox * g.sw - g.pw + kj * g.dw;
                if (ix >= 0 && ix < g.w) acc = fmaf(xr[ix], wp[ki * g.kw + kj], acc);
            }
        }
        y[i] = bias ? acc + bias[o] : acc;
    }
}

// dx[n][c][iy][ix] = sum_{j < m, ki, kj} w[c*m + j][ki][kj] * dy[n][c*m + j][oy][ox]
// over the (oy, ox) that read (iy, ix) through tap (ki, kj): the gather form
// of the transposed convolution, one thread per dx element, no atomics.
// No __launch_bounds__: with it, ptxas 13.0 holds this kernel to 40
// registers on sm_80 and spills 8 bytes; without, 44 registers, no spill.
extern "C" __global__ void depthwise_conv2d_bwd_data_f32(const float *__restrict__ dy, const float *__restrict__ w,
                                  float *__restrict__ dx, DwGeom g) {
    const int m = g.o / g.c, hw = g.h * g.w, ohw = g.oh * g.ow;
    QAT_FOR(i, g.n * g.c * hw) {
        const int ix = i % g.w, iy = (i / g.w) % g.h, c = (i / hw) % g.c, n = i / (hw * g.c);
        float acc = 0.0f;
        for (int j = 0; j < m; ++j) {
            const int o = c * m + j;
            const float *dp = dy + ((long long)n * g.o + o) * ohw;
            const float *wp = w + (long long)o * g.kh * g.kw;
            for (int ki = 0; ki < g.kh; ++ki) {
                const int ty = iy + g.ph - ki * g.dh;
                if (ty < 0 || ty % g.sh != 0 || ty / g.sh >= g.oh) continue;
                const float *dr = dp + (long long)(ty / g.sh) * g.ow;
                for (int kj = 0; kj < g.kw; ++kj) {
                    const int tx = ix + g.pw - kj * g.dw;
                    if (tx < 0 || tx % g.sw != 0 || tx / g.sw >= g.ow) continue;
                    acc = fmaf(dr[tx / g.sw], wp[ki * g.kw + kj], acc);
                }
            }
        }
        dx[i] = acc;
    }
}

// dw[o][ki][kj] = sum over (n, oy, ox) of dy[n][o][oy][ox] * x[n][o / m][iy][ix].
// grid (O, KH * ceil(KW / DW_TAPS), splits); block: any multiple of 32. Block
// (o, ki, column chunk, split) reduces the positions r = (n, oy, ox) in
// [split * chunk, min(R, (split + 1) * chunk)) for up to DW_TAPS taps of row
// ki, each thread taking r = r0 + threadIdx.x, r0 + threadIdx.x + blockDim.x,
// ... With one split the sums go to dw, else split s writes
// out[s][O][KH][KW] and conv2d_bwd_weight_reduce_f32 (conv.cu) adds the
// slices in order.
extern "C" __global__ void __launch_bounds__(QAT_BLOCK)
    depthwise_conv2d_bwd_weight_f32(const float *__restrict__ x, const float *__restrict__ dy,
                                    float *__restrict__ out, DwGeom g, int chunk) {
    __shared__ float red[32];
    const int o = blockIdx.x, kwc = (g.kw + DW_TAPS - 1) / DW_TAPS;
    const int ki = blockIdx.y / kwc, kj0 = (blockIdx.y % kwc) * DW_TAPS;
    const int ntap = min(DW_TAPS, g.kw - kj0);
    const int m = g.o / g.c, c = o / m, ohw = g.oh * g.ow;
    const int r0 = blockIdx.z * chunk, r1 = min(g.n * ohw, r0 + chunk);
    float acc[DW_TAPS];
#pragma unroll
    for (int t = 0; t < DW_TAPS; ++t) acc[t] = 0.0f;
    for (int r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
        const int n = r / ohw, p = r % ohw, oy = p / g.ow, ox = p % g.ow;
        const int iy = oy * g.sh - g.ph + ki * g.dh;
        if (iy < 0 || iy >= g.h) continue;
        const float d = dy[((long long)n * g.o + o) * ohw + p];
        const float *xr = x + (((long long)n * g.c + c) * g.h + iy) * g.w;
#pragma unroll
        for (int t = 0; t < DW_TAPS; ++t) {
            const int ix = ox * g.sw - g.pw + (kj0 + t) * g.dw;
            if (t < ntap && ix >= 0 && ix < g.w) acc[t] = fmaf(d, xr[ix], acc[t]);
        }
    }
    const int kk = g.kh * g.kw;
    float *dst = out + (long long)blockIdx.z * g.o * kk + (long long)o * kk + ki * g.kw + kj0;
#pragma unroll
    for (int t = 0; t < DW_TAPS; ++t) {
        if (t < ntap) {  // uniform over the block
            const float s = qat_block_sum(acc[t], red);
            if (threadIdx.x == 0) dst[t] = s;
        }
    }
}
