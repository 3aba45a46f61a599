#version 450
#extension GL_GOOGLE_include_directive : require
#include "m2m_abi.glsl"
// HRM2 scan: distances from each query to the rows of the cells it probes, laid end to end
// in one candidate row per query (keys[i, j], j < t; +inf past the query's rows), then
// ranked by topk_select.comp. A query's probed cells are segments (row start inside this
// chunk, length, destination offset in its candidate row); invocation (j, i) finds the
// segment holding candidate j. Direct form; key codes as in knn_distance.comp (KEY_L2,
// KEY_SPLAT, KEY_DISTANCE). Rows outside this chunk are written by another dispatch.
// Rows are read as pc.codec says (m2m_gpu.codecs): CODEC_F32 words; CODEC_F16, two halves
// per word packed over the whole chunk; CODEC_SQ8, four bytes per word, each row padded to
// whole words, widened as dq[c] + dq[d + c] * byte. Arithmetic is float32 throughout.
// Mirrors kernels/knn.cu (cells_distance).
layout(local_size_x = 128, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) readonly buffer Queries { float q[]; };     // [m, d]
layout(std430, binding = 1) readonly buffer Rows { uint xw[]; };        // chunk of rows
layout(std430, binding = 2) readonly buffer Segs { uint segs[]; };      // [m, p, 3]
layout(std430, binding = 3) buffer Keys { float keys[]; };              // [m, t]
layout(std430, binding = 4) readonly buffer Params { vec4 params[]; };  // chunk rows
layout(std430, binding = 5) readonly buffer Dequant { float dq[]; };    // [2, d] (SQ8)

layout(push_constant) uniform Push {
    uint m, d, t, p, mode, fill;  // fill: write +inf where no segment covers j
    uint codec;
} pc;

float row_at(uint r, uint c) {
    if (pc.codec == CODEC_SQ8) {
        uint w = xw[r * ((pc.d + 3u) >> 2u) + (c >> 2u)];
        return fma(dq[pc.d + c], float((w >> (8u * (c & 3u))) & 0xFFu), dq[c]);
    }
    if (pc.codec == CODEC_F16) {
        uint e = r * pc.d + c;
        vec2 pair = unpackHalf2x16(xw[e >> 1u]);  // element 2w in the low half of word w
        return (e & 1u) == 0u ? pair.x : pair.y;
    }
    return uintBitsToFloat(xw[r * pc.d + c]);
}

void main() {
    uint j = gl_GlobalInvocationID.x;
    uint i = gl_GlobalInvocationID.y;
    if (j >= pc.t || i >= pc.m) return;
    uint base = i * pc.p * 3u;
    for (uint s = 0u; s < pc.p; ++s) {
        uint start = segs[base + 3u * s], len = segs[base + 3u * s + 1u];
        uint dst = segs[base + 3u * s + 2u];
        if (j >= dst && j < dst + len) {
            uint r = start + (j - dst);
            float acc = 0.0;
            for (uint c = 0u; c < pc.d; ++c) {
                float df = q[i * pc.d + c] - row_at(r, c);
                acc = fma(df, df, acc);
            }
            if (pc.mode == KEY_SPLAT || pc.mode == KEY_DISTANCE) {
                vec4 prm = params[r];
                if (!(prm.x > 0.0)) acc = uintBitsToFloat(0x7F800000u);
                else if (pc.mode == KEY_SPLAT) acc = fma(prm.y, acc, -log(prm.x));
            }
            if (isnan(acc)) acc = uintBitsToFloat(CANONICAL_NAN_BITS);  // NaN after +inf
            keys[i * pc.t + j] = acc;
            return;
        }
    }
    if (pc.fill != 0u) keys[i * pc.t + j] = uintBitsToFloat(0x7F800000u);
}
