"""Thread safety of the user-facing objects: one reader-writer lock per object.

The model (README, "Threads and processes"): searches and other reads of one object run
side by side; writes are serialised and exclude reads, so the log order is the apply
order and tier placement never moves rows under a running search. A thread that holds the
write lock may read or write again (writes call reads); a reader may read again, but may
not start a write (that would wait for itself): it raises ``RuntimeError``.

``@thread_safe`` on a class wraps every public method (and ``__len__``, ``__contains__``,
``__iter__``) to hold the object's lock: the write lock, or the read lock for methods
marked ``@shared``; then, for an object with a ``backend``, that backend's
``device_lock`` (a real lock on GPU backends, whose queue one thread uses at a time; none
on cpu). Always in this order: object, then device. Methods marked ``@unlocked`` manage
the locks themselves (a search that runs under the read lock and then, outside it, a
placement pass under the write lock).

Locks are made anew in a forked child, where a thread that held one at the fork does not
exist.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref

_objects: weakref.WeakSet = weakref.WeakSet()
_registry_lock = threading.Lock()
_SPECIAL = ("__len__", "__contains__", "__iter__")


class RWLock:
    """A writer-preferring reader-writer lock, re-entrant as described in the module."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # entered directly: the uncontended path is short
        self._cond = threading.Condition(self._mutex)
        self._readers: dict[int, int] = {}  # thread id -> read depth
        self._writer: int | None = None
        self._write_depth = 0
        self._writers_waiting = 0

    def read(self) -> _Held:
        """``with lock.read():`` (see :class:`holding` for an object's locks)."""
        return _Held(self, "read")

    def write(self) -> _Held:
        """``with lock.write():``."""
        return _Held(self, "write")

    def acquire_read(self) -> bool:
        """Take the read lock; True when this thread holds the write lock (nothing was
        taken: pass the flag to :meth:`release_read`)."""
        me = threading.get_ident()
        with self._mutex:
            if self._writer == me:  # a writer reading: it already excludes everyone
                return True
            depth = self._readers.get(me)
            if depth is not None:  # re-entry: never wait for a queued writer
                self._readers[me] = depth + 1
                return False
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers[me] = 1
            return False

    def release_read(self, nested: bool) -> None:
        if nested:
            return
        me = threading.get_ident()
        with self._mutex:
            depth = self._readers[me] - 1
            if depth:
                self._readers[me] = depth
            else:
                del self._readers[me]
                if not self._readers and self._writers_waiting:  # only writers wait
                    self._cond.notify_all()  # for the readers to leave

    def acquire_write(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            if self._writer == me:
                self._write_depth += 1
                return
            if me in self._readers:
                raise RuntimeError("a thread holding the read lock cannot start a write "
                                   "(it would wait for itself)")
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            except BaseException:  # gave up waiting (an interrupt): readers queued
                self._writers_waiting -= 1  # behind this writer may go now
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer, self._write_depth = me, 1

    def release_write(self) -> None:
        with self._mutex:
            self._write_depth -= 1
            if not self._write_depth:
                self._writer = None
                self._cond.notify_all()

    def holds_write(self) -> bool:
        return self._writer == threading.get_ident()


class ForkSafeLock:
    """A ``threading.Lock`` (``reentrant``: ``RLock``) made anew in a forked child: a
    thread that held it at the fork does not exist there, and the child would wait for it
    forever. Every internal lock of the package is one of these."""

    def __init__(self, reentrant: bool = False) -> None:
        self._reentrant = reentrant
        self._lock = self._new()
        _fork_locks.add(self)

    def _new(self):
        return threading.RLock() if self._reentrant else threading.Lock()

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


class DeviceLock(ForkSafeLock):
    """A re-entrant lock around one device's queue (``Backend.device_lock``)."""

    def __init__(self) -> None:
        super().__init__(reentrant=True)


_fork_locks: weakref.WeakSet = weakref.WeakSet()


def lock_of(obj) -> RWLock:
    """The object's lock, made on first use."""
    lock = obj.__dict__.get("_thread_lock")
    if lock is None:
        with _registry_lock:
            lock = obj.__dict__.get("_thread_lock")
            if lock is None:
                lock = obj.__dict__["_thread_lock"] = RWLock()
                _objects.add(obj)
    return lock


def shared(method):
    """Mark a method of a ``@thread_safe`` class as a read: it runs under the read lock."""
    method._m2m_lock = "read"
    return method


def unlocked(method):
    """Mark a method of a ``@thread_safe`` class that takes the lock itself."""
    method._m2m_lock = None
    return method


def _guard(method, kind: str):
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with holding(self, kind):
            return method(self, *args, **kwargs)

    return locked


class _Held:
    """One hold of an :class:`RWLock` (``kind`` "read" or "write"), as a context manager:
    a plain class, not a generator, since every locked call enters one."""

    __slots__ = ("_rw", "_read", "_nested")

    def __init__(self, rw: RWLock, kind: str) -> None:
        self._rw, self._read, self._nested = rw, kind == "read", False

    def __enter__(self) -> None:
        if self._read:
            self._nested = self._rw.acquire_read()
        else:
            self._rw.acquire_write()

    def __exit__(self, *exc) -> None:
        if self._read:
            self._rw.release_read(self._nested)
        else:
            self._rw.release_write()


class holding(_Held):  # noqa: N801 - used as a function: ``with holding(obj, "read"):``
    """The object's lock (``kind`` "read" or "write"), then its backend's device lock
    (none on cpu); released in the other order. Entered on every locked call (a search
    of one query takes a few microseconds): ``_Held``'s steps are called directly, not
    through ``super()``."""

    __slots__ = ("_device",)

    def __init__(self, obj, kind: str = "write") -> None:
        _Held.__init__(self, lock_of(obj), kind)
        dev = getattr(getattr(obj, "backend", None), "device_lock", None)
        self._device = None if dev is None or type(dev) is contextlib.nullcontext else dev

    def __enter__(self) -> None:
        _Held.__enter__(self)
        if self._device is not None:
            try:
                self._device.__enter__()
            except BaseException:
                _Held.__exit__(self, None, None, None)
                raise

    def __exit__(self, *exc) -> None:
        try:
            if self._device is not None:
                self._device.__exit__(*exc)
        finally:
            _Held.__exit__(self, *exc)


def read_then_place(obj, read, due, place):
    """``read()`` under the read lock; then, if ``due()``, ``place()`` (a tier placement
    pass, which moves rows) under the write lock, checked again once it is held, so a
    placement never runs under a search."""
    with holding(obj, "read"):
        out = read()
    if due():
        with holding(obj, "write"):
            if due():
                place()
    return out


def thread_safe(cls):
    """Class decorator: every public method (and len / in / iter) holds the object's lock:
    the read lock for ``@shared`` methods, none for ``@unlocked`` ones, else the write
    lock. Properties and the constructor are left alone."""
    for name, value in list(vars(cls).items()):
        if callable(value) and not isinstance(value, (staticmethod, classmethod, type)) and \
                (not name.startswith("_") or name in _SPECIAL):
            kind = getattr(value, "_m2m_lock", "write")
            if kind is not None:
                setattr(cls, name, _guard(value, kind))
    return cls


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for obj in list(_objects):
        obj.__dict__["_thread_lock"] = RWLock()
    for lock in list(_fork_locks):
        lock._lock = lock._new()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
