"""One Qdrant collection: a durable SplatStore in its own directory, with Qdrant's points
(ids, vectors, payloads) and scores on top. Every write is one store call, so it is
durable when it returns and absent when it raised."""

from __future__ import annotations

import bisect
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..persist import fsync_dir
from ..store import SplatStore
from .geometry import DISTANCES, Geometry
from .qdrant import BadRequest, id_order, payload_selector, vector_selector

CONFIG = "collection.json"
MMR_CANDIDATES = 2000  # MMR compares every pair of candidates: 2000^2 scores at most


class Collection:
    def __init__(self, path: Path, size: int, distance: str, store: SplatStore,
                 vector_name: str = "") -> None:
        self.path, self.name = path, path.name
        self.vector_name = vector_name  # "": Qdrant's unnamed vector
        self.payload_indexes: dict[str, str] = {}  # declared; filters need none here
        self.geometry = Geometry(distance, size)
        self.store = store
        self._write = threading.Lock()  # writes that read first; the Dot scan's copy
        self._version = 0  # bumped by every write: the key of the caches below
        self._scan: tuple[int, list, np.ndarray] | None = None  # Dot: (version, ids, rows)
        self._sorted: tuple[int, list] | None = None  # scroll: (version, ids in order)

    # ---- lifecycle --------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, size: Any, distance: Any, backend: Any,
               vector_name: str = "") -> Collection:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65536:
            raise BadRequest(f"vector size must be an integer in 1 .. 65536, got {size!r}")
        if distance not in DISTANCES:
            raise BadRequest(f"distance must be one of {DISTANCES}, got {distance!r}")
        geometry = Geometry(distance, size)
        path.mkdir(parents=True)
        store = SplatStore(size, metric=geometry.metric, backend=backend,
                           path=path / "store", auto_consolidate=False)
        col = cls(path, size, distance, store, vector_name)
        col.save_config()  # the commit point: a directory without its config is not one
        return col

    def config(self) -> dict:
        return {"size": self.geometry.size, "distance": self.geometry.distance,
                "vector_name": self.vector_name, "payload_indexes": self.payload_indexes}

    def save_config(self) -> None:
        tmp = self.path / (CONFIG + ".tmp")
        tmp.write_text(json.dumps(self.config()))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.rename(self.path / CONFIG)
        fsync_dir(self.path)

    @classmethod
    def open(cls, path: Path, backend: Any, cfg: dict) -> Collection:
        """Reopen the collection ``cfg`` (its :func:`read_config`) describes."""
        col = cls(path, cfg["size"], cfg["distance"],
                  SplatStore.open(path / "store", backend=backend), cfg.get("vector_name", ""))
        col.payload_indexes = dict(cfg.get("payload_indexes", {}))
        return col

    def close(self) -> None:
        self.store.close()

    # ---- vectors, plain or named ----------------------------------------------------------
    def unpack(self, vector: Any) -> Any:
        """A point's vector (or a batch's vectors) given plain or as ``{name: ...}``."""
        if isinstance(vector, dict):
            if set(vector) != {self.vector_name}:
                raise BadRequest(f"vector names {sorted(vector)}: this collection has the "
                                 f"one vector {self.vector_name!r}")
            return vector[self.vector_name]
        if self.vector_name:
            raise BadRequest(f"this collection's vector is named {self.vector_name!r}: send "
                             f"{{{self.vector_name!r}: [...]}}")
        return vector

    def pack(self, vector: list[float]) -> Any:
        return {self.vector_name: vector} if self.vector_name else vector

    def check_using(self, using: str | None) -> None:
        if using not in (None, self.vector_name):
            raise BadRequest(f"no vector named {using!r} (this collection has "
                             f"{self.vector_name!r})")

    # ---- writing ----------------------------------------------------------------------------
    def check_vectors(self, vectors: Any, n: int) -> np.ndarray:
        try:
            x = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"vectors must be lists of numbers: {exc}") from None
        if x.ndim != 2 or x.shape[0] != n:
            raise BadRequest(f"expected {n} vectors of {self.geometry.size} numbers")
        if x.shape[1] != self.geometry.size:
            raise BadRequest(f"Vector dimension error: expected dim: {self.geometry.size}, "
                             f"got {x.shape[1]}")
        if not np.isfinite(x).all():
            raise BadRequest("vectors hold NaN or infinity")
        return x

    def upsert(self, ids: list, vectors: Any, payloads: list[dict]) -> None:
        x = self.check_vectors(vectors, len(ids))
        last = {i: n for n, i in enumerate(ids)}  # an id twice in one request: the last wins
        if len(last) != len(ids):
            keep = sorted(last.values())
            ids, x, payloads = [ids[n] for n in keep], x[keep], [payloads[n] for n in keep]
        with self._write:
            self.store.add(x, ids=ids, metadata=payloads)
            self._version += 1

    def delete(self, ids: list | None = None, filt: dict | None = None) -> None:
        with self._write:
            if filt is not None:
                self.store.delete(filter=filt)
            elif ids:
                self.store.delete(ids)  # ids it does not hold are ignored
            self._version += 1

    def set_payload(self, payload: dict, ids: list | None, filt: dict | None,
                    overwrite: bool, key: str | None = None) -> None:
        if not isinstance(payload, dict):
            raise BadRequest("payload must be an object")
        with self._write:
            if ids is None:
                ids = self.store.ids(filter=filt) if filt is not None else []
            recs = self.store.get(ids)
            missing = [i for i, r in zip(ids, recs, strict=True) if r is None]
            if missing:
                raise NotFound(f"No point with id {missing[0]} found")
            new = []
            for r in recs:
                meta = {} if overwrite else dict(r["metadata"])
                if key is not None:
                    meta[key] = {**(meta.get(key) or {}), **payload} \
                        if isinstance(meta.get(key), dict) else dict(payload)
                else:
                    meta.update(payload)
                new.append(meta)
            if ids:
                self.store.update_metadata(ids, new)
            self._version += 1

    # ---- reading ----------------------------------------------------------------------------
    def records(self, ids: list, with_payload: Any = True, with_vector: Any = False) -> list:
        pick, vec = payload_selector(with_payload), vector_selector(with_vector)
        out = []
        for i, r in zip(ids, self.store.get(ids), strict=True):
            if r is None:
                continue
            v = self.pack(np.asarray(r["vector"]).tolist()) if vec else None
            out.append({"id": i, "payload": pick(r["metadata"]), "vector": v})
        return out

    def scroll(self, offset: Any, limit: int, filt: dict | None, with_payload: Any,
               with_vector: Any) -> dict:
        if filt is None:  # the whole order, kept until the next write
            cached = self._sorted
            if cached is None or cached[0] != self._version:
                version = self._version
                cached = self._sorted = (version, sorted(self.store.ids(), key=id_order))
            ids = cached[1]
        else:
            ids = sorted(self.store.ids(filter=filt), key=id_order)
        start = 0
        if offset is not None:
            key = id_order(offset)
            start = bisect.bisect_left(ids, key, key=id_order)
        page = ids[start : start + limit]
        nxt = ids[start + limit] if start + limit < len(ids) else None
        return {"points": self.records(page, with_payload, with_vector),
                "next_page_offset": nxt}

    def count(self, filt: dict | None) -> int:
        return len(self.store) if filt is None else len(self.store.ids(filter=filt))

    def query(self, vectors: Any, limit: int, offset: int, filt: dict | None,
              threshold: float | None, with_payload: Any, with_vector: Any,
              exclude: Any = None) -> list[list]:
        """Qdrant's scored points per query row, best first (``exclude``: an id left out,
        the point a query-by-id names)."""
        x = self.check_vectors(vectors, len(vectors))
        if len(self.store) == 0 or x.shape[0] == 0:
            return [[] for _ in range(x.shape[0])]
        k = limit + offset + (exclude is not None)
        ranked = self._dot(x, k, filt) if self.geometry.by_scan else self._search(x, k, filt)
        pick, vec = payload_selector(with_payload), vector_selector(with_vector)
        out = []
        for ids, scores in ranked:
            hits = [(i, s) for i, s in zip(ids, scores, strict=True) if i != exclude]
            hits = [h for h in hits[offset : offset + limit]
                    if self.geometry.passes(h[1], threshold)]
            recs = self.store.get([i for i, _ in hits]) if hits else []
            out.append([{"id": i, "version": 0, "score": s, "payload": pick(r["metadata"]),
                         "vector": self.pack(np.asarray(r["vector"]).tolist()) if vec
                         else None}
                        for (i, s), r in zip(hits, recs, strict=True)
                        if r is not None])  # None: deleted since it was ranked
        return out

    def _search(self, x: np.ndarray, k: int, filt: dict | None) -> list[tuple[list, list]]:
        res = self.store.search(x, k=k, filter=filt, rank="distance")
        scores = self.geometry.scores(res.distances)
        return [(res.ids[q], scores[q].tolist()) for q in range(x.shape[0])]

    def _dot(self, x: np.ndarray, k: int, filt: dict | None) -> list[tuple[list, list]]:
        """The exact inner-product scan over the collection's copy of its vectors."""
        from ..knn import knn

        ids, rows = self._rows()
        if filt is not None:
            allowed = set(self.store.ids(filter=filt))
            keep = np.fromiter((i in allowed for i in ids), bool, len(ids))
            ids, rows = [i for i, y in zip(ids, keep, strict=True) if y], rows[keep]
        if not ids:
            return [([], []) for _ in range(x.shape[0])]
        D, idx = knn(x, rows, min(k, len(ids)), metric="ip", backend=self.store.backend)
        D, idx = np.asarray(D), np.asarray(idx)
        return [([ids[j] for j in idx[q].tolist()], D[q].astype(np.float64).tolist())
                for q in range(x.shape[0])]

    def _rows(self) -> tuple[list, np.ndarray]:
        scan = self._scan
        if scan is None or scan[0] != self._version:
            with self._write:  # a consistent copy: no write in between
                ids = self.store.ids()
                rows = np.stack([np.asarray(r["vector"], np.float32)
                                 for r in self.store.get(ids)]) if ids else \
                    np.zeros((0, self.geometry.size), np.float32)
                scan = self._scan = (self._version, ids, rows)
        return scan[1], scan[2]

    def mmr(self, vector: Any, limit: int, filt: dict | None, threshold: float | None,
            with_payload: Any, with_vector: Any, diversity: Any, candidates: Any,
            exclude: Any = None) -> list:
        """Maximal marginal relevance: from the ``candidates`` nearest, greedily the one
        best at ``(1 - diversity) * score(query) - diversity * max score(chosen)``; each
        keeps its score for the query. Scores between points are the collection's own
        (for Euclid, the negated distance)."""
        if isinstance(diversity, bool) or not isinstance(diversity, (int, float)) or \
                not 0 <= diversity <= 1:
            raise BadRequest(f"mmr diversity must be in [0, 1], got {diversity!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or \
                not limit <= candidates <= MMR_CANDIDATES:
            raise BadRequest(f"mmr candidates_limit must be an integer in limit .. "
                             f"{MMR_CANDIDATES}, got {candidates!r}")
        pool = self.query([vector], candidates, 0, filt, threshold, with_payload, True,
                          exclude)[0]
        if not pool:
            return []
        V = np.asarray([self.unpack(p["vector"]) for p in pool], np.float64)  # Cosine: unit
        if self.geometry.distance == "Cosine":
            V /= np.linalg.norm(V, axis=1, keepdims=True)
        if self.geometry.distance == "Euclid":  # Qdrant's raw similarity: -d^2
            sq = (V**2).sum(1)
            x = np.asarray(vector, np.float64)
            rel = -((V - x) ** 2).sum(1)
            pair = -np.maximum(sq[:, None] + sq[None] - 2 * V @ V.T, 0)
        else:
            rel = np.array([p["score"] for p in pool])
            pair = V @ V.T
        # Qdrant's order of play: pending candidates kept in a list from which the chosen
        # one is swap-removed, and the last of equal maxima chosen
        pending = list(range(len(pool)))
        chosen = [_swap_remove(pending, _last_argmax(rel[pending]))]
        while len(chosen) < min(limit, len(pool)):
            gain = (1 - diversity) * rel[pending] - diversity * pair[np.ix_(pending,
                                                                            chosen)].max(1)
            chosen.append(_swap_remove(pending, _last_argmax(gain)))
        keep_vec = vector_selector(with_vector)
        return [{**pool[j], "vector": pool[j]["vector"] if keep_vec else None} for j in chosen]

    # ---- splat routes -----------------------------------------------------------------------
    def splats(self) -> SplatStore:
        """The store, for the splat routes: not under Dot, where a splat has no geometry."""
        if self.geometry.by_scan:
            raise BadRequest(f"collection {self.name!r} uses Dot: splat feedback, energy, "
                             "decay and consolidation need Cosine or Euclid")
        return self.store

    def _forgetting(self):
        """What decay and consolidation run on: the store (a text collection: its memory,
        so that pruned texts leave BM25 too)."""
        return self.splats()

    def decay(self, now: float) -> dict:
        with self._write:
            rep = self._forgetting().decay(now)
            self._version += 1
        return {"elapsed": rep.elapsed, "factor": rep.factor, "pruned": rep.pruned}

    def consolidate(self) -> dict:
        with self._write:
            rep = self._forgetting().consolidate()
            self._version += 1
        return {"pruned": list(rep.pruned), "merged": [list(p) for p in rep.merged],
                "rounds": rep.rounds, "before": rep.before, "after": rep.after,
                "reason": rep.reason}

    def feedback(self, query: Any, relevant: list, irrelevant: list) -> int:
        q = self.check_vectors([query], 1)[0]
        with self._write:
            n = self.splats().feedback(q, relevant=relevant, irrelevant=irrelevant)
            self._version += 1
        return int(n)

    def index_field(self, field: Any, schema: Any, drop: bool = False) -> None:
        """Qdrant's payload indexes: declared and reported (``payload_schema``). Filters
        here build a typed column per key on first use, so an index changes no answer."""
        if not isinstance(field, str) or not field:
            raise BadRequest("field_name must be a non-empty string")
        with self._write:
            if drop:
                self.payload_indexes.pop(field, None)
            else:
                kind = schema.get("type") if isinstance(schema, dict) else schema
                self.payload_indexes[field] = str(kind or "keyword")
            self.save_config()

    def info(self) -> dict:
        n = len(self.store)
        return {
            "status": "green", "optimizer_status": "ok", "segments_count": 1,
            "points_count": n, "indexed_vectors_count": 0,
            "payload_schema": {f: {"data_type": t, "points": n}
                               for f, t in self.payload_indexes.items()},
            "config": {
                "params": {"vectors": self.pack({"size": self.geometry.size,
                                                 "distance": self.geometry.distance}),
                           "shard_number": 1, "replication_factor": 1,
                           "write_consistency_factor": 1, "on_disk_payload": True},
                "hnsw_config": {"m": 0, "ef_construct": 0, "full_scan_threshold": 0},
                "optimizer_config": {"default_segment_number": 1, "flush_interval_sec": 0},
                "wal_config": {"wal_capacity_mb": 64, "wal_segments_ahead": 0},
                "quantization_config": None}}


def _last_argmax(x: np.ndarray) -> int:
    return int(len(x) - 1 - np.argmax(x[::-1]))


def _swap_remove(items: list, i: int):
    items[i], items[-1] = items[-1], items[i]
    return items.pop()


def read_config(path: Path) -> dict:
    return json.loads((path / CONFIG).read_text())


class NotFound(LookupError):
    """Qdrant's "Not found": a collection or point that is not there."""
