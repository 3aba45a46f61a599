"""One tensor API over every backend, and the conversions between callers' arrays.

:class:`DeviceArray` is a small device-array type: ``shape``, ``dtype``, ``backend``,
``.to(backend)``, ``.numpy()``, and DLPack (``__dlpack__``) where the backend's array library
supports it (cpu and cuda; Vulkan buffers have no DLPack form).

Kernels accept NumPy arrays, CuPy arrays, PyTorch tensors (CPU or CUDA) and DeviceArrays,
and give results back as the caller's type. An array already on the CUDA device (CuPy or
torch) is taken by DLPack without copying; every host <-> device copy goes through the
backend and is counted in ``backend.transfers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .errors import InvalidInputError


class DeviceArray:
    """An array living on one backend's device."""

    __slots__ = ("_backend", "data")

    def __init__(self, backend: Backend, data: Any) -> None:
        self._backend = backend
        self.data = data  # the backend's native array

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def numpy(self) -> np.ndarray:
        """A host copy (counted as device-to-host on GPU backends)."""
        return self._backend.to_host(self.data)

    def to(self, backend: str | Backend) -> DeviceArray:
        """This array on another backend: host round trip unless both sides share memory."""
        target = get_backend(backend)
        if target is self._backend:
            return self
        adopted = target.adopt(self.data)
        if adopted is not None:
            return DeviceArray(target, adopted)
        return DeviceArray(target, target.from_host(np.ascontiguousarray(self.numpy())))

    def __dlpack__(self, *args, **kwargs):
        if not hasattr(self.data, "__dlpack__"):
            raise BufferError(f"{self.backend} arrays have no DLPack form; use .numpy()")
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        if not hasattr(self.data, "__dlpack_device__"):
            raise BufferError(f"{self.backend} arrays have no DLPack form; use .numpy()")
        return self.data.__dlpack_device__()

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, backend={self.backend!r})"


def tensor(obj: Any, backend: str | Backend | None = None, dtype: Any = None) -> DeviceArray:
    """Put ``obj`` (NumPy, CuPy, torch, DeviceArray, nested lists) on ``backend``."""
    target = get_backend(backend)
    if isinstance(obj, DeviceArray):
        out = obj.to(target)
        return out if dtype is None else tensor(out.numpy().astype(dtype), target)
    staged, _ = stage(obj)
    if dtype is not None:
        staged = staged.astype(dtype, copy=False)
    return DeviceArray(target, to_native(target, staged))


# ---- callers' array types -------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """What the caller passed, so results go back in the same form."""

    kind: str  # "numpy", "cupy", "torch", "device"
    torch_device: Any = None
    backend: Backend | None = None


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def stage(obj: Any) -> tuple[Any, Caller]:
    """Turn a caller's array into a NumPy array (host) or a CuPy array (CUDA device),
    without copying when the memory allows it, and remember what the caller used."""
    if isinstance(obj, DeviceArray):
        data = obj.data
        if _module_of(data) in ("numpy", "cupy"):  # staged forms: host or CUDA memory
            return data, Caller("device", backend=obj._backend)
        return obj.numpy(), Caller("device", backend=obj._backend)
    mod = _module_of(obj)
    if mod == "cupy":
        return obj, Caller("cupy")
    if mod == "torch":
        t = obj.detach()
        if str(t.dtype) == "torch.bfloat16":  # NumPy and CuPy have no bfloat16: widen it
            t = t.float()
        if t.device.type == "cuda":
            import cupy  # only reached when the caller already uses CUDA tensors

            return cupy.from_dlpack(t), Caller("torch", torch_device=t.device)
        if t.device.type != "cpu":
            raise InvalidInputError(f"torch tensors on {t.device.type!r} are not supported")
        return t.numpy(), Caller("torch", torch_device=t.device)
    try:
        return np.asarray(obj), Caller("numpy")
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"cannot convert {type(obj).__name__} to an array: {exc}") from exc


def array_module(staged: Any):
    """``numpy`` or ``cupy``, whichever owns the staged array."""
    if isinstance(staged, np.ndarray):
        return np
    import cupy

    return cupy


def host_array(staged: Any, dtype: Any = None) -> np.ndarray:
    """A staged array (NumPy or CuPy) as a NumPy array (CuPy: copied down)."""
    return np.asarray(staged.get() if hasattr(staged, "get") else staged, dtype=dtype)


def to_native(backend: Backend, staged: Any) -> Any:
    """Hand a staged array to ``backend``: adopt device memory, else copy (counted)."""
    if isinstance(staged, np.ndarray):
        return backend.from_host(staged)
    adopted = backend.adopt(staged)
    if adopted is not None:
        return adopted
    # A CUDA array going to a host-side backend: copy it down through the cuda backend so
    # the copy is counted where it happens.
    cuda = get_backend("cuda")
    return backend.from_host(cuda.to_host(staged))


def to_caller(backend: Backend, native: Any, caller: Caller) -> Any:
    """Give a native result back in the caller's array type."""
    if caller.kind == "device":
        if not backend.is_native(native):  # e.g. Vulkan results, which come back to the host
            native = backend.from_host(native)
        return DeviceArray(backend, native)
    if caller.kind == "numpy":
        return backend.to_host(native)
    if caller.kind == "cupy":
        if _module_of(native) == "cupy":
            return native
        return get_backend("cuda").from_host(backend.to_host(native))
    if caller.kind == "torch":
        import torch

        if caller.torch_device.type == "cuda":
            if _module_of(native) == "cupy":
                return torch.from_dlpack(native)  # zero-copy
            host = torch.from_numpy(backend.to_host(native))
            return host.to(caller.torch_device)
        return torch.from_numpy(np.ascontiguousarray(backend.to_host(native)))
    raise AssertionError(caller.kind)
