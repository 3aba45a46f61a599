#version 450
// Running top-k merge for exact k-NN: for each query row, the k smallest keys among
// (the row's current k best) + (the row's t keys of a new tile), by exact radix select.
// One workgroup per row. Keys are mapped to order-preserving uints; four 8-bit histogram
// passes find the k-th smallest value exactly, then one pass writes every key below it and
// as many keys equal to it as there are slots left (ties in any order). Works for any k.
// The output rows are unsorted. Mirrors kernels/knn.cu (topk_select).
layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) readonly buffer TileKeys { float tile[]; };    // [mq, t]
layout(std430, binding = 1) readonly buffer BestKeysIn { float bk_in[]; }; // [mq, k]
layout(std430, binding = 2) readonly buffer BestIdsIn { int bi_in[]; };    // [mq, k]
layout(std430, binding = 3) writeonly buffer BestKeysOut { float bk_out[]; };
layout(std430, binding = 4) writeonly buffer BestIdsOut { int bi_out[]; };

layout(push_constant) uniform Push {
    uint t;         // keys in the tile row
    uint k;         // results kept per row
    uint id_base;   // database id of the tile's first key
} pc;

shared uint hist[256];
shared uint s_prefix;
shared uint s_want;   // rank (1-based) still wanted among keys matching the prefix
shared uint s_lt;     // slots filled with keys below the k-th
shared uint s_eq;     // slots filled with keys equal to the k-th

uint ordered(float f) {
    uint u = floatBitsToUint(f);
    return ((u & 0x80000000u) != 0u) ? ~u : (u | 0x80000000u);
}

float key_at(uint row, uint c) {
    return (c < pc.k) ? bk_in[row * pc.k + c] : tile[row * pc.t + (c - pc.k)];
}

int id_at(uint row, uint c) {
    return (c < pc.k) ? bi_in[row * pc.k + c] : int(pc.id_base + (c - pc.k));
}

void main() {
    uint row = gl_WorkGroupID.x;
    uint tid = gl_LocalInvocationID.x;
    uint total = pc.k + pc.t;
    if (tid == 0u) { s_prefix = 0u; s_want = pc.k; s_lt = 0u; s_eq = 0u; }
    uint mask = 0u;
    for (int pass = 0; pass < 4; ++pass) {
        uint shift = uint(24 - 8 * pass);
        hist[tid] = 0u;
        barrier();
        uint prefix = s_prefix;
        for (uint c = tid; c < total; c += 256u) {
            uint u = ordered(key_at(row, c));
            if ((u & mask) == prefix) atomicAdd(hist[(u >> shift) & 255u], 1u);
        }
        barrier();
        if (tid == 0u) {
            uint want = s_want, below = 0u, b = 0u;
            for (; b < 255u; ++b) {
                if (below + hist[b] >= want) break;
                below += hist[b];
            }
            s_want = want - below;
            s_prefix = prefix | (b << shift);
        }
        mask |= 255u << shift;
        barrier();
    }
    uint kth = s_prefix;
    uint equal_slots = s_want;           // keys equal to the k-th that make the cut
    uint less_slots = pc.k - equal_slots; // keys strictly below it: all of them make it
    for (uint c = tid; c < total; c += 256u) {
        float v = key_at(row, c);
        uint u = ordered(v);
        if (u < kth) {
            uint s = atomicAdd(s_lt, 1u);
            bk_out[row * pc.k + s] = v;
            bi_out[row * pc.k + s] = id_at(row, c);
        } else if (u == kth) {
            uint s = atomicAdd(s_eq, 1u);
            if (s < equal_slots) {
                bk_out[row * pc.k + less_slots + s] = v;
                bi_out[row * pc.k + less_slots + s] = id_at(row, c);
            }
        }
    }
}
