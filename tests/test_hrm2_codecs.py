"""HRM2 over compressed rows (float16, SQ8: ``m2m_gpu.codecs``): the scan kernel over codes
against the reference over the decoded rows, and the index that scans codes and re-ranks
on the float32 rows, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError
from m2m_gpu.codecs import Codec
from m2m_gpu.hrm2 import IndexHRM2

from .test_hrm2 import check_scan, cpu_scan_paths, data, recall

CODECS = ["fp16", "sq8"]
# with a projection first: the index tests run on 24 dimensions (25 lifted, under ip)
INDEX_CODECS = CODECS + ["pca16,sq8", "pca12,fp16"]


def test_codecs_round_trip_within_their_step(rng):
    x = (rng.standard_normal((500, 13)) * rng.uniform(0.01, 100, 13)).astype(np.float32)
    x[:, 3] = -2.0  # constant: SQ8 scale 0, decoded exactly
    for name in CODECS:
        c = Codec.train(name, x)
        codes = c.encode(x)
        assert codes.dtype == (np.float16 if name == "fp16" else np.uint32)
        assert codes.shape == ((500, 13) if name == "fp16" else (500, 4))
        dec = c.decode(codes)
        step = c.scale / 2 * 1.001 + 1e-6 if name == "sq8" else np.abs(x) / 1024 + 1e-7
        assert (np.abs(dec - x) <= step).all()
        np.testing.assert_array_equal(dec[:, 3], -2.0)
        np.testing.assert_allclose(c.sqnorms(codes), np.einsum("ij,ij->i", dec, dec),
                                   rtol=1e-6)
    far = Codec.train("sq8", x).encode(x * 10)  # outside the trained range: clipped
    assert far.view(np.uint8).max() == 255
    assert np.isfinite(Codec.fp16(2).decode(Codec.fp16(2).encode(
        np.array([[1e6, -1e6]], np.float32)))).all()


@pytest.mark.parametrize("name", ["sq8", "fp16"])
def test_a_projecting_codec_keeps_the_leading_principal_coordinates(rng, name):
    """``pcaN,...``: rows and queries coded as ``B (x - mean)``, B the N leading principal
    directions, orthonormal; the code-space distance is a lower bound of the true one,
    short of exactly the part outside the span (so exact for rows in it); odd N (SQ8 rows
    padded to whole words); the compiled query projection is the reference's."""
    from m2m_gpu.backends import _jit
    from m2m_gpu.codecs import principal_directions

    n, d, N = 800, 10, 3
    spread = np.array([8, 4, 2, 1, 0.1, 0.08, 0.06, 0.05, 0.03, 0.01], np.float32)
    mix = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    x = (rng.standard_normal((n, d)).astype(np.float32) * spread) @ mix.T + 2.0
    c = Codec.train(f"pca{N},{name}", x)
    assert c.projected and c.spec == f"pca{N},{name}" and c.d == N and c.d_in == d
    np.testing.assert_allclose(c.basis @ c.basis.T, np.eye(N), atol=1e-5)
    np.testing.assert_allclose(np.abs(c.basis @ mix[:, :N]), np.eye(N), atol=0.05)
    np.testing.assert_allclose(c.mean, x.mean(axis=0), atol=1e-4)
    z = c.project(x)
    q = x[:7] + rng.standard_normal((7, d)).astype(np.float32) * 0.1
    qc = c.queries(q)
    assert qc.shape == (7, N) and qc.flags.c_contiguous
    ref = (q - c.mean) @ c.basis.T
    np.testing.assert_allclose(qc, ref, rtol=1e-5, atol=1e-5)
    if _jit.available():  # the compiled path was the one taken: the numbers agree
        np.testing.assert_allclose(_jit.project(q, c.basis, c.mean), ref, rtol=1e-5,
                                   atol=1e-5)
    est = ((qc[:, None, :] - z[None]) ** 2).sum(-1)
    diff = q[:, None, :] - x[None]
    true = (diff**2).sum(-1)
    outside = diff - (diff @ c.basis.T) @ c.basis  # the part the projection drops
    np.testing.assert_allclose(est, true - (outside**2).sum(-1), rtol=1e-3, atol=1e-3)
    assert (est <= true * (1 + 1e-5) + 1e-5).all()
    inside = c.mean + ((x - c.mean) @ c.basis.T) @ c.basis  # rows in the span: exact
    est_in = ((qc[:, None, :] - c.project(inside)[None]) ** 2).sum(-1)
    ref_in = (((q - c.mean) @ c.basis.T @ c.basis + c.mean)[:, None, :] - inside[None]) ** 2
    np.testing.assert_allclose(est_in, ref_in.sum(-1), rtol=1e-3, atol=1e-3)
    codes = c.encode(x)
    assert codes.shape == ((n, N) if name == "fp16" else (n, 1))
    step = c.scale / 2 * 1.001 + 1e-6 if name == "sq8" else np.abs(z) / 1024 + 1e-6
    assert (np.abs(c.decode(codes) - z) <= step).all()
    again = Codec.from_state(c.state())
    np.testing.assert_array_equal(again.encode(x), codes)
    basis, mean = principal_directions(np.zeros((0, d), np.float32), N)  # no rows yet
    np.testing.assert_array_equal(basis, np.eye(N, d))


@pytest.mark.parametrize("spec, canonical", [("sq8", "sq8"), ("FP16", "fp16"),
                                             ("pca8,sq8", "pca8,sq8"),
                                             ("PCA 4, FP16", "pca4,fp16")])
def test_codec_specs_are_read_in_any_case(spec, canonical):
    assert IndexHRM2(12, codec=spec).codec == canonical


@pytest.mark.parametrize("bad", ["pca0,sq8", "pca12,sq8", "pca99,fp16", "pca8", "pca,sq8",
                                 "pcax,sq8", "sq8,pca4", "pca-1,sq8"])
def test_bad_projections_are_refused_naming_the_problem(bad):
    with pytest.raises(InvalidInputError, match="codec"):
        IndexHRM2(12, codec=bad)


def _copied_trainings(x, codec, **options):
    """``(src, dst, plain, late)``: ``src`` trained with ``codec`` on ``x`` and ``dst`` its
    copy; ``plain`` trained without a codec and ``late`` (with ``codec``) its copy."""
    src = IndexHRM2(x.shape[1], codec=codec)
    src.train(x)
    dst = IndexHRM2(x.shape[1], codec=codec)
    dst.copy_training(src)
    plain = IndexHRM2(x.shape[1])
    plain.train(x)
    late = IndexHRM2(x.shape[1], codec=codec, **options)
    late.copy_training(plain)
    return src, dst, plain, late


def _assert_recall_near(late, plain, x, q, loss):
    """``late`` (holding ``x``) finds the true 10 as well as ``plain`` does, to ``loss``."""
    flat = m2m_gpu.IndexFlatL2(x.shape[1])
    flat.add(x)
    late.nprobe = plain.nprobe = 8
    plain.add(x)
    assert recall(late.search(q, 10)[1], flat.search(q, 10)[1]) >= \
        recall(plain.search(q, 10)[1], flat.search(q, 10)[1]) - loss


def test_copied_training_brings_its_projection_or_trains_one_on_each_layout():
    """copy_training takes the source's directions; from an index without a codec the
    directions are those of the rows laid out, measured on a sample at each full
    re-layout; either way the codes follow the rows."""
    x, q = data(3000, 30, d=24)
    x, q = x * SPECTRUM, q * SPECTRUM
    src, dst, plain, late = _copied_trainings(x, "pca12,sq8", rerank=8)
    np.testing.assert_array_equal(dst.hrm2.layout.codec.basis, src.hrm2.layout.codec.basis)
    late.add(x)
    got = late.hrm2.layout.codec
    assert got is not None and got.projected and late.hrm2.check() == []
    want = Codec.train("pca12,sq8", x)  # the directions of these rows, up to rounding
    np.testing.assert_allclose(np.abs((got.basis @ want.basis.T).diagonal()), 1, atol=1e-3)
    _assert_recall_near(late, plain, x, q, 0.02)


@pytest.mark.parametrize("reps", [3, 50])
@pytest.mark.parametrize("codec", ["fp16", "sq8"])
@pytest.mark.parametrize("mode", ["splat", "distance", "plain"])
def test_compressed_scan_matches_reference_on_the_decoded_rows(backend, rng, codec, mode,
                                                                small_tiles, monkeypatch,
                                                                reps):
    """The scan over codes (float16, SQ8) ranks exactly as the reference does over the
    decoded rows, with splat parameters, masked rows and no params at all; odd d (float16
    halves straddle rows; SQ8 rows are padded to whole words) and, with small tiles, rows
    split over several device buffers. ``reps = 50``: cells probed by up to 100 queries
    (the cpu kernel's decoded row blocks and register tiles)."""
    from m2m_gpu.backends import vulkan
    from m2m_gpu.backends.base import MODE_DISTANCE, MODE_SPLAT, PARAM_WIDTH

    monkeypatch.setattr(vulkan, "CHUNK_BYTES", 1024)  # 73 float16 rows: an odd half count
    n, d, m, k = 300, 7, 3 * reps, 12
    x = (rng.standard_normal((n, d)) * [1, 5, 0.1, 2, 1, 3, 0.5]).astype(np.float32)
    x[:, 4] = 1.5  # a constant dimension: SQ8 scale 0
    q = rng.standard_normal((m, d)).astype(np.float32)
    c = Codec.train(codec, x)
    codes = c.encode(x)
    dec = c.decode(codes)
    err = np.abs(dec - x)  # a real codec: half a step (SQ8), float16's rounding
    assert (err <= (c.scale / 2 * 1.001 + 1e-7 if codec == "sq8" else np.abs(x) / 1024)).all()
    assert err.max() > 0
    bounds = np.array([0, 40, 41, 41, 130, 300])
    ranges = np.stack([bounds[:-1], bounds[1:]], 1)
    probes = np.array([[0, 3, -1], [2, 4, 1], [1, -1, -1]] * reps)
    params = np.zeros((n, PARAM_WIDTH), np.float32)
    params[:, 0] = rng.uniform(0.1, 3, n) if mode != "plain" else 1.0
    params[:, 1] = rng.uniform(0.5, 4, n) if mode == "splat" else 1.0
    if mode != "plain":
        params[::7, 0] = 0
    cn = backend.from_host(codes)
    code = MODE_SPLAT if mode == "splat" else MODE_DISTANCE
    pn = None if mode == "plain" else backend.from_host(params, like=cn)
    for _ in cpu_scan_paths(backend):
        keys, pos, d2 = backend.scan_cells(backend.from_host(q), cn, ranges, probes, k, code,
                                           pn, dequant=c.dequant)
        check_scan(keys, pos, d2, q, dec, ranges, probes, params, k,
                   "splat" if mode == "splat" else "distance")
        # only the rows found (the exact re-rank ranks them again): the same rows
        _, found, _ = backend.scan_cells(backend.from_host(q), cn, ranges, probes, k, code,
                                         pn, dequant=c.dequant, ranked=False)
        found = np.asarray(found)
        assert found.shape == pos.shape
        for want, got in zip(pos, found, strict=True):
            assert sorted(got[got >= 0]) == sorted(want[want >= 0])



# per-dimension spread of the rows: falling like an embedding's spectrum, so the leading
# principal directions (what a projecting codec keeps) carry most of each distance
SPECTRUM = np.geomspace(1.0, 0.03, 24).astype(np.float32)


def index_pair(backend, codec, metric="l2", **kw):
    n = 3000 if backend.name != "vulkan" else 1500
    x, q = data(n, 40, d=24)
    x, q = x * SPECTRUM, q * SPECTRUM
    shape = (6, 6) if backend.name == "vulkan" else (None, None)
    idx = IndexHRM2(24, *shape, metric, backend=backend.name, codec=codec, **kw)
    ref = IndexHRM2(24, *shape, metric, backend=backend.name, **kw)
    for i in (idx, ref):
        i.train(x)
        i.add(x)
    return x, q, idx, ref


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("codec", INDEX_CODECS)
def test_probing_every_cell_with_a_deep_rerank_is_exact(backend, codec, metric):
    """All cells probed and 8 k candidates re-ranked (after a projection, whose order is
    looser, every row): the exact answer, with the exact float32 distances (the codes
    only chose the candidates)."""
    deep = 8 if not codec.startswith("pca") else 300  # 300 k = every row
    x, q, idx, _ = index_pair(backend, codec, metric, rerank=deep)
    idx.p1, idx.nprobe = idx.hrm2.coarse.shape[0], idx.nlist
    D, I = idx.search(q, 10)
    flat = {"l2": m2m_gpu.IndexFlatL2, "cosine": m2m_gpu.IndexFlatIP,
            "ip": m2m_gpu.IndexFlatIP}[metric](24)
    xs = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    qs = q / np.linalg.norm(q, axis=1, keepdims=True) if metric == "cosine" else q
    flat.add(xs)
    D0, I0 = flat.search(qs, 10)
    assert recall(I, I0) == 1.0
    np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("codec", INDEX_CODECS)
def test_compressed_index_keeps_the_recall_of_the_float_index(backend, codec):
    x, q, idx, ref = index_pair(backend, codec)
    flat = m2m_gpu.IndexFlatL2(24)
    flat.add(x)
    _, I0 = flat.search(q, 10)
    for i in (idx, ref):
        i.nprobe = 8
    r, r_ref = recall(idx.search(q, 10)[1], I0), recall(ref.search(q, 10)[1], I0)
    assert r >= r_ref - 0.01 and r > 0.5
    idx.rerank = 1  # no spare candidates: the codes' own ranking shows (a projection's
    # is looser: what the deeper re-rank above makes up for)
    loss = 0.15 if codec.startswith("pca") else 0.05
    assert recall(idx.search(q, 10)[1], I0) >= r_ref - loss


@pytest.mark.parametrize("codec", INDEX_CODECS)
def test_writes_keep_the_codes_in_step(backend, codec):
    """Adds into the overflow region, a re-layout, removals and a retraining: the codes
    follow the rows (layout check), new rows are found at once, removed ones never."""
    x, q, idx, _ = index_pair(backend, codec)
    new = (x[:30] + 0.05).astype(np.float32)
    idx.add_with_ids(new, np.arange(10**6, 10**6 + 30))
    assert idx.hrm2.check() == [] and idx.hrm2.rebuilds == 0
    D, I = idx.search(new, 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(10**6, 10**6 + 30))
    np.testing.assert_allclose(D[:, 0], 0, atol=1e-4)  # exact after the re-rank
    assert idx.remove_ids(np.arange(0, x.shape[0], 2)) == x.shape[0] // 2
    _, I = idx.search(q, 10)
    assert not np.isin(I, np.arange(0, x.shape[0], 2)).any() and idx.hrm2.check() == []
    idx.add(x[: x.shape[0] // 2])  # past the overflow threshold: a re-layout
    assert idx.hrm2.rebuilds >= 1 and idx.hrm2.check() == []
    idx.train(x)  # retrain a populated index: codes (and SQ8's ranges) made again
    assert idx.hrm2.check() == [] and idx.hrm2.layout.codes.shape[0] == idx.ntotal


@pytest.mark.parametrize("codec", INDEX_CODECS)
def test_rows_moved_in_place_or_across_cells_are_found_where_they_are(backend, codec):
    """HRM2.relocate (a splat's mu moved): rewritten in place, or dead at the old position
    and added to the new cell; a search finds each where it now is, never a dead copy."""
    x, q, idx, _ = index_pair(backend, codec)
    h = idx.hrm2
    pos = h.positions_of(np.arange(40))
    target = x[::-1][:40] + np.float32(0.01)  # far away: most cross into another cell
    target[:5] = x[:5] + np.float32(1e-3)  # these stay in their cells
    moved = h.relocate(pos, target)
    assert 0 < moved < 40 and h.check() == []
    keys, p, d2, _ = h.search(target, 1, h.coarse.shape[0], h.centroids.cells,
                              params=h.mask_params(), cache=False)
    np.testing.assert_array_equal(h.ids[p[:, 0]], np.arange(40))
    np.testing.assert_allclose(d2[:, 0], 0, atol=1e-4)
    assert not h.dead[p[:, 0]].any()


@pytest.mark.parametrize("codec", INDEX_CODECS)
def test_the_codec_and_its_ranges_survive_saving(backend, codec):
    x, q, idx, _ = index_pair(backend, codec, rerank=3)
    idx.nprobe = 6
    D, I = idx.search(q, 10)
    back = m2m_gpu.deserialize_index(m2m_gpu.serialize_index(idx), backend=backend.name)
    assert back.codec == codec and back.rerank == 3
    a, b = idx.hrm2.layout.codec, back.hrm2.layout.codec
    assert b.spec == codec and b.projected == codec.startswith("pca")
    for key, value in a.state().items():
        np.testing.assert_array_equal(value, b.state()[key])
    D2, I2 = back.search(q, 10)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_allclose(D, D2, rtol=1e-6)
    from m2m_gpu import serialize

    blob = m2m_gpu.serialize_index(idx)
    plain = m2m_gpu.serialize_index(IndexHRM2(24))
    version = 3 if a.projected else 2  # the oldest reader that keeps everything
    assert f'"format_version":{version}'.encode() in bytes(blob)
    assert b'"format_version":1' in bytes(plain)
    old_reader = serialize.FORMAT_VERSION
    try:  # an older reader refuses the index instead of dropping its codec or projection
        serialize.FORMAT_VERSION = version - 1
        with pytest.raises(m2m_gpu.StoreFormatError, match="newer"):
            m2m_gpu.deserialize_index(blob)
        m2m_gpu.deserialize_index(plain)
    finally:
        serialize.FORMAT_VERSION = old_reader


def test_codes_stay_on_the_device_while_the_float_rows_are_in_lower_tiers(rng):
    """Float32 rows mostly cold (a spill file): the codes are scanned, only the re-ranked
    candidates' rows are read from their tiers; the answer is the all-hot one."""
    x, q = data(3000, 30, d=24)
    hot = IndexHRM2(24, codec="sq8", backend="cpu")
    cold = IndexHRM2(24, codec="sq8", backend="cpu",
                     tiers={"hot_bytes": 200 * 96, "warm_bytes": 300 * 96})
    for i in (hot, cold):
        i.train(x)
        i.add(x)
        i.nprobe = 8
    assert cold.hrm2.device_bytes() <= 200 * 96
    D, I = hot.search(q, 10)
    Dc, Ic = cold.search(q, 10)
    np.testing.assert_array_equal(I, Ic)
    np.testing.assert_allclose(D, Dc, rtol=1e-6)


@pytest.mark.parametrize("bad", [{"codec": "pq8"}, {"codec": 8}, {"rerank": 0},
                                 {"rerank": 1.5}, {"refine_iters": -1},
                                 {"refine_iters": 2.0}])
def test_bad_codec_options_are_refused(bad):
    with pytest.raises(InvalidInputError):
        IndexHRM2(8, **bad)


def test_copied_training_brings_its_sq8_ranges_or_measures_them_on_each_layout(rng):
    """copy_training takes the source's SQ8 ranges; from an index without them, the ranges
    are those of the rows laid out, measured again at each full re-layout (a first add of
    one row does not fix them for good)."""
    x, q = data(3000, 30, d=24)
    src, dst, plain, late = _copied_trainings(x, "sq8")
    np.testing.assert_array_equal(dst.hrm2.layout.codec.scale, src.hrm2.layout.codec.scale)
    late.add(x[:1])
    assert (late.hrm2.layout.codec.scale == 0).all()  # one row: no range yet
    late.add(x[1:])  # past the overflow threshold: a re-layout measures the ranges again
    assert late.hrm2.rebuilds >= 1 and (late.hrm2.layout.codec.scale > 0).all()
    assert late.hrm2.check() == []
    _assert_recall_near(late, plain, x, q, 0.01)


@pytest.mark.parametrize("codec", CODECS + ["pca8,sq8"])
def test_inner_product_rows_longer_than_the_training_ones_retrain_the_codec(backend, codec):
    """metric ip lifts rows by their norm; a longer row raises the lift and re-lifts every
    row held, and SQ8's range of the lift coordinate (a projection: its directions) is
    trained again. A projection of these isotropic rows keeps too little to rank on: its
    re-rank takes every row, and the codes must still follow them (``check``)."""
    x, q = data(1500, 16, d=12)
    x = x * np.linspace(0.5, 3, x.shape[0], dtype=np.float32)[:, None]
    deep = 8 if not codec.startswith("pca") else 150
    idx = IndexHRM2(12, 4, 4, "ip", backend=backend.name, codec=codec, rerank=deep)
    idx.train(x[:300])  # the shortest rows only
    idx.add(x)
    assert idx.hrm2.check() == []
    idx.p1, idx.nprobe = 4, idx.nlist
    D, I = idx.search(q, 10)
    flat = m2m_gpu.IndexFlatIP(12)
    flat.add(x)
    D0, I0 = flat.search(q, 10)
    assert recall(I, I0) == 1.0
    np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-3)


def test_codes_of_the_wrong_shape_or_without_their_table_are_refused(backend, rng):
    from m2m_gpu.backends.base import MODE_DISTANCE

    x = rng.standard_normal((50, 10)).astype(np.float32)
    q = backend.from_host(x[:3])
    ranges = np.array([[0, 50]])
    probes = np.zeros((3, 1), np.int64)
    c = Codec.train("sq8", x)
    codes = c.encode(x)
    with pytest.raises(InvalidInputError, match="dequant"):
        backend.scan_cells(q, backend.from_host(codes), ranges, probes, 5, MODE_DISTANCE)
    with pytest.raises(InvalidInputError, match="columns"):
        backend.scan_cells(q, backend.from_host(np.ascontiguousarray(codes[:, :2])), ranges,
                           probes, 5, MODE_DISTANCE, dequant=c.dequant)
    with pytest.raises(InvalidInputError, match="columns"):
        backend.scan_cells(q, backend.from_host(x[:, :8].astype(np.float16)), ranges, probes,
                           5, MODE_DISTANCE)
