"""Text memory for AI systems: :class:`TextMemory` (hybrid BM25 + vector search over a
SplatStore, feedback, decay, confidence) and its encoders."""

from .bm25 import BM25, tokens
from .encoders import (
    TruncatedTextWarning,
    hashed_encoder,
    minilm_encoder,
    resolve_encoder,
    sentence_transformer_encoder,
    transformer_encoder,
)
from .memory import TextMemory

__all__ = ["BM25", "TextMemory", "TruncatedTextWarning", "hashed_encoder", "minilm_encoder",
           "resolve_encoder", "sentence_transformer_encoder", "tokens", "transformer_encoder"]
