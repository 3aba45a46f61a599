"""Thread safety of the user-facing objects: one re-entrant lock per object.

``@thread_safe`` on a class wraps every public method (and ``__len__``, ``__contains__``,
``__iter__``) so that it runs holding that object's lock: writes are serialised, the log
order is the apply order, and tier placement never moves rows under a running search.
Searches of one object therefore run one at a time; letting them run side by side (a
reader-writer lock, with the access bookkeeping and placement moved out of the read path)
is the next step. Locks are made anew in a forked child, where a thread that held one at
the fork does not exist.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref

_objects: weakref.WeakSet = weakref.WeakSet()
_registry_lock = threading.Lock()
_SPECIAL = ("__len__", "__contains__", "__iter__")


def lock_of(obj) -> threading.RLock:
    """The object's lock, made on first use."""
    lock = obj.__dict__.get("_thread_lock")
    if lock is None:
        with _registry_lock:
            lock = obj.__dict__.get("_thread_lock")
            if lock is None:
                lock = obj.__dict__["_thread_lock"] = threading.RLock()
                _objects.add(obj)
    return lock


def _guard(method):
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with lock_of(self):
            return method(self, *args, **kwargs)

    return locked


def thread_safe(cls):
    """Class decorator: every public method (and len / in / iter) holds the object's lock.
    Properties and the constructor are left alone."""
    for name, value in list(vars(cls).items()):
        if callable(value) and not isinstance(value, (staticmethod, classmethod, type)) and \
                (not name.startswith("_") or name in _SPECIAL):
            setattr(cls, name, _guard(value))
    return cls


def _after_fork_in_child() -> None:
    for obj in list(_objects):
        obj.__dict__["_thread_lock"] = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
