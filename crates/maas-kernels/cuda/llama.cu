// The decoder's ops (llama family): RMSNorm, rotary positions on adjacent
// pairs, SwiGLU over stacked gate/up rows, matmuls with GGUF Q4_1 and Q8_0
// weights dequantised on the fly, embedding rows from Q8_0, and attention of
// new rows against a KV cache with grouped-query heads. Same semantics as the
// CPU ops of the same names.
#include "common.cuh"

// One block per row: out = x / sqrt(mean(x^2) + eps) * w.
extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, int cols, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (size_t)blockIdx.x * cols;
    float* orow = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
    float inv = rsqrtf(block_sum(ss, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) orow[c] = xr[c] * inv * w[c];
}

// Rotates pairs (2i, 2i+1) of every head of `heads` heads in each row by
// pos[row]·θᵢ; cos/sin tables are [positions × head_dim/2]. Rows are `stride`
// floats apart, the heads start at column `col0`.
extern "C" __global__ void rope_f32(float* __restrict__ x, const int* __restrict__ pos,
                                    const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                    int rows, int stride, int col0, int heads, int head_dim) {
    int half = head_dim / 2;
    int per_row = heads * half;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * per_row) return;
    int row = idx / per_row, rest = idx % per_row;
    int head = rest / half, i = rest % half;
    float c = cos_t[(size_t)pos[row] * half + i], s = sin_t[(size_t)pos[row] * half + i];
    float* p = x + (size_t)row * stride + col0 + head * head_dim + 2 * i;
    float a = p[0], b = p[1];
    p[0] = a * c - b * s;
    p[1] = a * s + b * c;
}

// out[r, j] = silu(gu[r, j]) * gu[r, ffn + j] (gate and up stacked per row).
extern "C" __global__ void swiglu_f32(const float* __restrict__ gu, float* __restrict__ out, int rows, int ffn) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * ffn) return;
    int r = idx / ffn, j = idx % ffn;
    float g = gu[(size_t)r * 2 * ffn + j], u = gu[(size_t)r * 2 * ffn + ffn + j];
    out[idx] = g / (1.0f + __expf(-g)) * u;
}

// IEEE half at p (little-endian), exactly.
__device__ __forceinline__ float half_at(const unsigned char* p) {
    unsigned int h = p[0] | (p[1] << 8);
    unsigned int sign = (h >> 15) << 31, e = (h >> 10) & 31, f = h & 1023;
    if (e == 0) {
        float v = (float)f * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (e == 31) return __int_as_float(sign | 0x7f800000u | (f << 13));
    return __int_as_float(sign | ((e + 112) << 23) | (f << 13));
}

// Dot products of one weight row's block with up to ROWS input rows; lane
// `l` takes blocks l, l+32, … of the row. Q4_1: 20 bytes per 32 weights
// (d, m, nibbles: low = element j, high = element j+16). Q8_0: 34 bytes (d, 32 int8).
#define ROWS 8
template <bool Q8>
__device__ __forceinline__ void qrow_dots(const unsigned char* __restrict__ wrow, const float* __restrict__ x,
                                          int k, int m0, int mcount, float* acc) {
    int nb = k / 32, lane = threadIdx.x & 31;
    for (int b = lane; b < nb; b += 32) {
        const unsigned char* blk = wrow + (size_t)b * (Q8 ? 34 : 20);
        float d = half_at(blk);
        float w[32];
        if (Q8) {
            for (int j = 0; j < 32; ++j) w[j] = d * (float)(signed char)blk[2 + j];
        } else {
            float mn = half_at(blk + 2);
            for (int j = 0; j < 16; ++j) {
                w[j] = d * (float)(blk[4 + j] & 15) + mn;
                w[j + 16] = d * (float)(blk[4 + j] >> 4) + mn;
            }
        }
        for (int r = 0; r < mcount; ++r) {
            const float* xr = x + (size_t)(m0 + r) * k + b * 32;
            float s = 0.0f;
            for (int j = 0; j < 32; ++j) s = fmaf(w[j], xr[j], s);
            acc[r] += s;
        }
    }
}

// out[m × n] = x[m × k] · Wᵀ, one warp per weight row, input rows in groups
// of ROWS (each weight row is read once per group).
template <bool Q8>
__device__ void qmatmul(const unsigned char* __restrict__ w, const float* __restrict__ x,
                        float* __restrict__ out, int m, int k, int n) {
    int warps = blockDim.x >> 5;
    int row = blockIdx.x * warps + (threadIdx.x >> 5);
    if (row >= n) return;
    const unsigned char* wrow = w + (size_t)row * (k / 32) * (Q8 ? 34 : 20);
    for (int m0 = 0; m0 < m; m0 += ROWS) {
        int mcount = min(ROWS, m - m0);
        float acc[ROWS];
        for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;
        qrow_dots<Q8>(wrow, x, k, m0, mcount, acc);
        for (int r = 0; r < mcount; ++r) {
            float s = warp_sum(acc[r]);
            if ((threadIdx.x & 31) == 0) out[(size_t)(m0 + r) * n + row] = s;
        }
    }
}

extern "C" __global__ void q4_1_matmul_f32(const unsigned char* __restrict__ w, const float* __restrict__ x,
                                           float* __restrict__ out, int m, int k, int n) {
    qmatmul<false>(w, x, out, m, k, n);
}

extern "C" __global__ void q8_0_matmul_f32(const unsigned char* __restrict__ w, const float* __restrict__ x,
                                           float* __restrict__ out, int m, int k, int n) {
    qmatmul<true>(w, x, out, m, k, n);
}

// Row ids[t] of a Q8_0 matrix [vocab × h], dequantised into out row t.
extern "C" __global__ void q8_0_embed_f32(const unsigned int* __restrict__ ids, const unsigned char* __restrict__ w,
                                          float* __restrict__ out, int h) {
    int t = blockIdx.x;
    const unsigned char* row = w + (size_t)ids[t] * (h / 32) * 34;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const unsigned char* blk = row + (c / 32) * 34;
        out[(size_t)t * h + c] = half_at(blk) * (float)(signed char)blk[2 + c % 32];
    }
}

// Attention of new rows against a KV cache, head size 64 (two dimensions per
// lane). One block per (row, head). Row r sees positions 0..visible[r]-1 of
// its sequence, whose keys and values start at element kv_off[r] of the
// pools ([positions × kv_heads·64] per sequence). Up to MAX_CTX positions.
#define MAX_CTX 8192
#define ATT_WARPS 4
extern "C" __global__ void kv_attention_f32(const float* __restrict__ q, const float* __restrict__ kpool,
                                            const float* __restrict__ vpool, const long long* __restrict__ kv_off,
                                            const int* __restrict__ visible, float* __restrict__ out,
                                            int heads, int kv_heads, float scale) {
    const int d = 64;
    __shared__ float probs[MAX_CTX];
    __shared__ float red[ATT_WARPS];
    __shared__ float acc_s[ATT_WARPS][64];
    int row = blockIdx.x / heads, head = blockIdx.x % heads;
    int kvh = head / (heads / kv_heads);
    int len = min(visible[row], MAX_CTX);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int kvd = kv_heads * d;
    const float* qv = q + (size_t)row * heads * d + head * d;
    float q0 = qv[lane], q1 = qv[lane + 32];
    const float* kb = kpool + kv_off[row] + kvh * d;
    const float* vb = vpool + kv_off[row] + kvh * d;
    float mx = MAAS_NEG_INF;
    for (int j = warp; j < len; j += ATT_WARPS) {
        const float* kr = kb + (size_t)j * kvd;
        float s = warp_sum(q0 * kr[lane] + q1 * kr[lane + 32]) * scale;
        if (lane == 0) probs[j] = s;
        mx = fmaxf(mx, s);
    }
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = red[0];
    for (int w = 1; w < ATT_WARPS; ++w) mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float e = __expf(probs[j] - mx);
        probs[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < ATT_WARPS; ++w) total += red[w];
    float a0 = 0.0f, a1 = 0.0f;
    for (int j = warp; j < len; j += ATT_WARPS) {
        const float* vr = vb + (size_t)j * kvd;
        a0 = fmaf(probs[j], vr[lane], a0);
        a1 = fmaf(probs[j], vr[lane + 32], a1);
    }
    acc_s[warp][lane] = a0;
    acc_s[warp][lane + 32] = a1;
    __syncthreads();
    if (warp == 0) {
        float o0 = 0.0f, o1 = 0.0f;
        for (int w = 0; w < ATT_WARPS; ++w) {
            o0 += acc_s[w][lane];
            o1 += acc_s[w][lane + 32];
        }
        float* orow = out + (size_t)row * heads * d + head * d;
        orow[lane] = o0 / total;
        orow[lane + 32] = o1 / total;
    }
}
