"""The portal's exceptions.

Every error the portal raises on purpose is a :class:`PortalError`. It keeps apart
what the user should read (``message``), a stable machine-readable ``code``, and what
only the log needs (``log_detail``). The REST layer maps each class to an HTTP status;
the UI turns the message into a toast. Nothing below ``api/`` knows about HTTP.
"""

from __future__ import annotations


class PortalError(Exception):
    """Root of the portal's errors.

    Args:
        message: Text for the user; must not contain secrets.
        code: Stable identifier of the kind of error, e.g. ``weak_password``.
        log_detail: Extra detail for the log only.
    """

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, log_detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.log_detail = log_detail


class InvalidInput(PortalError, ValueError):
    """The request is well-formed but its content is not acceptable."""

    code = "invalid_input"


class NotAuthenticated(PortalError):
    """No valid log-on or token came with the request."""

    code = "not_authenticated"


class PermissionDenied(PortalError):
    """The caller is known but may not do this."""

    code = "forbidden"


class NotFound(PortalError, LookupError):
    """The object does not exist, or the caller may not know that it exists."""

    code = "not_found"


class Conflict(PortalError):
    """The request clashes with the current state, e.g. a name already taken."""

    code = "conflict"


class TooLarge(PortalError):
    """An upload or field is larger than the configured limit."""

    code = "too_large"


class Unavailable(PortalError):
    """A backing service (database, storage) cannot be reached right now."""

    code = "unavailable"


class TooManyRequests(PortalError):
    """Refused for now because of what this caller did before (e.g. failed log-ons);
    ``retry_after`` says in how many seconds to try again."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Gone(PortalError):
    """The object has ended for good (e.g. a session that stopped)."""

    code = "gone"
