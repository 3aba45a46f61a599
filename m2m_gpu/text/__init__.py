"""Text memory for AI systems: :class:`TextMemory` (hybrid BM25 + vector search over a
SplatStore, feedback, decay, confidence)."""

from .bm25 import BM25, tokens
from .memory import TextMemory, hashed_encoder, minilm_encoder

__all__ = ["BM25", "TextMemory", "hashed_encoder", "minilm_encoder", "tokens"]
