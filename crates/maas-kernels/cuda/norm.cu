// LayerNorm over rows, alone and fused with the residual add before it.
// One block per row; block_sum reductions for mean and variance.
#include "common.cuh"

__device__ __forceinline__ void norm_row(float* __restrict__ x, const float* __restrict__ y,
                                         const float* __restrict__ gamma, const float* __restrict__ beta,
                                         int cols, float eps) {
    __shared__ float scratch[32];
    float* row = x + (size_t)blockIdx.x * cols;
    const float* add = y ? y + (size_t)blockIdx.x * cols : nullptr;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = row[c] + (add ? add[c] : 0.0f);
        row[c] = v;
        s += v;
    }
    float mean = block_sum(s, scratch) / cols;
    float q = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = row[c] - mean;
        q += d * d;
    }
    float inv = rsqrtf(block_sum(q, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) row[c] = (row[c] - mean) * inv * gamma[c] + beta[c];
}

// x = LayerNorm(x + y), one block per row.
extern "C" __global__ void add_layer_norm_f32(float* __restrict__ x, const float* __restrict__ y,
                                              const float* __restrict__ gamma, const float* __restrict__ beta,
                                              int cols, float eps) {
    norm_row(x, y, gamma, beta, cols, eps);
}

// x = LayerNorm(x), one block per row.
extern "C" __global__ void layer_norm_f32(float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, int cols, float eps) {
    norm_row(x, nullptr, gamma, beta, cols, eps);
}
