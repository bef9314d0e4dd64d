"""What the domain refuses, said in its own terms: the kind of refusal, a stable `code`,
a message for the user and the request part at fault (`param`).

The domain knows nothing of HTTP; service/http_errors.py maps each kind to its status.
"""


class DomainError(Exception):
    """A request the domain (or the serving layer, service/inference/) refuses: the client's
    doing, or (Unavailable) a load it cannot take now; never a fault of ours."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class NotFound(DomainError):
    """No such object for this caller (another owner's is as unknown as a made-up id)."""


class Invalid(DomainError):
    """Well-formed but not acceptable: a bad value, a damaged file, a reused key."""


class Conflict(DomainError):
    """Acceptable, but not in the object's present state (in use, in progress)."""


class TooLarge(DomainError):
    """Past a size limit or a storage quota."""


class Unsupported(DomainError):
    """A file type the service does not read."""


class Retryable(DomainError):
    """A refusal that may pass later: the client is told to retry after `retry_after_s`."""

    def __init__(self, code: str, message: str, param: str | None = None, *,
                 retry_after_s: int | None = None) -> None:
        super().__init__(code, message, param)
        self.retry_after_s = retry_after_s


class LimitReached(Retryable):
    """Too many things at once (e.g. active jobs) for this caller."""


class Unavailable(Retryable):
    """The service cannot take this now, whoever asks (e.g. a model's queue is full)."""


def not_found(kind: str, id_: str) -> NotFound:
    return NotFound("not_found", f"no {kind} with id {id_!r}")
