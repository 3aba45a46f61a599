#version 450
// Decay (SPEC section 2): alpha *= exp(-lambda (now - last_tick)), last_tick = now, per row
// of a params chunk. Time is an argument, never a clock read. Mirrors kernels/splat.cu.
layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) buffer Params { vec4 params[]; };

layout(push_constant) uniform Push {
    uint rows;
    uint lam;  // f32 bits
    uint now;  // f32 bits
} pc;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= pc.rows) return;
    float now = uintBitsToFloat(pc.now);
    vec4 p = params[i];
    p.x *= exp(-uintBitsToFloat(pc.lam) * (now - p.z));
    p.z = now;
    params[i] = p;
}
