// 2-d convolution (NCHW input, OIHW weights, groups) as implicit GEMM: the
// im2col matrix is gathered tile by tile into shared memory (tile_gemm.cuh)
// and never materialized. Per group g, with Kc = (C/groups) * KH * KW:
//   forward      y  [pixel (n,oh,ow)][co]  = sum_k  im2col(x)[pixel][k] * w[co][k]
//   backward-data dx[pixel (n,ih,iw)][ci]  = sum_k' dy-gather[pixel][k'=(co,kh,kw)] * w[co][ci][kh][kw]
//   backward-weight dw[co][k]              = sum_r  dy[co][r=(n,oh,ow)] * im2col(x)[r][k]
#include "tile_gemm.cuh"

struct ConvGeom {
    int n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow;
    __device__ int cg() const { return c / groups; }
    __device__ int og() const { return o / groups; }
};

// ---- forward -----------------------------------------------------------------

// Output pixel m = (n, oh, ow) of an oh x ow plane, decoded without dividing.
struct PixelDecoder {
    QatDivisor w_div, h_div;
    __device__ PixelDecoder(int h, int w) : w_div(w), h_div(h) {}
    __device__ void operator()(int m, int &n, int &y, int &x) const {
        const int q = w_div.div(m);
        x = m - q * w_div.d;
        n = h_div.div(q);
        y = q - n * h_div.d;
    }
};

// im2col(x)(pixel, k) for one group. Each thread keeps one pixel for the
// whole reduction (the block's rows are fixed), decoded at construction, and
// its k = (c, kh, kw) as a counter stepped TG_BK per call.
struct FwdLoadX {
    const float *x;   // the tensor (the source address of zero fills)
    const float *xb;  // this thread's image and group; null past the last pixel
    int ih0, iw0;     // input position of tap (0, 0)
    ConvGeom g;
    TgCounter k;
    __device__ FwdLoadX(const float *x_, ConvGeom g_, int M, int grp, int m0)
        : x(x_), xb(nullptr), ih0(0), iw0(0), g(g_), k((threadIdx.x / TG_BM) * 4, TG_BK, g_.kh, g_.kw) {
        const int m = m0 + threadIdx.x % TG_BM;
        if (m < M) {
            const int ow = m % g.ow, oh = (m / g.ow) % g.oh, n = m / (g.ow * g.oh);
            xb = x + ((long long)n * g.c + (long long)grp * g.cg()) * g.h * g.w;
            ih0 = oh * g.sh - g.ph;
            iw0 = ow * g.sw - g.pw;
        }
    }
    template <bool ASYNC>
    __device__ void load(TgTile *S, int, int k0, int k_end) {
        const int mm = threadIdx.x % TG_BM, kb = (threadIdx.x / TG_BM) * 4;
        TgDigits d = k.at;  // (c, kh, kw) of k0 + kb
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int ih = ih0 + d.mid * g.dh, iw = iw0 + d.lo * g.dw;
            const bool valid = xb && k0 + kb + j < k_end && ih >= 0 && ih < g.h && iw >= 0 && iw < g.w;
            qat_tile_put<ASYNC>(&S[kb + j][mm], valid ? xb + ((long long)d.hi * g.h + ih) * g.w + iw : x, valid);
            k.next(d);
        }
        k.advance();
    }
};

// w(k, co) = w[grp * og + co][k]: 8 consecutive threads read 8 consecutive k.
struct FwdLoadW {
    const float *w;
    int Kc, og, grp;
    template <bool ASYNC>
    __device__ void load(TgTile *S, int n0, int k0, int k_end) const {
        const int kk = threadIdx.x % TG_BK, cb = threadIdx.x / TG_BK;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = n0 + cb + 32 * j, k = k0 + kk;
            const bool valid = co < og && k < k_end;
            qat_tile_put<ASYNC>(&S[kk][cb + 32 * j], valid ? w + (long long)(grp * og + co) * Kc + k : w, valid);
        }
    }
};

struct FwdStore {
    float *y;
    const float *bias;
    ConvGeom g;
    int grp;
    PixelDecoder pixel;
    __device__ FwdStore(float *y_, const float *bias_, ConvGeom g_, int grp_)
        : y(y_), bias(bias_), g(g_), grp(grp_), pixel(g_.oh, g_.ow) {}
    __device__ void operator()(int m, int co, float v) const {
        int n, oh, ow;
        pixel(m, n, oh, ow);
        const int oc = grp * g.og() + co;
        if (bias) v += bias[oc];
        y[(((long long)n * g.o + oc) * g.oh + oh) * g.ow + ow] = v;
    }
};

template <bool TC>
__device__ __forceinline__ void conv2d_fwd(const float *__restrict__ x, const float *__restrict__ w,
                                           const float *__restrict__ bias, float *__restrict__ y, ConvGeom g) {
    const int grp = blockIdx.z;
    const int M = g.n * g.oh * g.ow, Kc = g.cg() * g.kh * g.kw;
    FwdLoadX la(x, g, M, grp, blockIdx.x * TG_BM);
    FwdLoadW lb{w, Kc, g.og(), grp};
    const FwdStore st(y, bias, g, grp);
    tile_gemm<TC>(M, g.og(), blockIdx.x * TG_BM, blockIdx.y * TG_BN, 0, Kc, la, lb, st);
}

// grid (ceil(N*OH*OW / 128), ceil(O/groups / 128), groups), block 256: row tiles
// on x (up to 2^31 - 1 blocks), and consecutive blocks share a weight tile.
// FP32 and TF32.
extern "C" __global__ void __launch_bounds__(TG_THREADS)
    conv2d_fwd_f32(const float *__restrict__ x, const float *__restrict__ w, const float *__restrict__ bias,
                   float *__restrict__ y, ConvGeom g) {
    conv2d_fwd<false>(x, w, bias, y, g);
}
extern "C" __global__ void __launch_bounds__(TG_THREADS)
    conv2d_fwd_tf32(const float *__restrict__ x, const float *__restrict__ w, const float *__restrict__ bias,
                    float *__restrict__ y, ConvGeom g) {
    conv2d_fwd<true>(x, w, bias, y, g);
}

// ---- backward data -------------------------------------------------------------

// dy gathered at input pixel (n, ih, iw) for k = (co, kh, kw): the output
// position that read x[ih][iw] through tap (kh, kw), or 0 when there is none.
// As in FwdLoadX, the pixel is decoded once and k kept as a counter; strides
// above 1 divide by the stride through a QatDivisor.
struct BwdDataLoadDy {
    const float *dy;  // the tensor (the source address of zero fills)
    const float *db;  // this thread's image and group; null past the last pixel
    int th0, tw0;     // ih + ph, iw + pw
    ConvGeom g;
    TgCounter k;
    QatDivisor sh, sw;
    __device__ BwdDataLoadDy(const float *dy_, ConvGeom g_, int M, int grp, int m0)
        : dy(dy_), db(nullptr), th0(0), tw0(0), g(g_), k((threadIdx.x / TG_BM) * 4, TG_BK, g_.kh, g_.kw),
          sh(g_.sh), sw(g_.sw) {
        const int m = m0 + threadIdx.x % TG_BM;
        if (m < M) {
            const int iw = m % g.w, ih = (m / g.w) % g.h, n = m / (g.w * g.h);
            db = dy + ((long long)n * g.o + (long long)grp * g.og()) * g.oh * g.ow;
            th0 = ih + g.ph;
            tw0 = iw + g.pw;
        }
    }
    template <bool ASYNC>
    __device__ void load(TgTile *S, int, int k0, int k_end) {
        const int mm = threadIdx.x % TG_BM, kb = (threadIdx.x / TG_BM) * 4;
        const bool unit = g.sh == 1 && g.sw == 1;
        TgDigits d = k.at;  // (co, kh, kw) of k0 + kb
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int th = th0 - d.mid * g.dh, tw = tw0 - d.lo * g.dw;
            bool valid = db && k0 + kb + j < k_end && th >= 0 && tw >= 0;
            int oh = th, ow = tw;
            if (valid && !unit) {
                oh = sh.div(th);
                ow = sw.div(tw);
                valid = oh * g.sh == th && ow * g.sw == tw;
            }
            valid = valid && oh < g.oh && ow < g.ow;
            qat_tile_put<ASYNC>(&S[kb + j][mm], valid ? db + ((long long)d.hi * g.oh + oh) * g.ow + ow : dy, valid);
            k.next(d);
        }
        k.advance();
    }
};

// w(k = (co, kh, kw), ci) = w[grp * og + co][ci][kh][kw], with k kept as the
// counter (co, tap).
struct BwdDataLoadW {
    const float *w;
    ConvGeom g;
    int grp;
    TgCounter k;
    __device__ BwdDataLoadW(const float *w_, ConvGeom g_, int grp_)
        : w(w_), g(g_), grp(grp_), k((threadIdx.x / TG_BN) * 4, TG_BK, 1, g_.kh * g_.kw) {}
    template <bool ASYNC>
    __device__ void load(TgTile *S, int n0, int k0, int k_end) {
        const int cc = threadIdx.x % TG_BN, kb = (threadIdx.x / TG_BN) * 4;
        const int ci = n0 + cc, khw = g.kh * g.kw, cg = g.cg();
        TgDigits d = k.at;  // (co, 0, tap) of k0 + kb
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const bool valid = ci < cg && k0 + kb + j < k_end;
            qat_tile_put<ASYNC>(&S[kb + j][cc], valid ? w + ((long long)(grp * g.og() + d.hi) * cg + ci) * khw + d.lo : w,
                                valid);
            k.next(d);
        }
        k.advance();
    }
};

struct BwdDataStore {
    float *dx;
    ConvGeom g;
    int grp;
    PixelDecoder pixel;
    __device__ BwdDataStore(float *dx_, ConvGeom g_, int grp_) : dx(dx_), g(g_), grp(grp_), pixel(g_.h, g_.w) {}
    __device__ void operator()(int m, int ci, float v) const {
        int n, ih, iw;
        pixel(m, n, ih, iw);
        dx[(((long long)n * g.c + grp * g.cg() + ci) * g.h + ih) * g.w + iw] = v;
    }
};

template <bool TC>
__device__ __forceinline__ void conv2d_bwd_data(const float *__restrict__ dy, const float *__restrict__ w,
                                                float *__restrict__ dx, ConvGeom g) {
    const int grp = blockIdx.z;
    const int M = g.n * g.h * g.w, Kc = g.og() * g.kh * g.kw;
    BwdDataLoadDy la(dy, g, M, grp, blockIdx.x * TG_BM);
    BwdDataLoadW lb(w, g, grp);
    const BwdDataStore st(dx, g, grp);
    tile_gemm<TC>(M, g.cg(), blockIdx.x * TG_BM, blockIdx.y * TG_BN, 0, Kc, la, lb, st);
}

// grid (ceil(N*H*W / 128), ceil(C/groups / 128), groups), block 256; FP32 and
// TF32.
extern "C" __global__ void __launch_bounds__(TG_THREADS)
    conv2d_bwd_data_f32(const float *__restrict__ dy, const float *__restrict__ w, float *__restrict__ dx, ConvGeom g) {
    conv2d_bwd_data<false>(dy, w, dx, g);
}
extern "C" __global__ void __launch_bounds__(TG_THREADS)
    conv2d_bwd_data_tf32(const float *__restrict__ dy, const float *__restrict__ w, float *__restrict__ dx, ConvGeom g) {
    conv2d_bwd_data<true>(dy, w, dx, g);
}

// ---- backward weight -------------------------------------------------------------

// dy(co, r = (n, oh, ow)): 8 consecutive threads read 8 consecutive
// positions; each thread keeps its r as the counter (n, pixel).
struct BwdWLoadDy {
    const float *dy;
    ConvGeom g;
    int grp;
    TgCounter r;
    __device__ BwdWLoadDy(const float *dy_, ConvGeom g_, int grp_, int k_begin)
        : dy(dy_), g(g_), grp(grp_), r(k_begin + threadIdx.x % TG_BK, TG_BK, 1, g_.oh * g_.ow) {}
    template <bool ASYNC>
    __device__ void load(TgTile *S, int m0, int k0, int k_end) {
        const int kk = threadIdx.x % TG_BK, cb = threadIdx.x / TG_BK;
        const int ohw = g.oh * g.ow;
        const bool in_k = k0 + kk < k_end;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = m0 + cb + 32 * j;
            const bool valid = co < g.og() && in_k;
            qat_tile_put<ASYNC>(&S[kk][cb + 32 * j],
                                valid ? dy + ((long long)r.at.hi * g.o + grp * g.og() + co) * ohw + r.at.lo : dy, valid);
        }
        r.advance();
    }
};

// im2col(x)(r = (n, oh, ow), col = (ci, kh, kw)). Each thread keeps one
// column (the block's columns are fixed), decoded once at construction, and
// its r as the counter (n, oh, ow).
struct BwdWLoadX {
    const float *x;   // the tensor (the source address of zero fills)
    const float *xc;  // channel ci of image 0 in this group; null past Kc
    int dh0, dw0;     // kh * dh - ph, kw * dw - pw
    ConvGeom g;
    TgCounter r;
    __device__ BwdWLoadX(const float *x_, ConvGeom g_, int Kc, int grp, int n0, int k_begin)
        : x(x_), xc(nullptr), dh0(0), dw0(0), g(g_), r(k_begin + (threadIdx.x / TG_BN) * 4, TG_BK, g_.oh, g_.ow) {
        const int col = n0 + threadIdx.x % TG_BN, khw = g.kh * g.kw;
        if (col < Kc) {
            const int ci = col / khw, rem = col % khw, kh = rem / g.kw, kw = rem % g.kw;
            xc = x + ((long long)grp * g.cg() + ci) * g.h * g.w;
            dh0 = kh * g.dh - g.ph;
            dw0 = kw * g.dw - g.pw;
        }
    }
    template <bool ASYNC>
    __device__ void load(TgTile *S, int, int k0, int k_end) {
        const int cc = threadIdx.x % TG_BN, kb = (threadIdx.x / TG_BN) * 4;
        TgDigits d = r.at;  // (n, oh, ow) of k0 + kb
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int ih = d.mid * g.sh + dh0, iw = d.lo * g.sw + dw0;
            const bool valid = xc && k0 + kb + j < k_end && ih >= 0 && ih < g.h && iw >= 0 && iw < g.w;
            qat_tile_put<ASYNC>(&S[kb + j][cc], valid ? xc + ((long long)d.hi * g.c * g.h + ih) * g.w + iw : x, valid);
            r.next(d);
        }
        r.advance();
    }
};

struct BwdWStore {
    float *out;  // dw, or this split's slice of the workspace
    int Kc, og, grp;
    __device__ void operator()(int co, int col, float v) const {
        out[(long long)(grp * og + co) * Kc + col] = v;
    }
};

// The reduction over N*OH*OW is long and the output small, so it is split in
// `splits` chunks (split-K): blockIdx.z = split * groups + group. With one
// split the result goes straight to dw, else split s writes
// ws[s][O][Kc] and conv2d_bwd_weight_reduce_f32 sums the slices in order
// (deterministic, no atomics).
template <bool TC>
__device__ __forceinline__ void conv2d_bwd_weight(const float *__restrict__ x, const float *__restrict__ dy,
                                                  float *__restrict__ out, ConvGeom g, int chunk) {
    const int grp = blockIdx.z % g.groups, split = blockIdx.z / g.groups;
    const int R = g.n * g.oh * g.ow, Kc = g.cg() * g.kh * g.kw;
    const int k_begin = split * chunk;
    const int k_end = min(R, k_begin + chunk);
    float *dst = out + (long long)split * g.o * Kc;
    BwdWLoadDy la(dy, g, grp, k_begin);
    BwdWLoadX lb(x, g, Kc, grp, blockIdx.y * TG_BN, k_begin);
    const BwdWStore st{dst, Kc, g.og(), grp};
    tile_gemm<TC>(g.og(), Kc, blockIdx.x * TG_BM, blockIdx.y * TG_BN, k_begin, k_end, la, lb, st);
}

// grid (ceil(O/groups / 128), ceil(Kc / 128), groups * splits), block 256;
// FP32 and TF32.
extern "C" __global__ void __launch_bounds__(TG_THREADS)
    conv2d_bwd_weight_f32(const float *__restrict__ x, const float *__restrict__ dy, float *__restrict__ out,
                          ConvGeom g, int splits, int chunk) {
    conv2d_bwd_weight<false>(x, dy, out, g, chunk);
    (void)splits;
}
extern "C" __global__ void __launch_bounds__(TG_THREADS)
    conv2d_bwd_weight_tf32(const float *__restrict__ x, const float *__restrict__ dy, float *__restrict__ out,
                           ConvGeom g, int splits, int chunk) {
    conv2d_bwd_weight<true>(x, dy, out, g, chunk);
    (void)splits;
}

// dw[i] = sum_s ws[s * len + i]
extern "C" __global__ void conv2d_bwd_weight_reduce_f32(const float *__restrict__ ws, float *__restrict__ dw, int len,
                                                        int splits) {
    QAT_FOR(i, len) {
        float s = 0.0f;
        for (int k = 0; k < splits; ++k) s += ws[(long long)k * len + i];
        dw[i] = s;
    }
}
