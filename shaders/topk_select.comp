#version 450
#extension GL_GOOGLE_include_directive : require
#include "m2m_abi.glsl"
// Running top-k merge for exact k-NN: for each query row, the k smallest keys among
// (the row's current k best) + (the row's t keys of a new tile), by exact radix select.
// One workgroup per row. Keys are mapped to order-preserving uints; four 8-bit histogram
// passes find the k-th smallest value exactly. Then the candidates are written in rounds
// of 256: a workgroup-wide prefix sum over the round's "below the k-th" and "equal to the
// k-th" flags gives each kept candidate its slot, so both classes keep input order. The
// running best comes first and holds smaller ids than the tile (tiles go in row order),
// so among keys equal to the k-th the smallest ids are kept, whatever the thread timing;
// and equal keys leave in id order, so a stable sort of the output is a (key, id) sort.
// Seeds (SEED_KEY_BITS, a NaN above +inf in this order) lose to every real key.
// The output rows are unsorted. Mirrors kernels/knn.cu (topk_select).
// Small batches: the tile is split into `segments` parts, workgroup (row, s) selecting the
// k best of part s on its own (flag NO_BEST: no running best is read) into slots
// [(row * segments + s) * k, +k) of the output; a second pass (segments = 1, flag IDS: the
// ids come from tile_ids instead of id_base + column) merges those partial results into
// the running best. Parts keep id order, so the tie rule holds across both passes. A part
// with at most k keys is copied as it is, its remaining slots seeded.
layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

layout(std430, binding = 0) readonly buffer TileKeys { float tile[]; };    // [mq, t]
layout(std430, binding = 1) readonly buffer TileIds { int tile_ids[]; };   // [mq, t] (IDS)
layout(std430, binding = 2) readonly buffer BestKeysIn { float bk_in[]; }; // [mq, k]
layout(std430, binding = 3) readonly buffer BestIdsIn { int bi_in[]; };    // [mq, k]
layout(std430, binding = 4) writeonly buffer BestKeysOut { float bk_out[]; };
layout(std430, binding = 5) writeonly buffer BestIdsOut { int bi_out[]; };

layout(push_constant) uniform Push {
    uint t;         // keys in the tile row
    uint k;         // results kept per row (per part)
    uint id_base;   // database id of the tile's first key
    uint segments;  // parts of the tile row, one workgroup each (grid y)
    uint flags;     // SELECT_IDS | SELECT_NO_BEST
} pc;

shared uint hist[256];
shared uint s_prefix;
shared uint s_want;   // rank (1-based) still wanted among keys matching the prefix
shared uint scan[256]; // per round: inclusive prefix sums of the packed class flags

uint ordered(float f) {
    uint u = floatBitsToUint(f);
    return ((u & 0x80000000u) != 0u) ? ~u : (u | 0x80000000u);
}

// Candidate c of the workgroup: the running best (kb of them), then its part of the tile.
uint kb;       // running best entries read: k, or 0 with SELECT_NO_BEST
uint part0;    // first tile column of this workgroup's part

float key_at(uint row, uint c) {
    return (c < kb) ? bk_in[row * pc.k + c] : tile[row * pc.t + part0 + (c - kb)];
}

int id_at(uint row, uint c) {
    if (c < kb) return bi_in[row * pc.k + c];
    uint col = part0 + (c - kb);
    return ((pc.flags & SELECT_IDS) != 0u) ? tile_ids[row * pc.t + col]
                                           : int(pc.id_base + col);
}

void main() {
    uint row = gl_WorkGroupID.x;
    uint seg = gl_WorkGroupID.y;
    uint tid = gl_LocalInvocationID.x;
    kb = ((pc.flags & SELECT_NO_BEST) != 0u) ? 0u : pc.k;
    uint part = (pc.t + pc.segments - 1u) / pc.segments;
    part0 = min(pc.t, seg * part);
    uint total = kb + min(part, pc.t - part0);
    uint out0 = (row * pc.segments + seg) * pc.k;  // first output slot of this workgroup
    if (total <= pc.k) {  // nothing to select: copy in order, seed the rest
        for (uint c = tid; c < pc.k; c += 256u) {
            bool real = c < total;
            bk_out[out0 + c] = real ? key_at(row, c) : uintBitsToFloat(SEED_KEY_BITS);
            bi_out[out0 + c] = real ? id_at(row, c) : -1;
        }
        return;
    }
    if (tid == 0u) { s_prefix = 0u; s_want = pc.k; }
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
    uint base_lt = 0u, base_eq = 0u;     // slots filled so far (the same in every invocation)
    for (uint r0 = 0u; r0 < total; r0 += 256u) {
        uint c = r0 + tid;
        float v = 0.0;
        uint flag = 0u;  // 1: below the k-th; 0x10000: equal to it (at most 256 of each)
        if (c < total) {
            v = key_at(row, c);
            uint u = ordered(v);
            flag = (u < kth) ? 1u : ((u == kth) ? 0x10000u : 0u);
        }
        scan[tid] = flag;
        barrier();
        for (uint off = 1u; off < 256u; off <<= 1u) {
            uint add = (tid >= off) ? scan[tid - off] : 0u;
            barrier();
            scan[tid] += add;
            barrier();
        }
        uint before = scan[tid] - flag;
        uint round_total = scan[255];
        if (flag == 1u) {
            uint s = base_lt + (before & 0xFFFFu);
            bk_out[out0 + s] = v;
            bi_out[out0 + s] = id_at(row, c);
        } else if (flag == 0x10000u) {
            uint s = base_eq + (before >> 16u);
            if (s < equal_slots) {
                bk_out[out0 + less_slots + s] = v;
                bi_out[out0 + less_slots + s] = id_at(row, c);
            }
        }
        base_lt += round_total & 0xFFFFu;
        base_eq += round_total >> 16u;
        barrier();  // scan[] is rewritten by the next round
        if (base_lt >= less_slots && base_eq >= equal_slots) break;  // uniform: all filled
    }
}
