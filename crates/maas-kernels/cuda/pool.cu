// Sentence pooling: mean over a sequence's rows, then L2 normalisation.
// One block per sequence.
#include "common.cuh"

extern "C" __global__ void mean_pool_l2_f32(const float* __restrict__ x, const int* __restrict__ starts,
                                            const int* __restrict__ lens, float* __restrict__ out, int h) {
    __shared__ float scratch[32];
    int seq = blockIdx.x, start = starts[seq], len = lens[seq];
    float inv_len = 1.0f / (float)(len > 0 ? len : 1);
    float sq = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        float s = 0.0f;
        for (int r = 0; r < len; ++r) s += x[(size_t)(start + r) * h + c];
        s *= inv_len;
        out[(size_t)seq * h + c] = s;
        sq += s * s;
    }
    float norm = sqrtf(block_sum(sq, scratch));
    float inv = norm > 1e-12f ? 1.0f / norm : 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) out[(size_t)seq * h + c] *= inv;
}
