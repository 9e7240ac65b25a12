"""The exceptions h5depot raises: one class per situation of the project's
error contract (docs/ARCHITECTURE.md, "Errors"), each also the standard
Python exception a caller would catch for it, so that ``except KeyError``
or ``except TimeoutError`` works as it reads."""


class Error(Exception):
    """Any failure of an h5depot call. ``code`` is the status code's name
    ("NOT_FOUND", ...), the same on every path; ``str(error)`` is the
    client's one-line message."""

    code = "UNKNOWN"

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self):
        return self.message


class InvalidArgument(Error, ValueError):
    """A malformed image id, an image that is not HDF5, a bad option."""

    code = "INVALID_ARGUMENT"


class NotFound(Error, KeyError):
    """No such image (or local file)."""

    code = "NOT_FOUND"


class Conflict(Error):
    """A conditional push or delete lost: the image exists already
    (``if_generation_match=0``) or another generation is current."""

    code = "ABORTED"


class FailedPrecondition(Error):
    """The call cannot be made in this state (e.g. a token sent over an
    unencrypted connection to another host)."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(Error, PermissionError):
    """The token is missing, unknown, or not allowed this image."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(Error):
    """The image is larger than the server takes, or its memory is full."""

    code = "RESOURCE_EXHAUSTED"


class Timeout(Error, TimeoutError):
    """A wait or a call ran out of time."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(Error, ConnectionError):
    """The server cannot be reached, or went away during the call."""

    code = "UNAVAILABLE"


class Finished(InvalidArgument):
    """The stream is finished and the reader group has had every step
    (Client.next); also an out-of-range request elsewhere."""

    code = "OUT_OF_RANGE"


class DataLoss(Error):
    """The bytes that arrived do not match the image's checksum."""

    code = "DATA_LOSS"


_CLASSES = {
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": Finished,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": Conflict,
    "ABORTED": Conflict,
    "FAILED_PRECONDITION": FailedPrecondition,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAUTHENTICATED": PermissionDenied,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "DEADLINE_EXCEEDED": Timeout,
    "UNAVAILABLE": Unavailable,
    "CANCELLED": Unavailable,
    "DATA_LOSS": DataLoss,
}


def _for_code(code, message):
    """The exception for a failed call with status ``code`` (its name)."""
    return _CLASSES.get(code, Error)(message, code)


def _from_driver_message(message):
    """The exception for an HDF5 error the remote driver caused: its
    message names the status code ("... (ABORTED: commit of image ...)"),
    as every message of the driver starts with it; None if it names
    none."""
    for code in _CLASSES:
        at = message.find(code + ": ")
        if at >= 0:
            return _for_code(code, message[at + len(code) + 2:].rstrip(")"))
    return None
