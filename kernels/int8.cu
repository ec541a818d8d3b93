// Integer-exact evaluation layers (docs/QUANT_SPEC.md S5-S7, S9): activations
// are stored as (q - z) * s in f32 and every kernel first recovers the int8 q,
// then computes in integers exactly as src/quant (the spec's reference):
// R1 requantization (src/quant/requant.rs, Requant::apply) and the rational
// residual add (src/quant/add.rs). The host splits each float32 multiplier
// into (mult, exp) with Requant::new, so the kernels never round a float.
#include "common.cuh"

// clamp(RNE(x / s) + z, -128, 127); NaN maps to -128 (src/quant/fake.rs).
__device__ __forceinline__ int i8_recover(float x, float s, int z) {
    const float v = rintf(x / s) + float(z);
    if (v != v) return -128;
    return int(fminf(fmaxf(v, -128.0f), 127.0f));
}

__device__ __forceinline__ unsigned long long rq_rne_shr(unsigned long long v, unsigned sh) {
    if (sh == 0) return v;
    if (sh >= 64) return 0;
    const unsigned long long q = v >> sh, rem = v & ((1ull << sh) - 1), half = 1ull << (sh - 1);
    return q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
}

// v = a * 2^k with a rounded (RNE) to at most 24 significant bits.
__device__ __forceinline__ unsigned long long rq_round24(unsigned long long v, int *k) {
    const int bits = 64 - __clzll((long long)v);
    if (bits <= 24) {
        *k = 0;
        return v;
    }
    *k = bits - 24;
    return rq_rne_shr(v, unsigned(bits - 24));
}

// R1: clamp(RNE(fl32(fl32(acc) * M)) + z, lo, hi) with M = mult * 2^exp,
// in integers (Requant::apply).
__device__ __forceinline__ int rq_apply(int acc, unsigned mult, int exp, int z, int lo, int hi) {
    const unsigned long long mag_acc = acc < 0 ? 0ull - (unsigned long long)(long long)acc : (unsigned long long)acc;
    int k, j;
    const unsigned long long a = rq_round24(mag_acc, &k);
    const unsigned long long p = rq_round24(a * (unsigned long long)mult, &j);
    const int e = k + j + exp;
    long long mag;
    if (p == 0)
        mag = 0;
    else if (e >= 32)
        mag = 1ll << 40;
    else if (e >= 0)
        mag = (long long)(p << e);
    else
        mag = (long long)rq_rne_shr(p, unsigned(-e));
    long long y = (acc < 0 ? -mag : mag) + z;
    y = y < lo ? lo : (y > hi ? hi : y);
    return int(y);
}

struct QConvGeom {
    int n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow;
};

struct QConvArgs {
    float s_x;
    int z_x;
    float s_y;
    int z_y;
    int lo, hi;
};

// The integer-exact convolution runs in three kernels on int8 data packed
// four channels to a 32-bit word, so that the main loop is DP4A (four int8
// products summed into an int32, sm_61+) with no division and no float:
// 1. qconv_pack_x_f32 recovers every input q once per layer (not once per
//    multiply-add) into [n][group][h][w][cg4] bytes, channels of a group
//    padded to a multiple of 4 with z_x;
// 2. qconv_pack_w_f32 packs the weights as [o][kh][kw][cg4] bytes (padding
//    0) and sums each output channel's weights;
// 3. qconv2d_dp4a_f32 sums q * w over the whole window, reading z_x for
//    every tap outside the image, and subtracts z_x * sum(w):
//    sum_valid (q - z_x) w = sum_window q' w - z_x sum(w) with q' = z_x at
//    padding, an integer identity, so the bits are the reference's.
// |q w| <= 128 * 127, so one tap of up to 2^14 words stays far inside int32;
// taps are accumulated in 64 bits, then + bias_q, clamped to int32 (S10.2),
// then R1 with the channel's (mult, exp).

__device__ __forceinline__ int qat_pack4(int a, int b, int c, int d) {
    return int((unsigned(a) & 0xffu) | ((unsigned(b) & 0xffu) << 8) | ((unsigned(c) & 0xffu) << 16) |
               ((unsigned(d) & 0xffu) << 24));
}

// One thread per packed word of x: (n, group, ih, iw, word).
extern "C" __global__ void qconv_pack_x_f32(const float *__restrict__ x, int *__restrict__ xq, QConvGeom g,
                                            int cgw, float s_x, int z_x) {
    const int cg = g.c / g.groups;
    const long long total = (long long)g.n * g.groups * g.h * g.w * cgw;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int word = int(i % cgw);
        long long r = i / cgw;
        const int iw = int(r % g.w);
        r /= g.w;
        const int ih = int(r % g.h);
        r /= g.h;
        const int grp = int(r % g.groups);
        const long long n = r / g.groups;
        int q[4];
        for (int j = 0; j < 4; ++j) {
            const int ci = word * 4 + j;
            q[j] = ci < cg ? i8_recover(x[((n * g.c + (long long)grp * cg + ci) * g.h + ih) * g.w + iw], s_x, z_x)
                           : z_x;
        }
        xq[i] = qat_pack4(q[0], q[1], q[2], q[3]);
    }
}

// One thread per output channel: its packed words and the sum of its weights.
extern "C" __global__ void qconv_pack_w_f32(const float *__restrict__ w_q, int *__restrict__ wp,
                                            int *__restrict__ wsum, QConvGeom g, int cgw) {
    const int cg = g.c / g.groups;
    QAT_FOR(o, g.o) {
        const float *wo = w_q + (long long)o * cg * g.kh * g.kw;
        int *out = wp + (long long)o * g.kh * g.kw * cgw;
        int sum = 0;
        for (int a = 0; a < g.kh; ++a)
            for (int b = 0; b < g.kw; ++b)
                for (int word = 0; word < cgw; ++word) {
                    int v[4];
                    for (int j = 0; j < 4; ++j) {
                        const int ci = word * 4 + j;
                        v[j] = ci < cg ? int(wo[(ci * g.kh + a) * g.kw + b]) : 0;
                        sum += v[j];
                    }
                    out[(a * g.kw + b) * cgw + word] = qat_pack4(v[0], v[1], v[2], v[3]);
                }
        wsum[o] = sum;
    }
}

// One thread per output element (ow fastest, so a warp reads neighbouring
// pixels of the same channels).
extern "C" __global__ void qconv2d_dp4a_f32(const int *__restrict__ xq, const int *__restrict__ wp,
                                            const int *__restrict__ wsum, const float *__restrict__ bias_q,
                                            const float *__restrict__ mult, const float *__restrict__ exps,
                                            float *__restrict__ y, QConvGeom g, QConvArgs q, int cgw) {
    const int og = g.o / g.groups;
    const int zword = qat_pack4(q.z_x, q.z_x, q.z_x, q.z_x);
    QAT_FOR(i, g.n * g.o * g.oh * g.ow) {
        const int ow = i % g.ow, oh = (i / g.ow) % g.oh, o = (i / (g.ow * g.oh)) % g.o, n = i / (g.ow * g.oh * g.o);
        const int grp = o / og;
        const int *xb = xq + ((long long)n * g.groups + grp) * g.h * g.w * cgw;
        const int *wb = wp + (long long)o * g.kh * g.kw * cgw;
        long long acc = 0;
        for (int a = 0; a < g.kh; ++a) {
            const int ih = oh * g.sh - g.ph + a * g.dh;
            const bool row_in = ih >= 0 && ih < g.h;
            for (int b = 0; b < g.kw; ++b) {
                const int iw = ow * g.sw - g.pw + b * g.dw;
                const int *wt = wb + (a * g.kw + b) * cgw;
                int tap = 0;
                if (row_in && iw >= 0 && iw < g.w) {
                    const int *xt = xb + ((long long)ih * g.w + iw) * cgw;
                    for (int k = 0; k < cgw; ++k) tap = __dp4a(xt[k], wt[k], tap);
                } else {
                    for (int k = 0; k < cgw; ++k) tap = __dp4a(zword, wt[k], tap);
                }
                acc += tap;
            }
        }
        long long total = acc - (long long)q.z_x * wsum[o] + __float_as_int(bias_q[o]);
        total = total < -2147483648ll ? -2147483648ll : (total > 2147483647ll ? 2147483647ll : total);
        const int qy = rq_apply(int(total), unsigned(__float_as_int(mult[o])), __float_as_int(exps[o]), q.z_y, q.lo,
                                q.hi);
        y[i] = float(qy - q.z_y) * q.s_y;
    }
}

struct QAddParams {
    float s_a, s_b, s_c;
    int z_a, z_b, z_c, lo, hi;
};

// n / d rounded to nearest, ties to even, d > 0 (src/quant/add.rs rne_div).
__device__ __forceinline__ long long q_rne_div(long long n, long long d) {
    long long q = n / d, r = n % d;
    if (r < 0) {
        q -= 1;
        r += d;
    }
    const long long r2 = 2 * r;
    return q + ((r2 > d || (r2 == d && (q & 1))) ? 1 : 0);
}

// c = clamp(rne_div(num_a (q_a - z_a) + num_b (q_b - z_b), den) + z_c, lo, hi).
extern "C" __global__ void qadd_fwd_f32(const float *__restrict__ a, const float *__restrict__ b,
                                        float *__restrict__ y, int n, long long num_a, long long num_b,
                                        long long den, QAddParams q) {
    QAT_FOR(i, n) {
        const long long qa = i8_recover(a[i], q.s_a, q.z_a), qb = i8_recover(b[i], q.s_b, q.z_b);
        long long v = q_rne_div(num_a * (qa - q.z_a) + num_b * (qb - q.z_b), den) + q.z_c;
        v = v < q.lo ? q.lo : (v > q.hi ? q.hi : v);
        y[i] = float(int(v) - q.z_c) * q.s_c;
    }
}

// One thread per (n, c): acc = sum over HW of (q - z_in), then R1 with
// (mult, exp) on [-128, 127]. Output (q_y - z_out) * s_out.
extern "C" __global__ void qgap_fwd_f32(const float *__restrict__ x, float *__restrict__ y, int rows, int hw,
                                        float s_in, int z_in, unsigned mult, int exp, float s_out, int z_out) {
    QAT_FOR(r, rows) {
        const float *p = x + (long long)r * hw;
        int acc = 0;
        for (int i = 0; i < hw; ++i) acc += i8_recover(p[i], s_in, z_in) - z_in;
        const int qy = rq_apply(acc, mult, exp, z_out, -128, 127);
        y[r] = float(qy - z_out) * s_out;
    }
}
