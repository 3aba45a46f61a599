"""One shard: a Ray actor owning one durable SplatStore in its own directory.

The actor is restarted by Ray when its process dies (``max_restarts``); a restart runs
``__init__`` again, which reopens the directory: the last checkpoint plus the log, so every
write the shard acknowledged is there. Each restart is counted in a file beside the store.
Results leave the actor as plain arrays and lists (pickled by Ray).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

RESTARTS = "restarts"


class Shard:
    def __init__(self, path: str, dim: int, metric: str, backend: Any, options: dict) -> None:
        from ..store import SplatStore

        self.path = Path(path)
        if (self.path / "manifest.json").exists():
            self.store = SplatStore.open(self.path, backend=backend)
        else:
            self.store = SplatStore(dim, metric=metric, backend=backend, path=self.path,
                                    **options)
        self.restarts = self._count_restart()

    def _count_restart(self) -> int:
        import ray

        f = self.path.parent / f"{self.path.name}.{RESTARTS}"
        n = int(f.read_text()) if f.exists() else 0
        if ray.get_runtime_context().was_current_actor_reconstructed:
            n += 1
            tmp = f.with_suffix(".tmp")
            tmp.write_text(str(n))
            os.replace(tmp, f)
        return n

    # ---- calls ------------------------------------------------------------------------------
    def ping(self) -> int:
        return os.getpid()

    def add(self, vectors: np.ndarray, ids: list, metadata: list[dict]) -> list:
        return self.store.add(vectors, ids=ids, metadata=metadata)

    def present(self, ids: list) -> list[bool]:
        return [r is not None for r in self.store.get(ids)]

    def get(self, ids: list) -> list:
        return self.store.get(ids)

    def delete(self, ids: list | None, filt: dict | None) -> int:
        if filt is not None:
            return self.store.delete(filter=filt)
        return self.store.delete(ids)

    def ids(self, filt: dict | None) -> list:
        return self.store.ids(filter=filt)

    def count(self) -> int:
        return len(self.store)

    def search(self, queries: np.ndarray, k: int, filt: dict | None, rank: str,
               exact: bool) -> dict:
        res = self.store.search(queries, k=k, filter=filt, rank=rank, exact=exact)
        return {"ids": res.ids, "scores": res.scores, "log_scores": res.log_scores,
                "distances": res.distances, "metadata": res.metadata}

    def energy(self, queries: np.ndarray, grad: bool) -> tuple:
        res = self.store.energy(queries, grad=grad)
        return res.energy, res.gradient

    def feedback(self, queries: np.ndarray, relevant: list, irrelevant: list) -> int:
        return self.store.feedback(queries, relevant=relevant, irrelevant=irrelevant)

    def decay(self, now: float, force: bool) -> dict:
        rep = self.store.decay(now, force=force)
        return {"elapsed": rep.elapsed, "factor": rep.factor, "pruned": rep.pruned}

    def consolidate(self) -> dict:
        rep = self.store.consolidate()
        return {"pruned": list(rep.pruned), "merged": [tuple(p) for p in rep.merged],
                "rounds": rep.rounds, "before": rep.before, "after": rep.after}

    def stats(self) -> dict:
        return {**self.store.stats(), "restarts": self.restarts, "pid": os.getpid()}

    def checkpoint(self) -> None:
        self.store.checkpoint()

    def close(self) -> None:
        self.store.close()
