#version 450
#extension GL_GOOGLE_include_directive : require
#include "m2m_abi.glsl"
// Key tile for exact k-NN and splat ranking: keys[i, j] for query i and row (offset + j).
// Smaller is better for every mode; d2 = sum((q - x)^2) is the direct form throughout, so
// there is no cancellation near the query.
//   KEY_L2:       d2
//   KEY_IP:       -(q . x)
//   KEY_SPLAT:    kappa * d2 - log(alpha)   (= -log-score; alpha = 0 gives +inf)
//   KEY_DISTANCE: d2 where alpha > 0, +inf where alpha = 0 (masked or deleted rows)
// (codes in m2m_abi.glsl, generated from m2m_gpu/backends/abi.py)
// A 16x16 workgroup computes a block of 16 queries x 64 database rows; each invocation
// owns one query and 4 rows. Query and row slices are staged through shared memory, TK
// components at a time. Rows are float32, or float16 (push constant rows_f16 = 1: two halves
// per 32-bit word, unpacked with unpackHalf2x16, so no 16-bit storage feature is needed);
// arithmetic is float32 either way. Mirrors kernels/knn.cu (knn_distance, knn_distance_f16).
layout(local_size_x = 16, local_size_y = 16, local_size_z = 1) in;

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

const uint BQ = 16u;   // queries per workgroup
const uint BR = 64u;   // database rows per workgroup
const uint RN = 4u;    // rows per invocation
const uint TK = 32u;   // components staged per step

shared float qs[BQ][TK + 1u];
shared float xs[BR][TK + 1u];

// Element e of the chunk (row-major), as float32.
float load_x(uint e) {
    if (pc.rows_f16 == 0u) return uintBitsToFloat(xw[e]);
    vec2 pair = unpackHalf2x16(xw[e >> 1u]);  // element 2w in the low half of word w
    return (e & 1u) == 0u ? pair.x : pair.y;
}

void main() {
    uint lx = gl_LocalInvocationID.x;  // 0..15 -> rows lx, lx+16, lx+32, lx+48
    uint ly = gl_LocalInvocationID.y;  // 0..15 -> query
    uint lid = ly * 16u + lx;
    uint qi = gl_WorkGroupID.y * BQ + ly;
    uint r0 = gl_WorkGroupID.x * BR;

    float acc[RN];
    for (uint r = 0u; r < RN; ++r) acc[r] = 0.0;

    for (uint k0 = 0u; k0 < pc.d; k0 += TK) {
        // Stage BQ x TK query components (256 invocations, 2 each).
        for (uint e = lid; e < BQ * TK; e += 256u) {
            uint row = e / TK, col = e % TK;
            uint gq = gl_WorkGroupID.y * BQ + row, gk = k0 + col;
            qs[row][col] = (gq < pc.mq && gk < pc.d) ? q[gq * pc.d + gk] : 0.0;
        }
        // Stage BR x TK database components (8 each).
        for (uint e = lid; e < BR * TK; e += 256u) {
            uint row = e / TK, col = e % TK;
            uint gr = r0 + row, gk = k0 + col;
            xs[row][col] = (gr < pc.t && gk < pc.d) ? load_x((pc.offset + gr) * pc.d + gk) : 0.0;
        }
        barrier();
        uint kn = min(TK, pc.d - k0);
        if (pc.metric != KEY_IP) {
            for (uint kk = 0u; kk < kn; ++kk) {
                float qv = qs[ly][kk];
                for (uint r = 0u; r < RN; ++r) {
                    float diff = qv - xs[lx + 16u * r][kk];
                    acc[r] = fma(diff, diff, acc[r]);
                }
            }
        } else {
            for (uint kk = 0u; kk < kn; ++kk) {
                float qv = qs[ly][kk];
                for (uint r = 0u; r < RN; ++r) acc[r] = fma(qv, xs[lx + 16u * r][kk], acc[r]);
            }
        }
        barrier();
    }
    if (qi < pc.mq) {
        for (uint r = 0u; r < RN; ++r) {
            uint j = r0 + lx + 16u * r;
            if (j >= pc.t) continue;
            float v = acc[r];
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
    }
}
