"""m2m-gpu: GPU compute kernels for Gaussian-splat vector memory.

``import m2m_gpu`` is cheap: it imports NumPy and nothing else heavy. CuPy and Kompute are
imported only when the cuda or vulkan backend is first probed or used.
"""

from __future__ import annotations

from .backends import get_backend, probe_all
from .errors import (
    BackendUnavailableError,
    DeviceMemoryError,
    GridLimitError,
    IntegrityError,
    InvalidInputError,
    M2MError,
    StoreFormatError,
    StoreLockedError,
    UnknownBackendError,
    UnknownIdError,
    UnknownMetricError,
)
from .hrm2 import IndexHRM2
from .idmap import IndexIDMap
from .index import IndexFlat, IndexFlatCosine, IndexFlatIP, IndexFlatL2, normalize_L2
from .inputs import METRIC_INNER_PRODUCT, METRIC_L2
from .kmeans import kmeans
from .knn import knn
from .serialize import deserialize_index, read_index, serialize_index, write_index
from .splat import energy, splat_topk
from .store import DecayReport, SearchResult, SplatStore
from .synthetic import synthetic
from .tensor import DeviceArray, tensor
from .text import TextMemory
from .tiers import TierOptions

__version__ = "0.1.0"

__all__ = [
    "TierOptions",
    "knn",
    "splat_topk",
    "energy",
    "synthetic",
    "SplatStore",
    "SearchResult",
    "DecayReport",
    "IndexFlat",
    "IndexFlatL2",
    "IndexFlatIP",
    "IndexFlatCosine",
    "IndexIDMap",
    "TextMemory",
    "METRIC_INNER_PRODUCT",
    "METRIC_L2",
    "normalize_L2",
    "write_index",
    "read_index",
    "serialize_index",
    "deserialize_index",
    "IndexHRM2",
    "kmeans",
    "DeviceArray",
    "tensor",
    "get_backend",
    "info",
    "M2MError",
    "BackendUnavailableError",
    "DeviceMemoryError",
    "InvalidInputError",
    "UnknownBackendError",
    "UnknownMetricError",
    "UnknownIdError",
    "StoreFormatError",
    "StoreLockedError",
    "IntegrityError",
    "GridLimitError",
    "__version__",
]


def info() -> dict:
    """Every backend: available or not and why, device, library and driver versions,
    and the backend that ``auto`` would pick here."""
    from .backends import auto_choice

    name, why = auto_choice()
    return {
        "version": __version__,
        "backends": [b.as_dict() for b in probe_all()],
        "auto": {"backend": name, "reason": why},
    }
