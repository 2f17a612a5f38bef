"""carseg's exceptions: each carries the library's one-line message and its status."""

from . import _lib


class Error(Exception):
    """Base of every error carseg raises itself. `status` is the library's carseg_status."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class FileError(Error, OSError):
    """A file could not be opened, read or written (CARSEG_EIO)."""


class FormatError(Error, ValueError):
    """A file or buffer is malformed: weights, vocabulary, image, RLE (CARSEG_EFORMAT)."""


class ModelError(Error, ValueError):
    """Weights lack a tensor, have an unexpected shape or are not the right kind (CARSEG_EMODEL)."""


class InvalidArgument(Error, ValueError):
    """A bad argument or option (CARSEG_EINVAL)."""


class OutOfMemory(Error, MemoryError):
    """An allocation failed (CARSEG_ENOMEM)."""


class NetworkError(Error, OSError):
    """A download failed: no network, HTTP error, checksum mismatch (CARSEG_ENET)."""


_BY_STATUS = {_lib.EIO: FileError, _lib.EFORMAT: FormatError, _lib.EMODEL: ModelError,
              _lib.ENOMEM: OutOfMemory, _lib.EINVAL: InvalidArgument, _lib.ENET: NetworkError}


def check(st, what=None):
    """Raises the exception of a non-zero carseg_status with the library's message."""
    if st == _lib.OK:
        return
    msg = (_lib.last_error() or b"").decode("utf-8", "replace")
    if not msg:
        msg = _lib.status_str(st).decode()
    if what:
        msg = "%s: %s" % (what, msg)
    raise _BY_STATUS.get(st, Error)(msg, st)
