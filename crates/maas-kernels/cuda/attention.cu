// Self-attention over packed, unpadded sequences, for head size 32 (one lane
// per dimension). One block per (sequence, head); each warp takes query rows
// in turn: scores against the sequence's keys go to shared memory, softmax
// with warp reductions, then the weighted sum of values, lane = dimension.
// Sequences up to MAX_LEN tokens.
#include "common.cuh"
#define MAX_LEN 512
#define WARPS 4

extern "C" __global__ void attention_f32(const float* __restrict__ qkv, const int* __restrict__ starts,
                                         const int* __restrict__ lens, float* __restrict__ out,
                                         int heads, float scale) {
    const int d = 32;
    __shared__ float probs[WARPS][MAX_LEN];
    int seq = blockIdx.x / heads, head = blockIdx.x % heads;
    int start = starts[seq], len = min(lens[seq], MAX_LEN);
    int h = heads * d, row = 3 * h;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = warp; i < len; i += WARPS) {
        float q = qkv[(size_t)(start + i) * row + head * d + lane];
        float mx = MAAS_NEG_INF;
        for (int j = 0; j < len; ++j) {
            float kv = qkv[(size_t)(start + j) * row + h + head * d + lane];
            float s = warp_sum(q * kv) * scale;
            if (lane == 0) probs[warp][j] = s;
            mx = fmaxf(mx, s);
        }
        __syncwarp();
        float sum = 0.0f;
        for (int j = lane; j < len; j += 32) {
            float e = __expf(probs[warp][j] - mx);
            probs[warp][j] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        __syncwarp();
        float acc = 0.0f;
        for (int j = 0; j < len; ++j) acc = fmaf(probs[warp][j], qkv[(size_t)(start + j) * row + 2 * h + head * d + lane], acc);
        out[(size_t)(start + i) * h + head * d + lane] = acc / sum;
        __syncwarp();
    }
}
