"""Backend registry: names -> modules, imported lazily.

Resolution order for the backend to use:

1. the ``backend=`` argument of the call;
2. the ``M2M_BACKEND`` environment variable;
3. ``auto``: ``cuda`` if it works, then ``vulkan`` on a real GPU, then ``cpu``. A CPU Vulkan
   driver (lavapipe, SwiftShader) is never picked by ``auto``; ask for ``vulkan`` by name.

A backend asked for by name that cannot run raises :class:`BackendUnavailableError` saying
why; it is never silently replaced. Only ``auto`` chooses, and it logs what it chose and why.

Each backend module exposes ``probe() -> BackendInfo`` (never raises, imports its library
only when called) and ``create(info) -> Backend``.
"""

from __future__ import annotations

import importlib
import logging
import os

from ..errors import BackendUnavailableError, UnknownBackendError
from ..locking import ForkSafeLock
from .base import Backend, BackendInfo, TransferStats

__all__ = [
    "Backend",
    "BackendInfo",
    "TransferStats",
    "NAMES",
    "AUTO_ORDER",
    "probe",
    "probe_all",
    "resolve_name",
    "get_backend",
    "auto_choice",
]

log = logging.getLogger("m2m_gpu")

_MODULES = {
    "cpu": "m2m_gpu.backends.cpu",
    "cuda": "m2m_gpu.backends.cuda",
    "vulkan": "m2m_gpu.backends.vulkan",
}
NAMES: tuple[str, ...] = tuple(_MODULES)
AUTO_ORDER: tuple[str, ...] = ("cuda", "vulkan", "cpu")
ENV_VAR = "M2M_BACKEND"

_lock = ForkSafeLock(reentrant=True)
_probes: dict[str, BackendInfo] = {}
_instances: dict[str, Backend] = {}
_auto: tuple[str, str] | None = None
_left_in_parent: list[Backend] = []  # device backends a forked child inherited (unused)


def _module(name: str):
    if name not in _MODULES:
        raise UnknownBackendError(
            f"unknown backend {name!r}; known backends: {', '.join(NAMES)} (or 'auto')"
        )
    return importlib.import_module(_MODULES[name])


def probe(name: str, *, refresh: bool = False) -> BackendInfo:
    """Whether backend ``name`` can run here, and what it would run on. Cached per process."""
    with _lock:
        if refresh or name not in _probes:
            try:
                _probes[name] = _module(name).probe()
            except UnknownBackendError:
                raise
            except Exception as exc:  # a probe must never take the caller down
                _probes[name] = BackendInfo(name, False, f"probe failed: {exc!r}")
        return _probes[name]


def probe_all(*, refresh: bool = False) -> list[BackendInfo]:
    return [probe(n, refresh=refresh) for n in NAMES]


def auto_choice() -> tuple[str, str]:
    """The backend ``auto`` picks here, and a sentence saying why."""
    global _auto
    with _lock:
        if _auto is None:
            skipped = []
            for name in AUTO_ORDER:
                info = probe(name)
                if not info.available:
                    skipped.append(f"{name}: {info.reason}")
                    continue
                if name == "vulkan" and info.device_type != "gpu":
                    skipped.append(
                        f"vulkan: device {info.device!r} is a {info.device_type or 'non-GPU'} "
                        "driver (used only when asked for by name)"
                    )
                    continue
                why = f"auto chose {name!r} ({info.device})"
                if skipped:
                    why += "; skipped " + "; ".join(skipped)
                _auto = (name, why)
                log.info("m2m_gpu: %s", why)
                break
        return _auto


def resolve_name(name: str | None = None) -> str:
    """Apply the resolution order (argument, ``M2M_BACKEND``, auto) and return a name."""
    if isinstance(name, Backend):
        return name.name
    if name is None or name == "":
        name = os.environ.get(ENV_VAR, "").strip() or "auto"
    name = name.lower()
    if name == "auto":
        return auto_choice()[0]
    if name not in _MODULES:
        raise UnknownBackendError(
            f"unknown backend {name!r}; known backends: {', '.join(NAMES)} (or 'auto')"
        )
    return name


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend instance for ``name`` (see the resolution order), created once per process."""
    if isinstance(name, Backend):
        return name
    resolved = resolve_name(name)
    with _lock:
        backend = _instances.get(resolved)
        if backend is None:
            info = probe(resolved)
            if not info.available:
                raise BackendUnavailableError(
                    f"backend {resolved!r} is not available: {info.reason}"
                )
            backend = _module(resolved).create(info)
            _instances[resolved] = backend
        return backend


def _after_fork_in_child() -> None:
    """A forked child keeps the cpu backend (its pool is rebuilt by the backend itself) but
    not the device backends: a CUDA context or a Vulkan device does not survive fork, so
    the child makes its own on first use. The registry's lock is made anew (another thread
    may have held it at the fork)."""
    global _lock, _auto
    _lock = ForkSafeLock(reentrant=True)
    if "cuda" in _instances or (_probes.get("cuda") and _probes["cuda"].available):
        # CUDA cannot be initialised again in a child forked after the parent used it
        _probes["cuda"] = BackendInfo("cuda", False, "CUDA was initialised before this "
                                      "process was forked; use the spawn start method")
        _auto = None
    for name in [n for n in _instances if n != "cpu"]:
        # kept referenced, never destroyed here: tearing down the parent's device from the
        # child (a Vulkan device whose driver threads stayed in the parent) can hang
        _left_in_parent.append(_instances.pop(name))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _reset_for_tests() -> None:
    """Forget probes, instances and the auto choice (tests change the environment)."""
    global _auto
    with _lock:
        _probes.clear()
        _instances.clear()
        _auto = None
