#version 450
// k-means update: per-centroid sums of member rows, for one chunk of the data. Members are
// grouped by centroid on the host (a stable counting order: deterministic, no float
// atomics), so each invocation owns one (centroid, component) and adds its members in a
// fixed order with Kahan compensation. Workgroup (centroid base + x, 64-component block y).
// Mirrors kernels/kmeans.cu (kmeans_sums) and the cpu backend.
layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) readonly buffer X { float x[]; };           // chunk [rows, d]
layout(std430, binding = 1) readonly buffer Order { uint order[]; };    // rows, by centroid
layout(std430, binding = 2) readonly buffer Offsets { uint offsets[]; };  // [k + 1]
layout(std430, binding = 3) buffer Sums { float sums[]; };              // [k, d] (+=)

layout(push_constant) uniform Push {
    uint k;
    uint d;
    uint base;  // first centroid of this dispatch
} pc;

void main() {
    uint c = pc.base + gl_WorkGroupID.x;
    uint j = gl_WorkGroupID.y * 64u + gl_LocalInvocationID.x;
    if (c >= pc.k || j >= pc.d) return;
    precise float s = sums[c * pc.d + j];  // precise: no reassociation (Kahan must survive)
    precise float comp = 0.0;
    for (uint r = offsets[c]; r < offsets[c + 1u]; ++r) {
        precise float y = x[order[r] * pc.d + j] - comp;
        precise float t = s + y;
        comp = (t - s) - y;
        s = t;
    }
    sums[c * pc.d + j] = s;
}
