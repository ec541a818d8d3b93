// Self-check kernels: they compute nothing for training, only results whose
// values the CUDA programming guide defines, so that the host emulator's
// semantics can be compared with the documented ones (and with a GPU's).

#include "common.cuh"

// One warp. For each width w in {32, 16, 8, 4} (index k), lane l writes
//   out[(k * 4 + 0) * 32 + l] = __shfl_sync(full, 100 + l, l + 3, w)
//   out[(k * 4 + 1) * 32 + l] = __shfl_xor_sync(full, 100 + l, 5, w)
//   out[(k * 4 + 2) * 32 + l] = __shfl_down_sync(full, 100 + l, 3, w)
//   out[(k * 4 + 3) * 32 + l] = __shfl_up_sync(full, 100 + l, 3, w)
extern "C" __global__ void shfl_semantics_i32(int *__restrict__ out) {
    const int l = threadIdx.x;
    const int v = 100 + l;
    for (int k = 0; k < 4; ++k) {
        const int w = 32 >> k;
        out[(k * 4 + 0) * 32 + l] = __shfl_sync(0xffffffffu, v, l + 3, w);
        out[(k * 4 + 1) * 32 + l] = __shfl_xor_sync(0xffffffffu, v, 5, w);
        out[(k * 4 + 2) * 32 + l] = __shfl_down_sync(0xffffffffu, v, 3u, w);
        out[(k * 4 + 3) * 32 + l] = __shfl_up_sync(0xffffffffu, v, 3u, w);
    }
}
