// The int8 linear layer, twin of cpu::linear_i8: weights quantised per output
// channel at load (w ≈ sw[j]·qw, row-major n × kp, kp = k rounded up to 4 and
// zero-padded), activations per row at run time and asymmetric
// (x ≈ sx[i]·(qx − zx[i]), qx in −128..127, rounded half to even), integer
// sums with __dp4a, y = sx[i]·sw[j]·(Σ qx·qw − zx[i]·Σ qw) + b[j].
#include "common.cuh"

// Max over the block.
__device__ __forceinline__ float block_max(float v, float* scratch /* 32 floats */) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    float t = (threadIdx.x < warps) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) t = warp_max(t);
    if (threadIdx.x == 0) scratch[0] = t;
    __syncthreads();
    float total = scratch[0];
    __syncthreads();
    return total;
}

// One block per row: q[i][0..kp] (zero past k), scale[i] and zero[i] of
// x·smooth (per channel: the factor of smoothed weights, or ones). The row's
// range, widened to hold 0, maps onto −128..127, as on the CPU.
extern "C" __global__ void quantize_rows_i8(const float* __restrict__ x, const float* __restrict__ smooth,
                                            signed char* __restrict__ q, float* __restrict__ scale,
                                            int* __restrict__ zero, int k, int kp) {
    __shared__ float scratch[32];
    const float* row = x + (size_t)blockIdx.x * k;
    signed char* dst = q + (size_t)blockIdx.x * kp;
    float hi = 0.0f, nlo = 0.0f;
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        float v = row[c] * smooth[c];
        hi = fmaxf(hi, v);
        nlo = fmaxf(nlo, -v);
    }
    hi = block_max(hi, scratch);
    float lo = -block_max(nlo, scratch);
    float s = 1.0f;
    int z = 0;
    if (hi > lo) {
        s = (hi - lo) / 255.0f;
        z = (int)fminf(fmaxf(-128.0f - rintf(lo / s), -128.0f), 127.0f);
    }
    float inv = 1.0f / s;
    for (int c = threadIdx.x; c < kp; c += blockDim.x) {
        int v = c < k ? (int)rintf(row[c] * smooth[c] * inv) + z : 0;
        dst[c] = (signed char)min(max(v, -128), 127);
    }
    if (threadIdx.x == 0) {
        scale[blockIdx.x] = s;
        zero[blockIdx.x] = z;
    }
}

// out[m×n] = sx·sw·(q[m×kp] · w[n×kp]ᵀ − zx·colsum) + b[n]. A 64×64 output tile per block
// of 256 threads, each thread 4×4 outputs; 64 rows × 16 words (64 k values)
// of q and w staged through shared memory as 32-bit words of 4 bytes.
#define I8_TM 64
#define I8_TN 64
#define I8_TW 16

extern "C" __global__ void linear_i8(const signed char* __restrict__ q, const float* __restrict__ sx,
                                     const int* __restrict__ zx, const signed char* __restrict__ w,
                                     const float* __restrict__ sw, const int* __restrict__ colsum,
                                     const float* __restrict__ b, float* __restrict__ out,
                                     int m, int kp, int n) {
    __shared__ int xs[I8_TW][I8_TM + 1];
    __shared__ int ws[I8_TW][I8_TN + 1];
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int row0 = blockIdx.y * I8_TM, col0 = blockIdx.x * I8_TN;
    int words = kp / 4;
    const int* qw = reinterpret_cast<const int*>(q);
    const int* ww = reinterpret_cast<const int*>(w);
    int acc[4][4] = {{0}};
    for (int p0 = 0; p0 < words; p0 += I8_TW) {
        for (int e = threadIdx.x; e < I8_TM * I8_TW; e += 256) {
            int r = e / I8_TW, c = e % I8_TW;
            int gc = p0 + c;
            int gr = row0 + r, wr = col0 + r;
            xs[c][r] = (gr < m && gc < words) ? qw[(size_t)gr * words + gc] : 0;
            ws[c][r] = (wr < n && gc < words) ? ww[(size_t)wr * words + gc] : 0;
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < I8_TW; ++c) {
            int xv[4], wv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) xv[i] = xs[c][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) wv[j] = ws[c][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(xv[i], wv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int r = row0 + ty * 4 + i;
        if (r >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int c = col0 + tx * 4 + j;
            if (c < n) {
                int v = acc[i][j] - zx[r] * colsum[c];
                out[(size_t)r * n + c] = sx[r] * sw[c] * (float)v + (b ? b[c] : 0.0f);
            }
        }
    }
}
