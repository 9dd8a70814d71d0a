"""Typed errors of the HTTP client: each carries the server's HTTP status, envelope code and message,
and is also the engine's own exception where one fits (NotFound, InvalidRequest, ...), so code
written against `Executor` catches the same classes from `Client`."""

from __future__ import annotations

from ..errors import ActionRejected, DiskFull, EngineBusy, InvalidRequest, NotFound, OsreapiError, TaskActive, TaskConflict


class ConnectionFailed(OsreapiError):
    """No answer: refused, timed out, TLS failure, or a body that is not the envelope. `retry`:
    the connection was refused or cut (a server restarting), so asking again may succeed."""

    def __init__(self, text: str, retry: bool = False) -> None:
        super().__init__(text)
        self.retry = retry


class ServerError(OsreapiError):
    """The server answered with an error envelope."""

    def __init__(self, status: int, code: int, message: str) -> None:
        # Not super(): the engine's classes mixed in below take their own arguments.
        Exception.__init__(self, f"{message} (HTTP {status}, code {code})")
        self.status = status
        self.code = code
        self.message = message


class RemoteNotFound(ServerError, NotFound):
    """404 / 1003: no such task or step (or it expired)."""


class RemoteInvalidRequest(ServerError, InvalidRequest):
    """400 on a submission or a query (416: a log offset past the output's end): nothing was run."""


class RemoteActionRejected(ServerError, ActionRejected):
    """400 on kill / pause / resume: the action does not apply now."""


class RemoteBusy(ServerError, EngineBusy):
    """429 or 503: try again later."""


class Unauthorized(ServerError):
    """401 (missing or wrong token) or 403 (a remote client without a token)."""


class Conflict(ServerError):
    """409: the id is taken by a different body (submit), or the task still runs (delete)."""


class RemoteTaskConflict(Conflict, TaskConflict):
    """409 on submit: the id names a task with a different body; nothing ran."""


class RemoteTaskActive(Conflict, TaskActive):
    """409 on delete: the task has not ended."""


class TooLarge(ServerError):
    """413: the body is over the server's --max_body."""


class StorageFull(ServerError, DiskFull):
    """507: the server's disk is full; nothing was accepted."""


_BY_STATUS: dict[int, type[ServerError]] = {
    400: RemoteInvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: RemoteNotFound,
    409: Conflict,
    413: TooLarge,
    416: RemoteInvalidRequest,  # a log offset past the end of the output
    429: RemoteBusy,
    503: RemoteBusy,
    507: StorageFull,
}


def error_for(
    status: int, code: int, message: str, overrides: dict[int, type[ServerError]] | None = None
) -> ServerError:
    """The exception for an error answer; `overrides` says what a status means on one route
    (400 on a control action: rejected; 409 on delete: still running)."""
    kind = (overrides or {}).get(status) or _BY_STATUS.get(status, ServerError)
    return kind(status, code, message)


ON_SUBMIT = {409: RemoteTaskConflict}
ON_CONTROL = {400: RemoteActionRejected}
ON_DELETE = {409: RemoteTaskActive}
