// Tensor-core primitives: TF32 conversion and the warp-wide
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (compute capability
// 8.0 and later). On the emulated device both go through emu/shim.h, which
// implements the fragment layouts documented in the PTX ISA ("Matrix
// fragments for mma.m16n8k8", .tf32 types):
//
//   g = lane / 4, t = lane % 4
//   A (16 x 8, row):  a0 (g, t)   a1 (g + 8, t)   a2 (g, t + 4)   a3 (g + 8, t + 4)
//   B (8 x 8, col):   b0 (t, g)   b1 (t + 4, g)
//   C, D (16 x 8):    c0 (g, 2t)  c1 (g, 2t + 1)  c2 (g + 8, 2t)  c3 (g + 8, 2t + 1)
//
// with (row, column) of the matrix each register holds.
#pragma once

// x rounded to TF32 (10 explicit mantissa bits), to nearest with ties away
// from zero (cvt.rna.tf32.f32), as the bits of a float.
__device__ __forceinline__ unsigned qat_tf32(float x) {
#ifdef QAT_EMU
    return qat_emu::tf32_rna(x);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    // No cvt to TF32 before compute capability 8.0; nothing launches the
    // TF32 kernels there, but the files still compile.
    (void)x;
    __trap();
    return 0u;
#endif
}

// d += A * B on one 16x8x8 tile; every lane of the warp calls it, with the
// fragments above (a, b from qat_tf32).
__device__ __forceinline__ void qat_mma_tf32(float d[4], const unsigned a[4], const unsigned b[2]) {
#ifdef QAT_EMU
    qat_emu::mma_m16n8k8_tf32(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    // Older GPUs have no TF32 tensor cores; the backend never launches the
    // TF32 kernels there (it checks the compute capability first).
    __trap();
#endif
}
