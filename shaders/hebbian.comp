#version 450
// Hebbian feedback (SPEC section 2), one invocation per splat that has events. Events are
// grouped per splat in the caller's order (HebbianPlan), so each invocation replays its
// splat's events one after another: the result is the sequential one even when many events
// touch the same splat, and splats never race because an event on splat i reads and writes
// only splat i. Mirrors kernels/splat.cu (hebbian) and the cpu backend.
layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) buffer Mu { float mu[]; };             // chunk [rows, d]
layout(std430, binding = 1) buffer Params { vec4 params[]; };      // chunk [rows]
layout(std430, binding = 2) readonly buffer Queries { float q[]; };  // [events' queries, d]
layout(std430, binding = 3) readonly buffer Rows { uint rows[]; };   // [u] rows in the chunk
layout(std430, binding = 4) readonly buffer Starts { uint starts[]; };
layout(std430, binding = 5) readonly buffer Counts { uint counts[]; };
layout(std430, binding = 6) readonly buffer EvQuery { uint ev_query[]; };
layout(std430, binding = 7) readonly buffer EvSign { int ev_sign[]; };

layout(push_constant) uniform Push {
    uint u;          // splats in this dispatch
    uint d;
    uint first;      // first entry of rows/starts/counts for this dispatch
    uint renorm;     // cosine: put mu back on the unit sphere after each move
    uint lr_alpha, lr_kappa, lr_mu, alpha_min, alpha_max, kappa_min, kappa_max, eps;  // f32 bits
} pc;

void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= pc.u) return;
    uint s = pc.first + g;
    uint r = rows[s];
    float lra = uintBitsToFloat(pc.lr_alpha), lrk = uintBitsToFloat(pc.lr_kappa);
    float lrm = uintBitsToFloat(pc.lr_mu), eps = uintBitsToFloat(pc.eps);
    vec4 p = params[r];
    uint m0 = r * pc.d;
    for (uint e = starts[s]; e < starts[s] + counts[s]; ++e) {
        uint q0 = ev_query[e] * pc.d;
        if (ev_sign[e] > 0) {
            float d2 = 0.0;
            for (uint c = 0u; c < pc.d; ++c) { float df = q[q0 + c] - mu[m0 + c]; d2 = fma(df, df, d2); }
            p.x *= 1.0 + lra;
            p.y += lrk / (d2 + eps);
            float nn = 0.0;
            for (uint c = 0u; c < pc.d; ++c) {
                float v = fma(lrm, q[q0 + c] - mu[m0 + c], mu[m0 + c]);
                mu[m0 + c] = v;
                nn = fma(v, v, nn);
            }
            if (pc.renorm != 0u) {
                float inv = 1.0 / sqrt(nn);
                for (uint c = 0u; c < pc.d; ++c) mu[m0 + c] *= inv;
            }
        } else {
            p.x *= 1.0 - lra;
            p.y -= 0.5 * lrk;
        }
        p.x = clamp(p.x, uintBitsToFloat(pc.alpha_min), uintBitsToFloat(pc.alpha_max));
        p.y = clamp(p.y, uintBitsToFloat(pc.kappa_min), uintBitsToFloat(pc.kappa_max));
    }
    params[r] = p;
}
