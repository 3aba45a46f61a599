#version 450
// Streaming log-sum-exp for the splat energy (and its gradient), one key tile at a time.
// keys[i, j] = kappa_j d2 - log(alpha_j) = -l_j come from knn_distance.comp (mode 2). One
// workgroup per query row keeps a running state: M (max log-score), S = sum exp(l - M),
// SK = sum exp(l - M) kappa, and with the gradient G[c] = sum exp(l - M) kappa mu[c].
// A tile rescales the state by exp(M - M') first, so nothing underflows for far queries.
// Memory: O(m) state (O(m d) with the gradient), never the m x n matrix.
// Mirrors kernels/splat.cu (energy_accumulate).
layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) buffer Tile { float tile[]; };               // [mq, t] (rw)
layout(std430, binding = 1) buffer State { float state[]; };             // [mq, 4] M, S, SK
layout(std430, binding = 2) buffer Grad { float grad[]; };               // [mq, d]
layout(std430, binding = 3) readonly buffer Params { vec4 params[]; };   // chunk rows
layout(std430, binding = 4) readonly buffer Mu { float mu[]; };          // chunk [rows, d]

layout(push_constant) uniform Push {
    uint t;        // keys per row in this tile
    uint d;
    uint offset;   // first row of the tile inside the chunk
    uint want_grad;
} pc;

shared float red[256];
shared float red2[256];

#define INF uintBitsToFloat(0x7F800000u)

void main() {
    uint row = gl_WorkGroupID.x;
    uint tid = gl_LocalInvocationID.x;
    uint base = row * pc.t;

    float lmax = -INF;
    for (uint c = tid; c < pc.t; c += 256u) lmax = max(lmax, -tile[base + c]);
    red[tid] = lmax;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1) {
        if (tid < s) red[tid] = max(red[tid], red[tid + s]);
        barrier();
    }
    float m_old = state[row * 4u];
    float m_new = max(m_old, red[0]);
    if (m_new == -INF) return;  // nothing alive yet (uniform across the workgroup)
    float scale = (m_old == -INF) ? 0.0 : exp(m_old - m_new);
    barrier();

    float s_sum = 0.0, sk_sum = 0.0;
    for (uint c = tid; c < pc.t; c += 256u) {
        float key = tile[base + c];
        float w = (key == INF) ? 0.0 : exp(-key - m_new);
        float wk = w * params[pc.offset + c].y;
        s_sum += w;
        sk_sum += wk;
        if (pc.want_grad != 0u) tile[base + c] = wk;
    }
    red[tid] = s_sum;
    red2[tid] = sk_sum;
    memoryBarrierBuffer();
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1) {
        if (tid < s) { red[tid] += red[tid + s]; red2[tid] += red2[tid + s]; }
        barrier();
    }
    if (tid == 0u) {
        state[row * 4u] = m_new;
        state[row * 4u + 1u] = state[row * 4u + 1u] * scale + red[0];
        state[row * 4u + 2u] = state[row * 4u + 2u] * scale + red2[0];
    }
    if (pc.want_grad == 0u) return;
    for (uint c = tid; c < pc.d; c += 256u) {
        float g = grad[row * pc.d + c] * scale;
        for (uint j = 0u; j < pc.t; ++j) g = fma(tile[base + j], mu[(pc.offset + j) * pc.d + c], g);
        grad[row * pc.d + c] = g;
    }
}
