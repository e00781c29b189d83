// Elementwise ops: exact GELU (erf form, as BERT uses) and the embeddings sum.

extern "C" __global__ void gelu_f32(float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// out[t] = word[ids[t]] + pos[positions[t]] + type0, one block per token.
extern "C" __global__ void embed_f32(const unsigned int* __restrict__ ids, const int* __restrict__ positions,
                                     const float* __restrict__ word, const float* __restrict__ pos,
                                     const float* __restrict__ type0, float* __restrict__ out, int h) {
    int t = blockIdx.x;
    const float* wr = word + (size_t)ids[t] * h;
    const float* pr = pos + (size_t)positions[t] * h;
    for (int c = threadIdx.x; c < h; c += blockDim.x) out[(size_t)t * h + c] = wr[c] + pr[c] + type0[c];
}
