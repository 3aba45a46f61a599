// Splat kernels for the cuda backend (CuPy RawModule): energy accumulation, Hebbian
// feedback, decay and the Philox generator. The same algorithms as the Vulkan shaders
// shaders/energy_accumulate.comp, hebbian.comp, decay.comp and philox.comp; see those (and
// m2m_gpu/synthetic.py for the Philox layout) for the design. Ranking keys come from
// knn_distance in kernels/knn.cu (mode 2).

#define INF_F __int_as_float(0x7f800000)

// One 256-thread block per query row: fold a key tile into (M, S, SK) and the gradient sums.
extern "C" __global__ void energy_accumulate(
    float* __restrict__ tile, float* __restrict__ state, float* __restrict__ grad,
    const float4* __restrict__ params, const float* __restrict__ mu,
    unsigned int t, unsigned int d, unsigned long long offset, unsigned int want_grad)
{
    __shared__ float red[256];
    __shared__ float red2[256];
    const size_t row = blockIdx.x;
    const unsigned int tid = threadIdx.x;
    float* trow = tile + row * t;
    float lmax = -INF_F;
    for (unsigned int c = tid; c < t; c += 256u) lmax = fmaxf(lmax, -trow[c]);
    red[tid] = lmax;
    __syncthreads();
    for (unsigned int s = 128u; s > 0u; s >>= 1) {
        if (tid < s) red[tid] = fmaxf(red[tid], red[tid + s]);
        __syncthreads();
    }
    const float m_old = state[row * 4];
    const float m_new = fmaxf(m_old, red[0]);
    if (m_new == -INF_F) return;
    const float scale = (m_old == -INF_F) ? 0.0f : expf(m_old - m_new);
    __syncthreads();
    float s_sum = 0.0f, sk_sum = 0.0f;
    for (unsigned int c = tid; c < t; c += 256u) {
        const float key = trow[c];
        const float w = (key == INF_F) ? 0.0f : expf(-key - m_new);
        const float wk = w * params[offset + c].y;
        s_sum += w;
        sk_sum += wk;
        if (want_grad) trow[c] = wk;
    }
    red[tid] = s_sum;
    red2[tid] = sk_sum;
    __syncthreads();
    for (unsigned int s = 128u; s > 0u; s >>= 1) {
        if (tid < s) { red[tid] += red[tid + s]; red2[tid] += red2[tid + s]; }
        __syncthreads();
    }
    if (tid == 0) {
        state[row * 4] = m_new;
        state[row * 4 + 1] = state[row * 4 + 1] * scale + red[0];
        state[row * 4 + 2] = state[row * 4 + 2] * scale + red2[0];
    }
    if (!want_grad) return;
    for (unsigned int c = tid; c < d; c += 256u) {
        float g = grad[row * d + c] * scale;
        for (unsigned int j = 0; j < t; ++j) g = fmaf(trow[j], mu[(offset + j) * d + c], g);
        grad[row * d + c] = g;
    }
}

// One thread per splat with events; replays that splat's events in order.
extern "C" __global__ void hebbian(
    float* __restrict__ mu, float4* __restrict__ params, const float* __restrict__ q,
    const long long* __restrict__ rows, const int* __restrict__ starts,
    const int* __restrict__ counts, const int* __restrict__ ev_query,
    const int* __restrict__ ev_sign, unsigned int u, unsigned int d, unsigned int renorm,
    float lra, float lrk, float lrm, float amin, float amax, float kmin, float kmax, float eps)
{
    const unsigned int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= u) return;
    const long long r = rows[s];
    float4 p = params[r];
    float* m = mu + (size_t)r * d;
    for (int e = starts[s]; e < starts[s] + counts[s]; ++e) {
        const float* x = q + (size_t)ev_query[e] * d;
        if (ev_sign[e] > 0) {
            float d2 = 0.0f;
            for (unsigned int c = 0; c < d; ++c) { float df = x[c] - m[c]; d2 = fmaf(df, df, d2); }
            p.x *= 1.0f + lra;
            p.y += lrk / (d2 + eps);
            float nn = 0.0f;
            for (unsigned int c = 0; c < d; ++c) {
                const float v = fmaf(lrm, x[c] - m[c], m[c]);
                m[c] = v;
                nn = fmaf(v, v, nn);
            }
            if (renorm) {
                const float inv = 1.0f / sqrtf(nn);
                for (unsigned int c = 0; c < d; ++c) m[c] *= inv;
            }
        } else {
            p.x *= 1.0f - lra;
            p.y -= 0.5f * lrk;
        }
        p.x = fminf(fmaxf(p.x, amin), amax);
        p.y = fminf(fmaxf(p.y, kmin), kmax);
    }
    params[r] = p;
}

extern "C" __global__ void decay(float4* __restrict__ params, unsigned long long rows,
                                 float lam, float now)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    float4 p = params[i];
    p.x *= expf(-lam * (now - p.z));
    p.z = now;
    params[i] = p;
}

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) { k.x += 0x9E3779B9u; k.y += 0xBB67AE85u; }
        const unsigned int lo0 = 0xD2511F53u * c.x, hi0 = __umulhi(0xD2511F53u, c.x);
        const unsigned int lo1 = 0xCD9E8D57u * c.z, hi1 = __umulhi(0xCD9E8D57u, c.z);
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

__device__ __forceinline__ float uniform01(unsigned int w) {
    return (float)(2u * (w >> 9) + 1u) * 5.9604644775390625e-8f;
}

// Thread (x, y) = (block of 4 columns, row). mode 0: raw words; 1: normals (+ centres).
extern "C" __global__ void philox(
    unsigned int* __restrict__ out, const float* __restrict__ centers,
    unsigned long long row0, unsigned int rows, unsigned int d, unsigned long long seed,
    unsigned int stream, unsigned int mode, unsigned int clusters, float spread)
{
    const unsigned int blk = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= rows || blk * 4u >= d) return;
    const unsigned long long row = row0 + i;
    const unsigned int lo = (unsigned int)row, hi = (unsigned int)(row >> 32);
    const uint2 key = make_uint2((unsigned int)seed, (unsigned int)(seed >> 32));
    const uint4 w = philox4x32_10(make_uint4(blk, lo, hi, stream), key);
    const size_t o = (size_t)i * d + blk * 4u;
    const unsigned int n = min(4u, d - blk * 4u);
    const unsigned int ws[4] = {w.x, w.y, w.z, w.w};
    if (mode == 0u) {
        for (unsigned int c = 0; c < n; ++c) out[o + c] = ws[c];
        return;
    }
    const float u0 = uniform01(w.x), u1 = uniform01(w.y), u2 = uniform01(w.z), u3 = uniform01(w.w);
    const float r01 = sqrtf(-2.0f * logf(u0)), r23 = sqrtf(-2.0f * logf(u2));
    const float two_pi = 6.283185307179586f;
    float z[4] = {r01 * cosf(two_pi * u1), r01 * sinf(two_pi * u1),
                  r23 * cosf(two_pi * u3), r23 * sinf(two_pi * u3)};
    if (clusters > 0u) {
        const unsigned int a = philox4x32_10(make_uint4(0xFFFFFFFFu, lo, hi, stream), key).x;
        const unsigned int c0 = __umulhi(a, clusters);
        for (unsigned int c = 0; c < n; ++c)
            z[c] = fmaf(spread, z[c], centers[(size_t)c0 * d + blk * 4u + c]);
    }
    for (unsigned int c = 0; c < n; ++c) out[o + c] = __float_as_uint(z[c]);
}
