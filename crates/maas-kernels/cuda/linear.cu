// out[m×n] = x[m×k] · w[n×k]ᵀ + b[n]   (w as stored in checkpoints: [out × in])
//
// 64×64 output tile per block of 256 threads, each thread 4×4 outputs;
// 64×16 tiles of x and w staged through shared memory (padded against bank
// conflicts). Bounds-checked, so any m, n, k work.
#define TM 64
#define TN 64
#define TK 16

extern "C" __global__ void linear_f32(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, float* __restrict__ out,
                                      int m, int k, int n) {
    __shared__ float xs[TK][TM + 1];
    __shared__ float ws[TK][TN + 1];
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int row0 = blockIdx.y * TM, col0 = blockIdx.x * TN;
    float acc[4][4] = {{0.0f}};
    for (int p0 = 0; p0 < k; p0 += TK) {
        // 256 threads load 64×16 of x and of w: 4 elements each.
        for (int e = threadIdx.x; e < TM * TK; e += 256) {
            int r = e / TK, c = e % TK;
            int gr = row0 + r, gc = p0 + c;
            xs[c][r] = (gr < m && gc < k) ? x[(size_t)gr * k + gc] : 0.0f;
            int wr = col0 + r;
            ws[c][r] = (wr < n && gc < k) ? w[(size_t)wr * k + gc] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < TK; ++c) {
            float xv[4], wv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) xv[i] = xs[c][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) wv[j] = ws[c][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xv[i], wv[j], acc[i][j]);
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
            if (c < n) out[(size_t)r * n + c] = acc[i][j] + (b ? b[c] : 0.0f);
        }
    }
}
