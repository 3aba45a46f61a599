"""Top-k selection and merging with one tie rule: smaller key first, then smaller id.

Every search path (cpu BLAS tiles, GPU radix select, HRM2 cells, tiered blocks, shards)
returns rows in this order, so results do not depend on the tiling, the thread timing or
the tier layout. Ids of -1 (padding) order after every real id.

``xp`` arguments are NumPy or CuPy; functions without one are host-only (NumPy).
"""

from __future__ import annotations

import numpy as np

from ..backends.abi import SEED_ID, SEED_KEY_BITS

_NO_ID = np.iinfo(np.int64).max


def _tie(ids):
    return np.where(ids < 0, _NO_ID, ids)


def seeds(xp, shape) -> tuple:
    """The (keys, ids) a running top-k starts from: a NaN key above +inf, id -1."""
    keys = xp.full(shape, SEED_KEY_BITS, dtype=xp.uint32).view(xp.float32)
    return keys, xp.full(shape, SEED_ID, dtype=xp.int64)


def ordered_bits(xp, keys):
    """float32 keys as uint32 whose unsigned order is the float order (NaN after +inf,
    -0.0 before +0.0): the order the GPU radix select uses."""
    u = xp.ascontiguousarray(keys, dtype=xp.float32).view(xp.uint32)
    negative = (u & xp.uint32(0x80000000)) != 0
    return xp.where(negative, ~u, u | xp.uint32(0x80000000))


def sort_select_output(xp, keys, ids):
    """Sort each row of a GPU select's output by (key, column): the kernel leaves equal
    keys in id order, so this is the (key, id) order. Seeds left over (fewer than k rows
    were seen) become (+inf, -1). Works on NumPy and CuPy arrays without relying on a
    stable sort: the 64-bit sort key (ordered bits << 32 | column) is unique per row."""
    m, k = keys.shape
    composite = (ordered_bits(xp, keys).astype(xp.uint64) << xp.uint64(32)) | \
        xp.arange(k, dtype=xp.uint64)[None, :]
    order = xp.argsort(composite, axis=1)
    keys = xp.take_along_axis(keys, order, 1)
    ids = xp.take_along_axis(ids.astype(xp.int64, copy=False), order, 1)
    seed = ordered_bits(xp, keys) == xp.uint32(0xFFFFFFFF)
    return xp.where(seed, xp.float32(np.inf), keys), xp.where(seed, SEED_ID, ids)


def sort_rows(keys: np.ndarray, ids: np.ndarray, *others: np.ndarray):
    """Host: sort each row by (key, id; -1 last), carrying ``others`` along."""
    if keys.size == 0:
        return (keys, ids, *others)
    order = np.lexsort((_tie(ids), keys), axis=-1)
    take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
    return (take(keys), take(ids), *(take(o) for o in others))


def select_k(keys: np.ndarray, ids: np.ndarray, k: int):
    """Host: the k smallest keys of each row (unsorted), ties at the k-th value going to
    the smaller ids. ``argpartition`` does the work; only rows with more entries equal to
    their k-th key than it kept are redone with a (key, id) sort."""
    width = keys.shape[1]
    if width <= k:  # copies: callers may reuse the buffers they passed
        return np.array(keys), np.array(ids)
    keep = np.argpartition(keys, k - 1, axis=1)[:, :k]
    kk = np.take_along_axis(keys, keep, 1)
    ki = np.take_along_axis(ids, keep, 1)
    kth = kk.max(axis=1)
    with np.errstate(invalid="ignore"):
        tied = (keys == kth[:, None]).sum(axis=1) > (kk == kth[:, None]).sum(axis=1)
    for r in np.flatnonzero(tied):
        order = np.lexsort((_tie(ids[r]), keys[r]))[:k]
        kk[r], ki[r] = keys[r, order], ids[r, order]
    return kk, ki


def merge_by_key(parts, k: int):
    """Top-k of several host ``(keys, index, d2)`` results (each (m, c)) by key, then by
    index (slot or position; -1 last): the one order that every search path returns, so
    that ties are broken the same way whatever the tier layout. One part is taken as it
    is: every scan returns its rows in that order already."""
    if len(parts) == 1:
        keys, idx, d2 = parts[0]
        return (np.asarray(keys, np.float32)[:, :k], np.asarray(idx, np.int64)[:, :k],
                np.asarray(d2, np.float32)[:, :k])
    keys = np.concatenate([np.asarray(p[0], np.float32) for p in parts], 1)
    idx = np.concatenate([np.asarray(p[1], np.int64) for p in parts], 1)
    d2 = np.concatenate([np.asarray(p[2], np.float32) for p in parts], 1)
    if keys.size == 0:
        return keys[:, :k], idx[:, :k], d2[:, :k]
    keys, idx, d2 = sort_rows(keys, idx, d2)
    return keys[:, :k], idx[:, :k], d2[:, :k]
