"""The one table of state words and messages, in both languages (CONTRACT §3.4)."""

from __future__ import annotations

from enum import Enum

LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"


class State(str, Enum):
    """A task's or a step's state; the value is the stored key."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    TIMEOUT = "timeout"
    KILLED = "killed"
    PAUSED = "paused"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    def word(self, lang: str = DEFAULT_LANGUAGE) -> str:
        return _STATE_WORDS[self][_lang_index(lang)]


_FINISHED = frozenset({State.STOPPED, State.TIMEOUT, State.KILLED, State.SKIPPED, State.INTERRUPTED})

_STATE_WORDS: dict[State, tuple[str, str]] = {
    State.PENDING: ("等待中", "pending"),
    State.RUNNING: ("执行中", "running"),
    State.STOPPED: ("已结束", "stopped"),
    State.TIMEOUT: ("执行超时", "timeout"),
    State.KILLED: ("已终止", "killed"),
    State.PAUSED: ("已暂停", "paused"),
    State.SKIPPED: ("已跳过", "skipped"),
    State.INTERRUPTED: ("已中断", "interrupted"),
}

# Envelope codes (CONTRACT §3).
CODE_OK = 0
CODE_RUNNING = 1001
CODE_FAILED = 1002
CODE_NOT_FOUND = 1003
CODE_BAD_REQUEST = 400
CODE_CONFLICT = 409
CODE_TOO_LARGE = 413
CODE_TOO_MANY = 429
CODE_INTERNAL = 500
CODE_BUSY = 503

# Step codes for states that have no exit status of their own.
STEP_CODE_UNFINISHED = -1
STEP_CODE_TIMEOUT = 124
STEP_CODE_KILLED = 137

_MESSAGES: dict[str, tuple[str, str]] = {
    "success": ("成功", "success"),
    "running": ("执行中", "running"),
    "failed": ("{index}, 执行失败", "{index}, execution failed"),
    "not_found": ("id不存在, 沒有数据", "id does not exist, no data"),
    "all_succeeded": ("所有步骤执行成功", "all steps succeeded"),
    "too_many_requests": ("请求过多, 请稍后重试", "too many requests, try again later"),
    "busy": ("引擎繁忙, 请稍后重试", "engine busy, try again later"),
    "internal": ("内部错误", "internal error"),
    "too_large": ("请求体过大, 上限 {limit} 字节", "request body too large, the limit is {limit} bytes"),
    "task_active": ("任务 {id} 尚未结束, 不能删除: 请先终止或等待其结束", "task {id} has not ended and cannot be deleted: kill it or wait for it to end"),
    "no_route": ("路径不存在", "no such route"),
    "method": ("不支持的请求方法", "method not allowed"),
    "forbidden": (
        "只允许本机访问: 请用 --token、--token_file 或环境变量 OSREAPI_TOKEN 设置令牌, 并以 Authorization: Bearer <token> 访问",
        "only loopback clients are served without a token: set one with --token, --token_file or OSREAPI_TOKEN, "
        "then send Authorization: Bearer <token>",
    ),
    "unauthorized": ("缺少或错误的令牌: 请发送 Authorization: Bearer <token>", "missing or wrong token: send Authorization: Bearer <token>"),
}


def message(key: str, lang: str = DEFAULT_LANGUAGE, **values: object) -> str:
    return _MESSAGES[key][_lang_index(lang)].format(**values)


def normalize_language(value: str | None) -> str | None:
    """'en', 'en-US', 'zh-CN,zh;q=0.9' -> 'en' / 'zh'; None when not recognised."""
    if not value:
        return None
    first = value.split(",")[0].split(";")[0].strip().lower()
    primary = first.split("-")[0].split("_")[0]
    return primary if primary in LANGUAGES else None


def _lang_index(lang: str) -> int:
    return 1 if lang == "en" else 0
