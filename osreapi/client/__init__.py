"""osreapi.client: drive one server (`Client`) or many (`Fleet`) over HTTP with the calls
`osreapi.Executor` offers in-process (see `osreapi.api.TaskRunner`)."""

from .client import DEFAULT_URL, Client
from .errors import (
    Conflict,
    ConnectionFailed,
    RemoteActionRejected,
    RemoteBusy,
    RemoteInvalidRequest,
    RemoteNotFound,
    RemoteTaskActive,
    RemoteTaskConflict,
    ServerError,
    StorageFull,
    TooLarge,
    Unauthorized,
)
from .fleet import Fleet, HostResult

__all__ = [
    "Client",
    "Fleet",
    "HostResult",
    "DEFAULT_URL",
    "ServerError",
    "ConnectionFailed",
    "RemoteNotFound",
    "RemoteInvalidRequest",
    "RemoteActionRejected",
    "RemoteBusy",
    "RemoteTaskActive",
    "RemoteTaskConflict",
    "Unauthorized",
    "Conflict",
    "TooLarge",
    "StorageFull",
]
