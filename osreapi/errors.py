"""The project's exception root and its small, named subclasses."""


class OsreapiError(Exception):
    """Root of every error osreapi raises on purpose."""


class InvalidValue(OsreapiError, ValueError):
    """A duration, size or other scalar setting could not be parsed."""


class InvalidRequest(OsreapiError):
    """A submission is malformed; the message names what and where."""


class EngineBusy(OsreapiError):
    """The engine did not answer within the configured timeout."""


class EngineClosed(OsreapiError):
    """The engine has been shut down."""


class NotFound(OsreapiError):
    """No such task or step (or it expired)."""


class ActionRejected(OsreapiError):
    """A control action does not apply to the task or step in its current state."""


class TaskActive(OsreapiError):
    """The task has not finished: it cannot be deleted (HTTP 409)."""


class TaskConflict(OsreapiError):
    """A task id is taken by a task with a different submission (HTTP 409)."""
