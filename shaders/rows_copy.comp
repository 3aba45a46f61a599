#version 450
// Row gather and scatter for one chunk of a device matrix (any 32-bit element type):
//   mode 0 (gather):  dense[u, :] = chunk[rows[u], :]
//   mode 1 (scatter): chunk[rows[u], :] = dense[u, :]
// Lets the store read or replace a few rows without moving the whole chunk.
layout(local_size_x = 64, local_size_y = 4, local_size_z = 1) in;

layout(std430, binding = 0) buffer Chunk { uint chunk[]; };
layout(std430, binding = 1) buffer Packed { uint dense[]; };
layout(std430, binding = 2) readonly buffer Rows { uint rows[]; };

layout(push_constant) uniform Push {
    uint u;      // rows to move
    uint width;  // 32-bit words per row
    uint mode;
} pc;

void main() {
    uint c = gl_GlobalInvocationID.x;
    uint i = gl_GlobalInvocationID.y;
    if (i >= pc.u || c >= pc.width) return;
    uint src = rows[i] * pc.width + c, dst = i * pc.width + c;
    if (pc.mode == 0u) dense[dst] = chunk[src];
    else chunk[src] = dense[dst];
}
