"""Exceptions raised by m2m_gpu. Each names the problem; none leaves state half-changed."""


class M2MError(Exception):
    """Base class of every error m2m_gpu raises on purpose."""


class BackendUnavailableError(M2MError, RuntimeError):
    """A backend was asked for by name and cannot run here; the message says why."""


class UnknownBackendError(M2MError, ValueError):
    """A backend name that the registry does not know."""


class InvalidInputError(M2MError, ValueError):
    """Input of the wrong shape, dtype or value (NaN, inf, zero vector under cosine, ...)."""


class UnknownMetricError(InvalidInputError):
    """A metric other than 'l2', 'ip' or 'cosine'."""


class DeviceMemoryError(M2MError, MemoryError):
    """A device allocation failed; the message states the size asked for."""


class GridLimitError(M2MError, RuntimeError):
    """A kernel launch would put more workgroups on a grid dimension than the device
    allows: a driver forgot to split it (a bug of this library, never of the input)."""


class UnknownIdError(InvalidInputError, KeyError):
    """An external id that the store does not hold (feedback by id, for example)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreFormatError(M2MError, ValueError):
    """A store directory that cannot be opened: missing or corrupt files, a checksum that
    does not match, or a format version newer than this library."""


class StoreLockedError(M2MError, RuntimeError):
    """Another writer (this process or another) holds the store directory's lock."""


class IntegrityError(M2MError, RuntimeError):
    """``SplatStore.check_integrity`` found the store's parts disagreeing; the message
    lists what."""
