"""osreapi: a remote executor of scripts, sequential, parallel or as a DAG, with results in LMDB."""

from ._version import __version__
from .embed import Executor, Submitted, TaskResult
from .errors import EngineBusy, EngineClosed, InvalidRequest, InvalidValue, OsreapiError

__all__ = [
    "Executor",
    "Submitted",
    "TaskResult",
    "OsreapiError",
    "InvalidRequest",
    "InvalidValue",
    "EngineBusy",
    "EngineClosed",
    "__version__",
]
