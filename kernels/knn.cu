// Exact k-NN kernels for the cuda backend (CuPy RawModule). Same algorithms as the Vulkan
// shaders shaders/knn_distance.comp and shaders/topk_select.comp; see those for the design.
// Compiled by CuPy on first use (cached on disk); CI compiles this file with nvcc for sm_80
// and sm_90 so that a syntax error is caught without a GPU.

#include "m2m_abi.h"  // key codes, seed entry (generated from m2m_gpu/backends/abi.py)

#define BQ 16   // queries per block
#define BR 64   // database rows per block
#define RN 4    // rows per thread
#define TK 32   // components staged per step

// Database elements as float32: rows stored as float32, or as float16 (IEEE binary16 bits,
// converted by the hardware instruction; no cuda_fp16.h needed under NVRTC).
__device__ __forceinline__ float load_x(const float* __restrict__ x, size_t i) { return x[i]; }
__device__ __forceinline__ float load_x(const unsigned short* __restrict__ x, size_t i) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x[i]));
    return f;
}

// The key of a row from its accumulated d2 (or q.x for KEY_IP), as every distance kernel
// finishes it (see the key codes in m2m_abi.h).
__device__ __forceinline__ float finish_key(float acc, unsigned int metric,
                                            const float4* __restrict__ params, size_t row)
{
    float v = acc;
    if (metric == KEY_IP) {
        v = -acc;
    } else if (metric == KEY_SPLAT || metric == KEY_DISTANCE) {
        const float4 p = params[row];
        if (!(p.x > 0.0f)) v = __int_as_float(0x7f800000);
        else if (metric == KEY_SPLAT) v = fmaf(p.y, acc, -logf(p.x));
    }
    return isnan(v) ? __uint_as_float(CANONICAL_NAN_BITS) : v;  // NaN after +inf, before seeds
}

// The exported kernels (signatures in m2m_gpu/backends/abi.py): one body, read as float32
// rows or as float16 rows (IEEE binary16 bits) as rows_f16 says, the same for every thread.
#define DISTANCE_KERNEL(name, body)                                                          \
    extern "C" __global__ void name(                                                         \
        const float* __restrict__ q, const void* __restrict__ x, float* __restrict__ keys,   \
        unsigned int mq, unsigned int t, unsigned int d, unsigned long long offset,          \
        unsigned int metric, const float4* __restrict__ params, unsigned int rows_f16)       \
    {                                                                                        \
        if (rows_f16)                                                                        \
            body(q, (const unsigned short*)x, keys, mq, t, d, offset, metric, params);       \
        else                                                                                 \
            body(q, (const float*)x, keys, mq, t, d, offset, metric, params);                \
    }

// keys[i, j] for query i and database row (offset + j), smaller is better; d2 is the direct
// form. metric (key code) KEY_L2: d2; KEY_IP: -(q.x); KEY_SPLAT: kappa d2 - log(alpha);
// KEY_DISTANCE: d2, +inf where alpha = 0. params (float4 per row: alpha, kappa, last_tick,
// -) is read for KEY_SPLAT and KEY_DISTANCE.
// T is the stored row type (float or float16 bits); arithmetic is float32 either way.
template <typename T>
__device__ __forceinline__ void knn_distance_body(
    const float* __restrict__ q, const T* __restrict__ x, float* __restrict__ keys,
    unsigned int mq, unsigned int t, unsigned int d, unsigned long long offset,
    unsigned int metric, const float4* __restrict__ params)
{
    __shared__ float qs[BQ][TK + 1];
    __shared__ float xs[BR][TK + 1];
    const unsigned int lx = threadIdx.x;  // 0..15
    const unsigned int ly = threadIdx.y;  // 0..15
    const unsigned int lid = ly * 16u + lx;
    const unsigned int qi = blockIdx.y * BQ + ly;
    const unsigned int r0 = blockIdx.x * BR;

    float acc[RN];
#pragma unroll
    for (int r = 0; r < RN; ++r) acc[r] = 0.0f;

    for (unsigned int k0 = 0; k0 < d; k0 += TK) {
        for (unsigned int e = lid; e < BQ * TK; e += 256u) {
            unsigned int row = e / TK, col = e % TK;
            unsigned int gq = blockIdx.y * BQ + row, gk = k0 + col;
            qs[row][col] = (gq < mq && gk < d) ? q[(size_t)gq * d + gk] : 0.0f;
        }
        for (unsigned int e = lid; e < BR * TK; e += 256u) {
            unsigned int row = e / TK, col = e % TK;
            unsigned int gr = r0 + row, gk = k0 + col;
            xs[row][col] = (gr < t && gk < d) ? load_x(x, (size_t)(offset + gr) * d + gk) : 0.0f;
        }
        __syncthreads();
        const unsigned int kn = min((unsigned int)TK, d - k0);
        if (metric != KEY_IP) {
            for (unsigned int kk = 0; kk < kn; ++kk) {
                float qv = qs[ly][kk];
#pragma unroll
                for (int r = 0; r < RN; ++r) {
                    float diff = qv - xs[lx + 16u * r][kk];
                    acc[r] = fmaf(diff, diff, acc[r]);
                }
            }
        } else {
            for (unsigned int kk = 0; kk < kn; ++kk) {
                float qv = qs[ly][kk];
#pragma unroll
                for (int r = 0; r < RN; ++r) acc[r] = fmaf(qv, xs[lx + 16u * r][kk], acc[r]);
            }
        }
        __syncthreads();
    }
    if (qi < mq) {
#pragma unroll
        for (int r = 0; r < RN; ++r) {
            unsigned int j = r0 + lx + 16u * r;
            if (j >= t) continue;
            keys[(size_t)qi * t + j] = finish_key(acc[r], metric, params, offset + j);
        }
    }
}

DISTANCE_KERNEL(knn_distance, knn_distance_body)

// Small batches (see shaders/knn_distance_rows.comp): one query per block row (grid y),
// 256 database rows per block, one per thread, each read straight through (its cache
// lines are reused from L1 over the next components). Same fma order and epilogue as
// knn_distance: bit-identical keys.
template <typename T>
__device__ __forceinline__ void knn_distance_rows_body(
    const float* __restrict__ q, const T* __restrict__ x, float* __restrict__ keys,
    unsigned int mq, unsigned int t, unsigned int d, unsigned long long offset,
    unsigned int metric, const float4* __restrict__ params)
{
    const unsigned int qi = blockIdx.y;
    const unsigned int j = blockIdx.x * 256u + threadIdx.x;
    if (qi >= mq || j >= t) return;
    const float* qrow = q + (size_t)qi * d;
    const size_t xa = (size_t)(offset + j) * d;
    float acc = 0.0f;
    if (metric != KEY_IP) {
        for (unsigned int c = 0; c < d; ++c) {
            const float diff = qrow[c] - load_x(x, xa + c);
            acc = fmaf(diff, diff, acc);
        }
    } else {
        for (unsigned int c = 0; c < d; ++c) acc = fmaf(qrow[c], load_x(x, xa + c), acc);
    }
    keys[(size_t)qi * t + j] = finish_key(acc, metric, params, offset + j);
}

DISTANCE_KERNEL(knn_distance_rows, knn_distance_rows_body)

__device__ __forceinline__ unsigned int ordered(float f) {
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Running top-k merge: per row (one 256-thread block per row), the k smallest keys among the
// row's current k best and the t keys of a new tile, by exact radix select. Unsorted output.
// Candidates are written in rounds of 256 with a block-wide prefix sum over the class flags
// (below / equal to the k-th), so each class keeps input order: among keys equal to the k-th
// the smallest ids win (the running best precedes the tile and holds smaller ids), and equal
// keys leave in id order. Seeds (SEED_KEY_BITS) order after every real key.
// Small batches (see shaders/topk_select.comp): grid.y = segments parts of the tile, each
// selected on its own (SELECT_NO_BEST) into slots (row * segments + s) * k; a second pass
// with SELECT_IDS (ids from tile_ids) merges them into the running best. A part with at
// most k keys is copied as it is and its remaining slots seeded.
extern "C" __global__ void topk_select(
    const float* __restrict__ tile, const long long* __restrict__ tile_ids,
    const float* __restrict__ bk_in, const long long* __restrict__ bi_in,
    float* __restrict__ bk_out, long long* __restrict__ bi_out, unsigned int t,
    unsigned int k, long long id_base, unsigned int segments, unsigned int flags)
{
    __shared__ unsigned int hist[256];
    __shared__ unsigned int s_prefix, s_want;
    __shared__ unsigned int scan[256];
    const size_t row = blockIdx.x;
    const unsigned int tid = threadIdx.x;
    const unsigned int kb = (flags & SELECT_NO_BEST) ? 0u : k;  // running best entries read
    const unsigned int part = (t + segments - 1u) / segments;
    const unsigned int part0 = min(t, blockIdx.y * part);  // this block's first tile column
    const unsigned int total = kb + min(part, t - part0);
    const float* row_tile = tile + row * t + part0;
    const long long* row_tid = (flags & SELECT_IDS) ? tile_ids + row * t + part0 : nullptr;
    const float* row_bk = bk_in + row * k;
    const long long* row_bi = bi_in + row * k;
    const size_t out0 = (row * segments + blockIdx.y) * (size_t)k;  // first output slot
    if (total <= k) {  // nothing to select: copy in order, seed the rest
        for (unsigned int c = tid; c < k; c += 256u) {
            const bool real = c < total;
            bk_out[out0 + c] = !real ? __uint_as_float(SEED_KEY_BITS)
                                     : (c < kb ? row_bk[c] : row_tile[c - kb]);
            bi_out[out0 + c] = !real ? -1LL
                                     : (c < kb ? row_bi[c]
                                               : (row_tid ? row_tid[c - kb]
                                                          : id_base + (long long)(part0 + c - kb)));
        }
        return;
    }
    if (tid == 0) { s_prefix = 0u; s_want = k; }
    unsigned int mask = 0u;
    for (int pass = 0; pass < 4; ++pass) {
        const unsigned int shift = 24u - 8u * pass;
        hist[tid] = 0u;
        __syncthreads();
        const unsigned int prefix = s_prefix;
        for (unsigned int c = tid; c < total; c += 256u) {
            unsigned int u = ordered(c < kb ? row_bk[c] : row_tile[c - kb]);
            if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            unsigned int want = s_want, below = 0u, b = 0u;
            for (; b < 255u; ++b) {
                if (below + hist[b] >= want) break;
                below += hist[b];
            }
            s_want = want - below;
            s_prefix = prefix | (b << shift);
        }
        mask |= 255u << shift;
        __syncthreads();
    }
    const unsigned int kth = s_prefix;
    const unsigned int equal_slots = s_want;
    const unsigned int less_slots = k - equal_slots;
    unsigned int base_lt = 0u, base_eq = 0u;  // slots filled so far, the same in every thread
    for (unsigned int r0 = 0; r0 < total; r0 += 256u) {
        const unsigned int c = r0 + tid;
        float v = 0.0f;
        unsigned int flag = 0u;  // 1: below the k-th; 0x10000: equal (at most 256 of each)
        if (c < total) {
            v = c < kb ? row_bk[c] : row_tile[c - kb];
            const unsigned int u = ordered(v);
            flag = (u < kth) ? 1u : ((u == kth) ? 0x10000u : 0u);
        }
        scan[tid] = flag;
        __syncthreads();
        for (unsigned int off = 1u; off < 256u; off <<= 1) {
            const unsigned int add = tid >= off ? scan[tid - off] : 0u;
            __syncthreads();
            scan[tid] += add;
            __syncthreads();
        }
        const unsigned int before = scan[tid] - flag;
        const unsigned int round_total = scan[255];
        if (flag != 0u) {
            const long long id = c < kb ? row_bi[c]
                                        : (row_tid ? row_tid[c - kb]
                                                   : id_base + (long long)(part0 + c - kb));
            if (flag == 1u) {
                const unsigned int s = base_lt + (before & 0xFFFFu);
                bk_out[out0 + s] = v;
                bi_out[out0 + s] = id;
            } else {
                const unsigned int s = base_eq + (before >> 16);
                if (s < equal_slots) {
                    bk_out[out0 + less_slots + s] = v;
                    bi_out[out0 + less_slots + s] = id;
                }
            }
        }
        base_lt += round_total & 0xFFFFu;
        base_eq += round_total >> 16;
        __syncthreads();  // scan[] is rewritten by the next round
        if (base_lt >= less_slots && base_eq >= equal_slots) break;  // uniform: all filled
    }
}

// HRM2 scan (see shaders/cells_distance.comp): candidate j of query i lies in one of the
// query's p segments (row start, length, destination offset); direct-form key, +inf where no
// segment covers j when fill is set (the first block of rows writes it). params is unread
// for KEY_L2. Rows are read as codec says (CODEC_F32, CODEC_F16, CODEC_SQ8 with dequant:
// offsets[d] then scales[d]); arithmetic is float32 throughout.
struct RowsF32 {
    const float* x; unsigned int d;
    __device__ __forceinline__ float at(long long r, unsigned int c) const {
        return x[(size_t)r * d + c];
    }
};
struct RowsF16 {
    const unsigned short* x; unsigned int d;
    __device__ __forceinline__ float at(long long r, unsigned int c) const {
        return load_x(x, (size_t)r * d + c);
    }
};
struct RowsSQ8 {  // one byte per dimension, rows padded to whole 32-bit words
    const unsigned char* x; const float* dq; unsigned int d, stride;
    __device__ __forceinline__ float at(long long r, unsigned int c) const {
        return fmaf(dq[d + c], (float)x[(size_t)r * stride + c], dq[c]);
    }
};

template <typename R>
__device__ __forceinline__ void cells_distance_body(
    const float* __restrict__ q, const R rows, const long long* __restrict__ segs,
    float* __restrict__ keys, unsigned int m, unsigned int d, unsigned int t, unsigned int p,
    unsigned int mode, const float4* __restrict__ params, unsigned int fill)
{
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int i = blockIdx.y;
    if (j >= t || i >= m) return;
    const long long* seg = segs + (size_t)i * p * 3;
    for (unsigned int s = 0; s < p; ++s) {
        const long long start = seg[3 * s], len = seg[3 * s + 1], dst = seg[3 * s + 2];
        if ((long long)j >= dst && (long long)j < dst + len) {
            const long long r = start + (j - dst);
            float acc = 0.0f;
            for (unsigned int c = 0; c < d; ++c) {
                const float df = q[(size_t)i * d + c] - rows.at(r, c);
                acc = fmaf(df, df, acc);
            }
            keys[(size_t)i * t + j] = finish_key(acc, mode, params, r);
            return;
        }
    }
    if (fill) keys[(size_t)i * t + j] = __int_as_float(0x7f800000);
}

extern "C" __global__ void cells_distance(
    const float* __restrict__ q, const void* __restrict__ x,
    const long long* __restrict__ segs, float* __restrict__ keys, unsigned int m,
    unsigned int d, unsigned int t, unsigned int p, unsigned int mode,
    const float4* __restrict__ params, unsigned int fill, const float* __restrict__ dequant,
    unsigned int codec)
{
    if (codec == CODEC_SQ8) {
        const RowsSQ8 rows = {(const unsigned char*)x, dequant, d, 4u * ((d + 3u) / 4u)};
        cells_distance_body(q, rows, segs, keys, m, d, t, p, mode, params, fill);
    } else if (codec == CODEC_F16) {
        const RowsF16 rows = {(const unsigned short*)x, d};
        cells_distance_body(q, rows, segs, keys, m, d, t, p, mode, params, fill);
    } else {
        const RowsF32 rows = {(const float*)x, d};
        cells_distance_body(q, rows, segs, keys, m, d, t, p, mode, params, fill);
    }
}
