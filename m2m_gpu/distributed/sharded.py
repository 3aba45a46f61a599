"""``ShardedStore``: N Ray actors, each owning one durable SplatStore, behind the
SplatStore API.

    store = ShardedStore(384, shards=4, path="/data/mem")    # starts a local Ray instance
    store.add(vectors, ids=ids, metadata=meta)               # split per shard, in parallel
    store.search(queries, k=10)                              # exact merge of every shard's top-k
    ShardedStore.open("/data/mem")                           # a new driver: every shard reopens

- **Placement:** an id lives on shard ``blake2b(id) mod N`` (``placement.shard_of``): stable
  across processes and machines. Upserts, deletes, gets and feedback go to the owner.
- **Search:** each shard returns its exact top-k; the merge orders by the ranking key
  (``log_score`` for ``rank="splat"``, ``d2`` for ``"distance"``), ties by the id
  (integers ascending, then strings): the global rule. A single store breaks ties by slot
  instead, so the two agree wherever scores differ.
- **Energy:** ``E = -log sum_s exp(-E_s)`` (a stable log-sum-exp over the shards' energies),
  the gradient ``sum_s softmax(-E)_s grad_s``: exactly one store's energy over the union.
- **Feedback:** a batch is cut into per-shard batches that keep the event order, so every
  splat sees its events in the same order as in one store: the same result. Unknown ids
  raise before any shard changes.
- **Faults:** a dead shard actor is restarted by Ray (``max_restarts``) and reopens its
  directory. Idempotent calls (reads, upserts, deletes, decay to a time, consolidation,
  checkpoints) are resent once the shard answers again; ``feedback`` is not idempotent and
  raises :class:`ShardUnavailableError` instead (the updates of other shards stand).
- **Not as one store:** consolidation and dedup work within a shard, so near-duplicates
  with ids on different shards are not merged; a batch that fails on one shard (a dead
  actor, after validation here) may stand on the others: re-send it (upserts are
  idempotent).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, M2MError, UnknownIdError
from ..store.args import check_id, check_ids, check_metadata, id_list, per_event
from ..store.results import EnergyResult, SearchResult
from .placement import id_order, shard_of
from .shard import Shard

MANIFEST = "sharded.json"
RETRY_SECONDS = 60.0  # how long an idempotent call waits for a restarted shard


class ShardUnavailableError(M2MError, RuntimeError):
    """A shard died during a call that is not resent (feedback), or did not come back."""


class ShardedStore:
    def __init__(self, dim: int, shards: int = 2, path: str | os.PathLike | None = None,
                 metric: str = "cosine", backend: str | None = None,
                 address: str | None = None, max_restarts: int = -1,
                 **store_options: Any) -> None:
        if path is None:
            raise InvalidInputError("a ShardedStore needs path=: each shard reopens its "
                                    "directory when Ray restarts it")
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise InvalidInputError(f"shards must be a positive int, got {shards!r}")
        root = Path(path)
        if (root / MANIFEST).exists():
            raise InvalidInputError(f"{root} already holds a sharded store: "
                                    "use ShardedStore.open")
        root.mkdir(parents=True, exist_ok=True)
        spec = {"format": 1, "dim": int(dim), "shards": shards, "metric": metric,
                "options": store_options}
        self._start(root, spec, backend, address, max_restarts)
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(spec, indent=1))
        os.replace(tmp, root / MANIFEST)

    @classmethod
    def open(cls, path: str | os.PathLike, backend: str | None = None,
             address: str | None = None, max_restarts: int = -1) -> ShardedStore:
        root = Path(path)
        spec = json.loads((root / MANIFEST).read_text())
        self = cls.__new__(cls)
        self._start(root, spec, backend, address, max_restarts)
        return self

    def _start(self, root: Path, spec: dict, backend, address, max_restarts) -> None:
        import ray

        self.path, self.dim, self.metric = root, spec["dim"], spec["metric"]
        self.n = spec["shards"]
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if address is not None:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                         log_to_driver=False)
        gpus = ray.cluster_resources().get("GPU", 0)
        cpus = ray.cluster_resources().get("CPU", 1)
        actor = ray.remote(Shard).options(
            max_restarts=max_restarts, max_task_retries=0,
            num_gpus=1 if gpus >= 1 else 0,  # one GPU per shard where there are GPUs
            num_cpus=min(1.0, cpus / self.n))  # every shard placed even on 2 CPUs
        self._actors = [actor.remote(str(root / f"shard-{i}"), self.dim, self.metric,
                                     backend, spec.get("options", {}))
                        for i in range(self.n)]
        ray.get([a.ping.remote() for a in self._actors])

    # ---- calling shards ---------------------------------------------------------------------
    def _call(self, shards: list[int], method: str, args: list[tuple],
              resend: bool = True) -> list:
        """``method(*args[j])`` on shard ``shards[j]``, all at once; the answers in order."""
        import ray
        from ray.exceptions import RayActorError

        refs = [getattr(self._actors[s], method).remote(*a) for s, a in zip(shards, args,
                                                                           strict=True)]
        out: list = [None] * len(refs)
        for j, ref in enumerate(refs):
            try:
                out[j] = ray.get(ref)
            except RayActorError as exc:
                if not resend:
                    raise ShardUnavailableError(
                        f"shard {shards[j]} died during {method}; not resent ({method} is "
                        "not idempotent): check what stands with get()") from exc
                out[j] = self._resend(shards[j], method, args[j], exc)
        return out

    def _resend(self, shard: int, method: str, args: tuple, first: Exception):
        import ray
        from ray.exceptions import RayActorError

        deadline = time.monotonic() + RETRY_SECONDS
        while time.monotonic() < deadline:
            try:
                return ray.get(getattr(self._actors[shard], method).remote(*args))
            except RayActorError:
                time.sleep(0.2)  # restarting: Ray reopens the directory
        raise ShardUnavailableError(f"shard {shard} did not come back within "
                                    f"{RETRY_SECONDS:.0f} s for {method}") from first

    def _all(self, method: str, *args, resend: bool = True) -> list:
        return self._call(list(range(self.n)), method, [args] * self.n, resend)

    def _split(self, ids: list) -> dict[int, list[int]]:
        """Positions of ``ids`` per owning shard."""
        parts: dict[int, list[int]] = {}
        for pos, i in enumerate(ids):
            parts.setdefault(shard_of(i, self.n), []).append(pos)
        return parts

    # ---- writing ----------------------------------------------------------------------------
    def _vectors(self, vectors: Any, what: str = "vectors") -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidInputError(f"{what} must have shape (n, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise InvalidInputError(f"{what} hold NaN or inf")
        if self.metric == "cosine" and (np.linalg.norm(x, axis=1) == 0).any():
            raise InvalidInputError(f"{what} hold a zero vector, which has no direction "
                                    "under cosine")
        return np.ascontiguousarray(x)

    def add(self, vectors: Any, ids: Any = None, metadata: Any = None) -> list:
        """Upsert; ``ids=None`` generates UUID hex strings (unique across shards)."""
        x = self._vectors(vectors)
        ids = check_ids([uuid.uuid4().hex for _ in range(len(x))] if ids is None else ids,
                        len(x))
        meta = check_metadata(metadata, len(x))
        parts = self._split(ids)
        self._call(list(parts), "add", [(x[p], [ids[j] for j in p], [meta[j] for j in p])
                                        for p in parts.values()])
        return ids

    def delete(self, ids: Any = None, *, filter: dict | None = None) -> int:
        if (ids is None) == (filter is None):
            raise InvalidInputError("delete takes ids or filter=, not both and not neither")
        if filter is not None:
            return sum(self._all("delete", None, filter))
        ids = [check_id(i) for i in id_list(ids)]
        parts = self._split(ids)
        return sum(self._call(list(parts), "delete", [([ids[j] for j in p], None)
                                                      for p in parts.values()]))

    def feedback(self, queries: Any, relevant: Any = None, irrelevant: Any = None) -> int:
        """Hebbian feedback by id, as SplatStore.feedback: one event, or a batch applied in
        row order. Not resent after a shard death (see the module's notes)."""
        single = np.ndim(queries) == 1
        q = self._vectors(queries, "queries")
        rel = [[check_id(i) for i in row] for row in
               per_event(relevant, q.shape[0], single, "relevant")]
        irr = [[check_id(i) for i in row] for row in
               per_event(irrelevant, q.shape[0], single, "irrelevant")]
        for row, (r, i) in enumerate(zip(rel, irr, strict=True)):
            both = set(r) & set(i)
            if both:  # one store refuses this before any change: so do all shards
                raise InvalidInputError(f"event {row}: ids {sorted(both, key=id_order)} are "
                                        "both relevant and irrelevant")
        every = sorted({i for row in rel + irr for i in row}, key=id_order)
        missing = [i for i, here in zip(every, self._present(every), strict=True) if not here]
        if missing:
            raise UnknownIdError(f"feedback names ids this store does not hold: {missing[:5]}")
        per_shard: dict[int, tuple[list, list, list]] = {}
        for row in range(q.shape[0]):
            for s in {shard_of(i, self.n) for i in rel[row] + irr[row]}:
                rows, r, i = per_shard.setdefault(s, ([], [], []))
                rows.append(row)
                r.append([x for x in rel[row] if shard_of(x, self.n) == s])
                i.append([x for x in irr[row] if shard_of(x, self.n) == s])
        if not per_shard:
            return 0
        self._call(list(per_shard), "feedback", [(q[rows], r, i) for rows, r, i in
                                                 per_shard.values()], resend=False)
        return q.shape[0]  # as one store counts: every event of a batch that changed any

    def decay(self, now: float, *, force: bool = False) -> dict:
        reps = self._all("decay", now, force)
        return {"elapsed": reps[0]["elapsed"], "factor": reps[0]["factor"],
                "pruned": [i for r in reps for i in r["pruned"]]}

    def consolidate(self) -> dict:
        reps = self._all("consolidate")
        return {"pruned": [i for r in reps for i in r["pruned"]],
                "merged": [m for r in reps for m in r["merged"]],
                "before": sum(r["before"] for r in reps), "after": sum(r["after"] for r in reps)}

    def checkpoint(self) -> None:
        self._all("checkpoint")

    # ---- reading ----------------------------------------------------------------------------
    def _by_id(self, method: str, ids: list) -> list:
        """``method(ids on the shard)`` on every owning shard; one answer per id, in order."""
        parts, out = self._split(ids), [None] * len(ids)
        answers = self._call(list(parts), method, [([ids[j] for j in p],)
                                                   for p in parts.values()])
        for p, got in zip(parts.values(), answers, strict=True):
            for j, one in zip(p, got, strict=True):
                out[j] = one
        return out

    def _present(self, ids: list) -> list[bool]:
        return self._by_id("present", ids)

    def get(self, ids: Any) -> list[dict | None]:
        return self._by_id("get", [check_id(i) for i in id_list(ids)])

    def __len__(self) -> int:
        return sum(self._all("count"))

    def __contains__(self, id_: Any) -> bool:
        try:
            id_ = check_id(id_)
        except InvalidInputError:
            return False  # not an id: not held
        return self._present([id_])[0]

    def ids(self, filter: dict | None = None) -> list:
        """Every id (matching ``filter``), in the global order: integers, then strings."""
        return sorted((i for part in self._all("ids", filter) for i in part), key=id_order)

    def search(self, queries: Any, k: int = 10, filter: dict | None = None,
               rank: str = "splat", exact: bool = False) -> SearchResult:
        """Each shard's exact top-k, merged: by the ranking key, ties by id."""
        if rank not in ("splat", "distance"):
            raise InvalidInputError(f"rank must be 'splat' or 'distance', got {rank!r}")
        q = self._vectors(queries, "queries")
        parts = self._all("search", q, k, filter, rank, exact)
        out_ids, cols, metas = [], {"scores": [], "log_scores": [], "distances": []}, []
        by = "log_scores" if rank == "splat" else "distances"
        sign = -1.0 if rank == "splat" else 1.0  # best first: high log-score, low d2
        for row in range(q.shape[0]):
            hits = sorted((sign * float(p[by][row][j]), id_order(i), s, j)
                          for s, p in enumerate(parts) for j, i in enumerate(p["ids"][row]))
            best = hits[:k]
            out_ids.append([parts[s]["ids"][row][j] for _, _, s, j in best])
            metas.append([parts[s]["metadata"][row][j] for _, _, s, j in best])
            for name in cols:
                cols[name].append([parts[s][name][row][j] for _, _, s, j in best])
        width = max((len(r) for r in out_ids), default=0)
        arrays = {n: np.array(v, np.float32).reshape(len(out_ids), width)
                  for n, v in cols.items()}
        return SearchResult(out_ids, arrays["scores"], arrays["log_scores"],
                            arrays["distances"], metas)

    def energy(self, queries: Any, grad: bool = False) -> EnergyResult:
        """``E = -log sum_s exp(-E_s)``: one store's energy over all the shards' splats."""
        q = self._vectors(queries, "queries")
        parts = self._all("energy", q, grad)
        E = np.stack([np.asarray(e, np.float64) for e, _ in parts])  # (shards, m)
        neg = -E
        top = np.max(neg, axis=0)
        finite = np.isfinite(top)
        total = np.full(q.shape[0], np.inf)
        w = np.zeros_like(E)
        if finite.any():
            shifted = np.exp(neg[:, finite] - top[finite])
            s = shifted.sum(0)
            total[finite] = -(top[finite] + np.log(s))
            w[:, finite] = shifted / s
        gradient = None
        if grad:
            g = np.stack([np.nan_to_num(np.asarray(gs, np.float64)) for _, gs in parts])
            gradient = np.einsum("sm,smd->md", w, g).astype(np.float32)
        with np.errstate(over="ignore"):
            confidence = 1.0 / (1.0 + np.exp(total))
        return EnergyResult(total.astype(np.float32), confidence.astype(np.float32), gradient)

    def stats(self) -> dict:
        per = self._all("stats")
        return {"count": sum(s["count"] for s in per), "shards": self.n,
                "restarts": sum(s["restarts"] for s in per),
                "per_shard": [{"count": s["count"], "restarts": s["restarts"],
                               "pid": s["pid"], "backend": s["backend"],
                               "device_bytes": s["device_bytes"]} for s in per]}

    # ---- the end ----------------------------------------------------------------------------
    def close(self) -> None:
        import ray

        if not getattr(self, "_actors", None):
            return
        try:
            self._all("close")
        finally:
            for a in self._actors:
                ray.kill(a, no_restart=True)
            self._actors = []
            if self._owns_ray:
                ray.shutdown()

    def __enter__(self) -> ShardedStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def kill_shard(self, shard: int) -> int:
        """Kill one shard's process (Ray restarts it): for fault tests. Its old pid."""
        import ray

        pid = self._call([shard], "ping", [()])[0]  # up (again) before it is killed
        ray.kill(self._actors[shard], no_restart=False)
        return pid
