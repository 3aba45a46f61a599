#version 450
// Philox4x32-10 data (see m2m_gpu/synthetic.py for the layout every backend shares).
// Invocation (x, y) = (block of 4 columns, row). mode 0 writes the raw words; mode 1 writes
// float32 normals (Box-Muller), optionally around cluster centres. Mirrors kernels/splat.cu.
layout(local_size_x = 16, local_size_y = 16, local_size_z = 1) in;

layout(std430, binding = 0) writeonly buffer Out { uint outw[]; };     // [rows, d]
layout(std430, binding = 1) readonly buffer Centers { float centers[]; };  // [clusters, d]

layout(push_constant) uniform Push {
    uint row0_lo, row0_hi, rows, d, seed_lo, seed_hi, stream, mode, clusters, spread;
} pc;

uvec4 philox(uvec4 c, uvec2 k) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) k += uvec2(0x9E3779B9u, 0xBB67AE85u);
        uint hi0, lo0, hi1, lo1;
        umulExtended(0xD2511F53u, c.x, hi0, lo0);
        umulExtended(0xCD9E8D57u, c.z, hi1, lo1);
        c = uvec4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

float uniform01(uint w) { return float(2u * (w >> 9) + 1u) * 5.9604644775390625e-8; }

void main() {
    uint blk = gl_GlobalInvocationID.x;
    uint i = gl_GlobalInvocationID.y;
    if (i >= pc.rows || blk * 4u >= pc.d) return;
    uint lo = pc.row0_lo + i;
    uint hi = pc.row0_hi + ((lo < i) ? 1u : 0u);  // 64-bit row index, carried
    uvec2 key = uvec2(pc.seed_lo, pc.seed_hi);
    uvec4 w = philox(uvec4(blk, lo, hi, pc.stream), key);
    uint o = i * pc.d + blk * 4u;
    uint n = min(4u, pc.d - blk * 4u);
    if (pc.mode == 0u) {
        for (uint c = 0u; c < n; ++c) outw[o + c] = w[c];
        return;
    }
    float u0 = uniform01(w.x), u1 = uniform01(w.y), u2 = uniform01(w.z), u3 = uniform01(w.w);
    float r01 = sqrt(-2.0 * log(u0)), r23 = sqrt(-2.0 * log(u2));
    const float TWO_PI = 6.283185307179586;
    vec4 z = vec4(r01 * cos(TWO_PI * u1), r01 * sin(TWO_PI * u1),
                  r23 * cos(TWO_PI * u3), r23 * sin(TWO_PI * u3));
    if (pc.clusters > 0u) {
        uint a = philox(uvec4(0xFFFFFFFFu, lo, hi, pc.stream), key).x;
        uint chi, clo;
        umulExtended(a, pc.clusters, chi, clo);
        float spread = uintBitsToFloat(pc.spread);
        for (uint c = 0u; c < n; ++c) z[c] = fma(spread, z[c], centers[chi * pc.d + blk * 4u + c]);
    }
    for (uint c = 0u; c < n; ++c) outw[o + c] = floatBitsToUint(z[c]);
}
