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

// Steps a reduction index k = (c, kh, kw) (row-major over kh x kw taps) to
// k + 1 without dividing.
__device__ __forceinline__ void conv_next_tap(int &c, int &kh, int &kw, const ConvGeom &g) {
    if (++kw == g.kw) {
        kw = 0;
        if (++kh == g.kh) {
            kh = 0;
            ++c;
        }
    }
}

// im2col(x)(pixel, k) for one group. Each thread keeps one pixel for the
// whole reduction (the block's rows are fixed), so its (n, oh, ow) decode
// happens once, at construction; each load decodes its first k once and
// steps to the next three.
struct FwdLoadX {
    const float *xb;  // this thread's image and group; null past the last pixel
    int ih0, iw0;     // input position of tap (0, 0)
    ConvGeom g;
    __device__ FwdLoadX(const float *x, ConvGeom g_, int M, int grp, int m0) : xb(nullptr), ih0(0), iw0(0), g(g_) {
        const int m = m0 + threadIdx.x % TG_BM;
        if (m < M) {
            const int ow = m % g.ow, oh = (m / g.ow) % g.oh, n = m / (g.ow * g.oh);
            xb = x + ((long long)n * g.c + (long long)grp * g.cg()) * g.h * g.w;
            ih0 = oh * g.sh - g.ph;
            iw0 = ow * g.sw - g.pw;
        }
    }
    __device__ void load(TgTile *S, int, int k0, int k_end) const {
        const int mm = threadIdx.x % TG_BM, kb = (threadIdx.x / TG_BM) * 4;
        const int khw = g.kh * g.kw;
        int k = k0 + kb;
        int ci = k / khw, r = k - ci * khw;
        int kh = r / g.kw, kw = r - kh * g.kw;
#pragma unroll
        for (int j = 0; j < 4; ++j, ++k) {
            float v = 0.0f;
            if (xb && k < k_end) {
                const int ih = ih0 + kh * g.dh, iw = iw0 + kw * g.dw;
                if (ih >= 0 && ih < g.h && iw >= 0 && iw < g.w) v = xb[((long long)ci * g.h + ih) * g.w + iw];
            }
            S[kb + j][mm] = v;
            conv_next_tap(ci, kh, kw, g);
        }
    }
};

// w(k, co) = w[grp * og + co][k]: 8 consecutive threads read 8 consecutive k.
struct FwdLoadW {
    const float *w;
    int Kc, og, grp;
    __device__ void load(TgTile *S, int n0, int k0, int k_end) const {
        const int kk = threadIdx.x % TG_BK, cb = threadIdx.x / TG_BK;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = n0 + cb + 32 * j, k = k0 + kk;
            S[kk][cb + 32 * j] = (co < og && k < k_end) ? w[(long long)(grp * og + co) * Kc + k] : 0.0f;
        }
    }
};

struct FwdStore {
    float *y;
    const float *bias;
    ConvGeom g;
    int grp;
    __device__ void operator()(int m, int co, float v) const {
        const int ow = m % g.ow, oh = (m / g.ow) % g.oh, n = m / (g.ow * g.oh);
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
    const FwdLoadX la(x, g, M, grp, blockIdx.x * TG_BM);
    const FwdLoadW lb{w, Kc, g.og(), grp};
    const FwdStore st{y, bias, g, grp};
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
// As in FwdLoadX, the pixel is decoded once and k stepped without dividing;
// only strides above 1 divide (by the stride).
struct BwdDataLoadDy {
    const float *db;  // this thread's image and group; null past the last pixel
    int th0, tw0;     // ih + ph, iw + pw
    ConvGeom g;
    __device__ BwdDataLoadDy(const float *dy, ConvGeom g_, int M, int grp, int m0)
        : db(nullptr), th0(0), tw0(0), g(g_) {
        const int m = m0 + threadIdx.x % TG_BM;
        if (m < M) {
            const int iw = m % g.w, ih = (m / g.w) % g.h, n = m / (g.w * g.h);
            db = dy + ((long long)n * g.o + (long long)grp * g.og()) * g.oh * g.ow;
            th0 = ih + g.ph;
            tw0 = iw + g.pw;
        }
    }
    __device__ void load(TgTile *S, int, int k0, int k_end) const {
        const int mm = threadIdx.x % TG_BM, kb = (threadIdx.x / TG_BM) * 4;
        const int khw = g.kh * g.kw;
        const bool unit = g.sh == 1 && g.sw == 1;
        int k = k0 + kb;
        int co = k / khw, r = k - co * khw;
        int kh = r / g.kw, kw = r - kh * g.kw;
#pragma unroll
        for (int j = 0; j < 4; ++j, ++k) {
            float v = 0.0f;
            if (db && k < k_end) {
                const int th = th0 - kh * g.dh, tw = tw0 - kw * g.dw;
                if (th >= 0 && tw >= 0) {
                    int oh = th, ow = tw;
                    bool hit = true;
                    if (!unit) {
                        oh = th / g.sh;
                        ow = tw / g.sw;
                        hit = oh * g.sh == th && ow * g.sw == tw;
                    }
                    if (hit && oh < g.oh && ow < g.ow) v = db[((long long)co * g.oh + oh) * g.ow + ow];
                }
            }
            S[kb + j][mm] = v;
            conv_next_tap(co, kh, kw, g);
        }
    }
};

// w(k = (co, kh, kw), ci) = w[grp * og + co][ci][kh][kw].
struct BwdDataLoadW {
    const float *w;
    ConvGeom g;
    int grp;
    __device__ void load(TgTile *S, int n0, int k0, int k_end) const {
        const int cc = threadIdx.x % TG_BN, kb = (threadIdx.x / TG_BN) * 4;
        const int ci = n0 + cc, khw = g.kh * g.kw, cg = g.cg();
        int k = k0 + kb;
        int co = k / khw, r = k - co * khw;
#pragma unroll
        for (int j = 0; j < 4; ++j, ++k) {
            float v = 0.0f;
            if (ci < cg && k < k_end) v = w[((long long)(grp * g.og() + co) * cg + ci) * khw + r];
            S[kb + j][cc] = v;
            if (++r == khw) {
                r = 0;
                ++co;
            }
        }
    }
};

struct BwdDataStore {
    float *dx;
    ConvGeom g;
    int grp;
    __device__ void operator()(int m, int ci, float v) const {
        const int iw = m % g.w, ih = (m / g.w) % g.h, n = m / (g.w * g.h);
        dx[(((long long)n * g.c + grp * g.cg() + ci) * g.h + ih) * g.w + iw] = v;
    }
};

template <bool TC>
__device__ __forceinline__ void conv2d_bwd_data(const float *__restrict__ dy, const float *__restrict__ w,
                                                float *__restrict__ dx, ConvGeom g) {
    const int grp = blockIdx.z;
    const int M = g.n * g.h * g.w, Kc = g.og() * g.kh * g.kw;
    const BwdDataLoadDy la(dy, g, M, grp, blockIdx.x * TG_BM);
    const BwdDataLoadW lb{w, g, grp};
    const BwdDataStore st{dx, g, grp};
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

// dy(co, r = (n, oh, ow)): 8 consecutive threads read 8 consecutive positions.
struct BwdWLoadDy {
    const float *dy;
    ConvGeom g;
    int grp;
    __device__ void load(TgTile *S, int m0, int k0, int k_end) const {
        const int kk = threadIdx.x % TG_BK, cb = threadIdx.x / TG_BK;
        const int r = k0 + kk, ohw = g.oh * g.ow;
        const int n = r / ohw, p = r % ohw;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = m0 + cb + 32 * j;
            S[kk][cb + 32 * j] =
                (co < g.og() && r < k_end) ? dy[((long long)n * g.o + grp * g.og() + co) * ohw + p] : 0.0f;
        }
    }
};

// im2col(x)(r = (n, oh, ow), col = (ci, kh, kw)). Each thread keeps one
// column (the block's columns are fixed), decoded once at construction; each
// load decodes its first r once and steps (n, oh, ow) for the next three.
struct BwdWLoadX {
    const float *xc;  // channel ci of image 0 in this group; null past Kc
    int dh0, dw0;     // kh * dh - ph, kw * dw - pw
    ConvGeom g;
    __device__ BwdWLoadX(const float *x, ConvGeom g_, int Kc, int grp, int n0)
        : xc(nullptr), dh0(0), dw0(0), g(g_) {
        const int col = n0 + threadIdx.x % TG_BN, khw = g.kh * g.kw;
        if (col < Kc) {
            const int ci = col / khw, r = col % khw, kh = r / g.kw, kw = r % g.kw;
            xc = x + ((long long)grp * g.cg() + ci) * g.h * g.w;
            dh0 = kh * g.dh - g.ph;
            dw0 = kw * g.dw - g.pw;
        }
    }
    __device__ void load(TgTile *S, int, int k0, int k_end) const {
        const int cc = threadIdx.x % TG_BN, kb = (threadIdx.x / TG_BN) * 4;
        int rr = k0 + kb;
        int ow = rr % g.ow, oh = (rr / g.ow) % g.oh, n = rr / (g.ow * g.oh);
#pragma unroll
        for (int j = 0; j < 4; ++j, ++rr) {
            float v = 0.0f;
            if (xc && rr < k_end) {
                const int ih = oh * g.sh + dh0, iw = ow * g.sw + dw0;
                if (ih >= 0 && ih < g.h && iw >= 0 && iw < g.w)
                    v = xc[((long long)n * g.c * g.h + ih) * g.w + iw];
            }
            S[kb + j][cc] = v;
            if (++ow == g.ow) {
                ow = 0;
                if (++oh == g.oh) {
                    oh = 0;
                    ++n;
                }
            }
        }
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
    const BwdWLoadDy la{dy, g, grp};
    const BwdWLoadX lb(x, g, Kc, grp, blockIdx.y * TG_BN);
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
