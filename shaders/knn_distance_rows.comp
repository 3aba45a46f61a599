#version 450
#extension GL_GOOGLE_include_directive : require
#include "m2m_abi.glsl"
// Key tile for small batches: keys[i, j] for query i (workgroup y) and row (offset + j),
// 256 rows per workgroup, one per invocation. knn_distance computes 16 queries x 64 rows
// per workgroup, so a single query wastes 15 of every 16 products there; here nothing is
// padded but the last rows. Each invocation reads its own row straight through (no
// shared memory and no barrier; on a GPU the row's cache lines are reused from L1 over
// the next components), and every
// key is computed exactly as knn_distance computes it (same fma order over components,
// same epilogue), so the two kernels give bit-identical tiles. Push constants and
// bindings as in knn_distance.comp.
layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) readonly buffer Queries { float q[]; };   // [mq, d]
layout(std430, binding = 1) readonly buffer Database { uint xw[]; };  // [rows, d] (one chunk)
layout(std430, binding = 2) writeonly buffer Keys { float keys[]; };  // [mq, t]
layout(std430, binding = 3) readonly buffer Params { vec4 params[]; }; // [rows] alpha, kappa, ..

layout(push_constant) uniform Push {
    uint mq;      // queries in this block
    uint t;       // database rows in this tile
    uint d;       // dimension
    uint offset;  // first row of the tile inside the chunk
    uint metric;  // key code: KEY_L2, KEY_IP, KEY_SPLAT or KEY_DISTANCE
    uint rows_f16; // 1: rows are float16, packed two per word
} pc;

const uint BR = 256u;  // database rows per workgroup

float load_x(uint e) {
    if (pc.rows_f16 == 0u) return uintBitsToFloat(xw[e]);
    vec2 pair = unpackHalf2x16(xw[e >> 1u]);  // element 2w in the low half of word w
    return (e & 1u) == 0u ? pair.x : pair.y;
}

void main() {
    uint qi = gl_WorkGroupID.y;
    uint j = gl_WorkGroupID.x * BR + gl_LocalInvocationID.x;
    if (qi >= pc.mq || j >= pc.t) return;
    uint qa = qi * pc.d, xa = (pc.offset + j) * pc.d;
    float acc = 0.0;
    if (pc.metric != KEY_IP) {
        for (uint c = 0u; c < pc.d; ++c) {
            float diff = q[qa + c] - load_x(xa + c);
            acc = fma(diff, diff, acc);
        }
    } else {
        for (uint c = 0u; c < pc.d; ++c) acc = fma(q[qa + c], load_x(xa + c), acc);
    }
    float v = acc;
    if (pc.metric == KEY_IP) {
        v = -v;
    } else if (pc.metric == KEY_SPLAT || pc.metric == KEY_DISTANCE) {
        vec4 p = params[pc.offset + j];
        if (!(p.x > 0.0)) v = uintBitsToFloat(0x7F800000u);
        else if (pc.metric == KEY_SPLAT) v = fma(p.y, v, -log(p.x));
    }
    if (isnan(v)) v = uintBitsToFloat(CANONICAL_NAN_BITS);  // NaN after +inf
    keys[qi * pc.t + j] = v;
}
