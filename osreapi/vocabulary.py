"""The one table of state words and messages, in both languages (CONTRACT §3.4)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

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
CODE_RANGE = 416
CODE_TOO_MANY = 429
CODE_INTERNAL = 500
CODE_BUSY = 503
CODE_DISK_FULL = 507

# Step codes for states that have no exit status of their own.
STEP_CODE_UNFINISHED = -1
STEP_CODE_TIMEOUT = 124
STEP_CODE_KILLED = 137

_MESSAGES: dict[str, tuple[str, str]] = {
    # The terminal commands (osreapi/client/cli.py, display.py): their own words and table headings.
    "cli_nothing_to_submit": ("没有可提交的步骤: 请给出 FILE、- (标准输入) 或 -e '脚本'",
                              "nothing to submit: give FILE, - (stdin) or -e 'script'"),
    "cli_cannot_read": ("{where}: 无法读取: {reason}", "{where}: cannot read: {reason}"),
    "cli_bad_file": ("{where}: 不是有效的 JSON 或 YAML: {error}", "{where}: not valid JSON or YAML: {error}"),
    "cli_too_deep": ("{where}: 嵌套过深, 无法读取", "{where}: nested too deeply to read"),
    "cli_not_utf8": ("不是 UTF-8 文本 (第 {offset} 字节为 {byte})", "not UTF-8 text (byte {byte} at offset {offset})"),
    "cli_interrupted": ("osreapi: 已停止观察; 任务 {id} 仍在服务器上运行 (osreapi kill {id} 可终止它)",
                        "osreapi: stopped watching; task {id} goes on on the server (osreapi kill {id} stops it)"),
    "cli_empty_file": ("{where}: 为空, 没有步骤", "{where}: is empty: no steps"),
    "cli_not_a_list": ("{where}: 应为步骤列表, 实为 {kind}", "{where}: expected a list of steps, got {kind}"),
    "cli_tls_pair": ("--tls_cert 与 --tls_key 需一起给出", "--tls_cert and --tls_key go together"),
    "cli_no_hosts": ("--hosts / --hosts_file: 没有给出主机", "--hosts / --hosts_file: no host given"),
    "cli_follow_fleet": ("--follow 只显示一台主机的输出: 与 --hosts 一起请用 --wait",
                         "--follow prints one host's output: use --wait with --hosts"),
    "cli_submitted": ("任务 {id}: 共 {count} 步", "task {id}: {count} step(s)"),
    "cli_not_found": ("任务 {id}: 不存在 (未知或已过期)", "task {id}: not found (unknown or expired)"),
    "cli_timed_out": ("--timeout 已到, 任务 {id} 仍为 {state}", "task {id} still {state} when --timeout ran out"),
    "cli_task": ("任务 {id}: {state} ({mode}, {time})", "task {id}: {state} ({mode}, {time})"),
    "cli_not_started": ("未开始", "not started"),
    "cli_step_change": ("第 {index} 步 {name}: {state}", "step {index} {name}: {state}"),
    "cli_exit_code": (" (退出码 {code})", " (code {code})"),
    "cli_output_tail": ("--- {name} ({state}, 退出码 {code}): 最后几行 ---", "--- {name} ({state}, code {code}): last lines ---"),
    "cli_progress": ("{id}: {state} · 完成 {done}/{count} · 执行中 {running} · 失败 {failed} · {elapsed}",
                     "{id}: {state} · done {done}/{count} · running {running} · failed {failed} · {elapsed}"),
    "cli_waiting": ("{id}: 等待应答 ({elapsed})", "{id}: waiting for an answer ({elapsed})"),
    "cli_tasks_heading": ("id|状态|步骤数|开始|结束|失败步骤", "id|state|steps|begin|end|failed step"),
    "cli_steps_heading": ("步骤|名称|状态|退出码|用时", "step|name|state|code|time"),
    "cli_hosts_heading": ("主机|任务|状态|用时|失败步骤 / 错误", "host|task|state|time|failed steps / error"),
    "cli_answers_heading": ("主机|应答", "host|answer"),
    "cli_output_lost": ("[第 {index} 步的输出: {error}]", "[output of step {index}: {error}]"),
    "cli_host_no_task": ("不存在", "not found"),
    "success": ("成功", "success"),
    "running": ("执行中", "running"),
    "failed": ("{index}, 执行失败", "{index}, execution failed"),
    "not_found": ("id不存在, 沒有数据", "id does not exist, no data"),
    "step_not_found": ("该任务没有步骤 '{step}' (以序号或名称指定)", "the task has no step '{step}' (by index or name)"),
    "all_succeeded": ("所有步骤执行成功", "all steps succeeded"),
    "too_many_requests": ("请求过多, 请稍后重试", "too many requests, try again later"),
    "busy": ("引擎繁忙, 请稍后重试", "engine busy, try again later"),
    "store_unavailable": ("存储暂时无法读取 (写入失败后正在重新打开), 请稍后重试", "the store cannot be read for a moment (it is being reopened after a failed write), try again shortly"),
    "internal": ("内部错误", "internal error"),
    "client_no_answer": ("无应答: {reason}", "{reason}"),
    "client_no_envelope": ("HTTP {status}: 应答不是 JSON 信封", "HTTP {status} without a JSON envelope"),
    "client_not_envelope": ("HTTP {status}: 不是 osreapi 的信封", "HTTP {status}: not an osreapi envelope"),
    "client_too_big": ("HTTP {status}: 超过 {limit} 字节的应答不是 osreapi 的信封",
                       "HTTP {status}: an answer over {limit} bytes is not an osreapi envelope"),
    "client_too_slow": ("HTTP {status}: 应答未在 {seconds}s 内完成", "HTTP {status}: the answer was not complete within {seconds}s"),
    "client_too_slow_head": ("应答未在 {seconds}s 内完成", "the answer was not complete within {seconds}s"),
    "client_event_too_long": ("{path}: 服务器发送的一行或一个事件超过 {limit} 字节, 不是 osreapi 的事件流",
                              "{path}: a line or an event over {limit} bytes, not an osreapi event stream"),
    "client_redirect": ("HTTP {status}: 重定向到 {location}, 未跟随 (请用 --url 指向它)",
                        "HTTP {status}: redirected to {location}, not followed (point --url at it)"),
    "client_not_answer": ("不是 osreapi 的应答 ({error})", "not an osreapi answer ({error})"),
    "client_not_log": ("不是 osreapi 的日志流 (事件 id {id} 在第 {offset} 字节之后)",
                       "not an osreapi log stream (event id {id} after byte {offset})"),
    "client_stream_ended": ("流在步骤结束之前中断", "the stream ended before the step did"),
    "log_stream_lost": ("{task}/{step} 的日志流中断: {reason}", "log stream of {task}/{step} lost: {reason}"),
    "engine_failed": ("任务的执行者在引擎内失败, 请求未执行: 任务以中断结束", "the task's runner failed inside the engine; nothing was applied and the task ends interrupted"),
    "engine_failed_not_stored": ("任务的执行者在引擎内失败, 任务未保存, 也未执行", "the task's runner failed inside the engine; the task was neither stored nor run"),
    "disk_full": ("磁盘已满, 无法保存: 请释放空间后重试", "the disk is full, nothing can be stored: free some space and try again"),
    "data_dir_lost": ("数据目录在服务运行时被删除或替换, 暂时无法保存: 服务能重建时会写回全部记录 (原因见服务日志)",
                      "the data dir was removed or replaced while the server ran, nothing can be stored for now: the "
                      "server writes every record there again once it can (its log says why it cannot)"),
    "too_large": ("请求体过大, 上限 {limit} 字节", "request body too large, the limit is {limit} bytes"),
    "task_active": ("任务 {id} 尚未结束, 不能删除: 请先终止或等待其结束", "task {id} has not ended and cannot be deleted: kill it or wait for it to end"),
    "no_route": ("路径不存在", "no such route"),
    "method": ("不支持的请求方法", "method not allowed"),
    "forbidden": (
        "只允许本机访问: 请用 --token、--token_file 或环境变量 OSREAPI_TOKEN 设置令牌, 并以 Authorization: Bearer <token> 访问",
        "only loopback clients are served without a token: set one with --token, --token_file or OSREAPI_TOKEN, "
        "then send Authorization: Bearer <token>",
    ),
    "cross_origin": (
        "拒绝跨源请求: 其他网站的网页不能驱动本 API (来源 {origin})",
        "cross-origin request refused: a page from another site cannot drive this API (origin {origin})",
    ),
    "proxied": (
        "请求经由代理转发 ({header}): 未设令牌时只服务本机上的客户端; 经代理访问请设置令牌",
        "this request came through a proxy ({header}): without a token only clients on this host are served; "
        "set a token to serve through a proxy",
    ),
    "foreign_host": (
        "Host {host} 不是本机的名字: 未设令牌时只接受 IP 地址、localhost 或不带点的主机名 (以防 DNS 重绑定); 其他名字请设置令牌",
        "Host {host} does not name this host: without a token only an IP address, localhost or a name without "
        "dots is served (DNS rebinding); set a token to serve other names",
    ),
    "task_case_conflict": (
        "id {id} 与已有任务 {existing} 只有大小写不同, 而工作目录所在的文件系统不区分大小写 (二者会共用一个工作目录): 没有执行任何步骤",
        "id {id} differs from task {existing} only in case, and the workspace file system ignores case (they would share one workspace): nothing was run",
    ),
    "task_conflict": (
        "id {id} 已被另一个内容不同的任务使用: 没有执行任何步骤",
        "id {id} is taken by a task with a different submission: nothing was run",
    ),
    "tls_only": ("此端口只接受 HTTPS: 请用 https://", "this port speaks HTTPS only: use https://"),
    "out_of_descriptors": ("服务器的文件描述符已用尽, 请稍后重试", "the server is out of file descriptors, try again later"),
    "overloaded": ("服务器繁忙: 连接过多, 请稍后重试", "server overloaded: too many connections, try again later"),
    "read_timeout": ("请求未在 {seconds} 秒内完整到达", "the request did not arrive whole within {seconds}s"),
    "header_too_large": ("请求头过大, 上限 {limit} 字节", "request header block too large, the limit is {limit} bytes"),
    "uri_too_long": ("请求行过长, 上限 {limit} 字节", "request line too long, the limit is {limit} bytes"),
    "bad_http": ("HTTP 请求格式错误: {detail}", "malformed HTTP request: {detail}"),
    # What the HTTP parser (cheroot) refused, in our words (its own sentences are English):
    "http_crlf": ("每行须以 CRLF (\\r\\n) 结尾", "every line must end with CRLF (\\r\\n)"),
    "http_request_line": ("请求行须为 \"方法 目标 HTTP/1.1\", 各部分以一个空格分隔", "the request line must be \"METHOD target HTTP/1.1\", one space apart"),
    "http_method_case": ("方法名须为大写 (如 GET)", "the method name must be uppercase (GET, say)"),
    "http_target": ("请求目标格式错误", "the request target is malformed"),
    "http_target_slash": ("请求目标须以 / 开头", "the request target must start with /"),
    "http_target_authority": ("CONNECT 的目标须为 host:port", "a CONNECT target must be host:port"),
    "http_fragment": ("请求目标不能含 # 片段", "the request target must not contain a # fragment"),
    "http_header_line": ("请求头行须为 \"名称: 值\"", "a header line must be \"Name: value\""),
    "http_header_end": ("请求头未以空行结束", "the header block does not end with an empty line"),
    "http_header_space": ("请求头名称与冒号之间不能有空白", "whitespace before the colon of a header name"),
    "http_header_fold": ("请求头不能折行 (obs-fold)", "a folded header line (obs-fold)"),
    "http_header_control": ("请求头行不能含 NUL 或单独的 CR", "a NUL or a bare CR in a header line"),
    "http_content_length": ("Content-Length 头格式错误", "the Content-Length header is malformed"),
    "target_absolute": (
        "请求目标 {target!r} 是绝对形式 (给代理的): 请只发送以 / 开头的路径, 主机名放在 Host 头里",
        "request target {target!r} is in absolute form (a proxy's): send the path alone, starting with '/', and the host in Host",
    ),
    "http_version": ("不支持的 HTTP 版本: 请使用 HTTP/1.1 (或 1.0)", "HTTP version not supported: use HTTP/1.1 (or 1.0)"),
    "not_implemented": ("不支持的传输编码: 只接受 chunked", "unsupported Transfer-Encoding: only chunked is accepted"),
    "unauthorized": ("缺少或错误的令牌: 请发送 Authorization: Bearer <token>", "missing or wrong token: send Authorization: Bearer <token>"),
}


# What a client sent wrong (InvalidRequest / ActionRejected). Names the client sent stay as sent.
_MESSAGES.update({
    "at_step": ("第 {index} 步: {text}", "step {index}: {text}"),
    "bad_id": (
        "id: 须为 1-64 个字符, 以字母或数字开头, 其后为字母、数字、'.'、'_' 或 '-'",
        "id: must be 1-64 characters, a letter or digit first, then letters, digits, '.', '_' or '-'",
    ),
    "reserved_id": ("id: {id!r} 是保留的路由名", "id: {id!r} is reserved for a route"),
    "body_not_utf8": ("请求体: 第 {at} 字节不是合法的 UTF-8", "body: not valid UTF-8 at byte {at}"),
    "query_repeated": ("查询参数 {name} 出现了多次且取值不同", "query: {name} is given more than once, with different values"),
    "path_not_utf8": ("路径: 第 {at} 字节不是合法的 UTF-8", "path: not valid UTF-8 at byte {at}"),
    "body_empty": ("请求体为空, 应为步骤的 JSON 数组", "body: empty, expected a JSON array of steps"),
    "body_bad_json": ("请求体: 第 {line} 行第 {column} 列不是合法的 JSON: {reason}",
                      "body: invalid JSON at line {line} column {column}: {reason}"),
    "body_too_deep": ("请求体: JSON 嵌套过深", "body: JSON nested too deeply"),
    "body_number_too_long": ("请求体: 数字过长 (上限 {limit} 位)", "body: a number is too long (the limit is {limit} digits)"),
    "body_duplicate_key": ("请求体: 同一对象中键 {key!r} 出现两次", "body: key {key!r} appears twice in one object"),
    "steps_too_large": ("步骤写成 JSON 将超过 {limit} 个字符", "the steps would be over {limit} characters as JSON"),
    "steps_not_json": ("步骤无法写成 JSON: {error}", "the steps cannot be written as JSON: {error}"),
    "body_not_array": ("请求体应为步骤的 JSON 数组, 收到的是{got}", "body: expected a JSON array of steps, got {got}"),
    "body_no_steps": ("请求体: 步骤数组为空", "body: the array of steps is empty"),
    "too_many_steps": ("请求体: 步骤过多 ({count}), 上限 {limit}", "body: too many steps ({count}), the limit is {limit}"),
    "ambiguous_length": ("请求体长度不明确: Content-Length 重复, 或与 Transfer-Encoding 同时出现",
                         "ambiguous body length: Content-Length repeated, or sent with Transfer-Encoding"),
    "host_missing": ("缺少 Host 头: HTTP/1.1 请求必须带一个 Host 头 (RFC 9112 3.2)",
                     "missing Host header: an HTTP/1.1 request must carry one Host header (RFC 9112 3.2)"),
    "host_repeated": ("Host 头重复: 请求只能带一个 Host 头 (RFC 9112 3.2)",
                      "Host header repeated: a request must carry one Host header only (RFC 9112 3.2)"),
    "content_length": ("Content-Length: 应为非负整数字节数, 收到 {value!r}",
                       "Content-Length: expected a whole number of bytes, got {value!r}"),
    "body_truncated": ("请求体不完整: 收到 {got} / {size} 字节", "body: truncated, {got} of {size} bytes arrived"),
    "body_unreadable": ("请求体无法读取 ({reason})", "body: could not be read ({reason})"),
    "not_object": ("应为对象, 收到的是{got}", "expected an object, got {got}"),
    "unknown_field": ("未知字段 {field!r}{hint}", "unknown field {field!r}{hint}"),
    "did_you_mean": (", 是否想写 {field}?", " (did you mean {field}?)"),
    "required": ("{field} 为必填项", "{field} is required"),
    "must_be_string": ("{field} 应为字符串", "{field} must be a string"),
    "must_be_boolean": ("{field} 应为 true 或 false", "{field} must be true or false"),
    "type_unavailable": ("command_type {value!r} 在本机不可用 (可用: {available})",
                         "command_type {value!r} is not available on this host (available: {available})"),
    "type_unknown": ("command_type {value!r} 未知 (可用: {available})", "command_type {value!r} is unknown (available: {available})"),
    "script_too_large": ("command_content 超过 {limit} 字节", "command_content is larger than {limit} bytes"),
    "bad_name": ("name 须为可打印字符, 最多 {limit} 个, 不含 '/' 且首尾无空格",
                 "name must be printable, at most {limit} characters, without '/' or surrounding spaces"),
    "digit_name": ("name {name!r} 不能全为数字 (会被当作步骤序号)",
                   "name {name!r} must not be all digits (it would read as a step index)"),
    "duplicate_name": ("name {name!r} 已被第 {other} 步使用", "name {name!r} is already used by step {other}"),
    "self_dependency": ("depends_on 指向了步骤自身 ({name!r})", "depends_on names the step itself ({name!r})"),
    "unknown_dependency": ("depends_on 指向了不存在的步骤 {name!r}", "depends_on names an unknown step {name!r}"),
    "dependency_cycle": ("depends_on: 依赖成环 {path}", "depends_on: dependency cycle {path}"),
    "depends_on_type": ("depends_on 应为步骤名的数组", "depends_on must be an array of step names"),
    "lone_surrogate": ("{field} 不是合法的 Unicode (孤立代理项)", "{field} is not valid Unicode (a lone surrogate)"),
    "nul_character": ("{field} 含有 NUL 字符", "{field} contains a NUL character"),
    "env_value_type": ("env_vars[{name!r}] 应为字符串", "env_vars[{name!r}] must be a string"),
    "env_entry": ("env_vars[{position}] 应为 'NAME=value' 形式的字符串", "env_vars[{position}] must be a string 'NAME=value'"),
    "env_type": ("env_vars 应为 'NAME=value' 字符串数组或对象", "env_vars must be an array of 'NAME=value' strings or an object"),
    "env_count": ("env_vars 有 {count} 项, 上限 {limit}", "env_vars has {count} entries, the limit is {limit}"),
    "env_name": ("env_vars 含有非法的变量名 {name!r}", "env_vars has an invalid name {name!r}"),
    "env_size": ("env_vars 超过 {limit} 字节", "env_vars are larger than {limit} bytes"),
    "bad_timeout": ("timeout: 无效的时长 {value!r} (应为带单位的数字: ns、us、ms、s、m、h, 例如 '1h30m')",
                    "timeout: invalid duration {value!r} (expected a number with a unit: ns, us, ms, s, m, h; e.g. '1h30m')"),
    "negative_timeout": ("timeout 不能为负数", "timeout must not be negative"),
    "bad_mode": ("mode: 未知的值 {value!r} (可用 sequential、parallel 或 dag)",
                 "mode: unknown value {value!r} (use sequential, parallel or dag)"),
    "bad_sort": ("sort: 未知的值 {value!r} (可用 start、end 或 ttl)", "sort: unknown value {value!r} (use start, end or ttl)"),
    "bad_flag": ("{name}: 应为 true 或 false, 收到 {value!r}", "{name}: expected true or false, got {value!r}"),
    "bad_offset": ("{name}: 应为字节偏移 (0 到 {limit} 的整数), 收到 {value!r}",
                   "{name}: expected a byte offset (a whole number from 0 to {limit}), got {value!r}"),
    "bad_event_id": ("Last-Event-ID: 应为事件序号 (数字 0-9), 收到 {value!r}",
                     "Last-Event-ID: expected an event number (digits 0-9), got {value!r}"),
    "bad_wait": ("wait: 应为时长 (如 30s, 最长 60s), 收到 {value!r}", "wait: expected a duration such as 30s (at most 60s is waited), got {value!r}"),
    "bad_task_filter": ("task: {value!r} 不是任务 id (1-64 个字母、数字、'.'、'_' 或 '-')",
                        "task: {value!r} is not a task id (1-64 letters, digits, '.', '_' or '-')"),
    "offset_past_end": ("offset {offset} 超出了输出的末尾 ({size} 字节)", "offset {offset} is past the end of the output ({size} bytes)"),
    "bad_step_ref": ("步骤 {ref!r} 既不是序号 (数字 0-9) 也不是步骤名", "step {ref!r} is neither an index (digits 0-9) nor a step name"),
    "no_action": ("缺少 action: 可用 {actions}, 例如 ?action=kill", "action is missing: use {actions}, e.g. ?action=kill"),
    "bad_action": ("action: 未知的值 {value!r} (可用 {actions})", "action: unknown value {value!r} (use {actions})"),
    "task_ended": ("任务已结束 ({state}), {action} 不适用", "the task has ended ({state}); {action} does not apply"),
    "task_gone": ("任务已结束, {action} 不适用", "the task has ended; {action} does not apply"),
    "task_paused_already": ("任务已暂停", "the task is already paused"),
    "task_not_paused": ("任务没有暂停", "the task is not paused"),
    "task_not_here": ("任务不在此处运行 (已结束或服务正在停止)", "the task is not running here (it has ended or the server is stopping)"),
    "step_ended": ("第 {index} 步已结束 ({state}), {action} 不适用", "step {index} has ended ({state}); {action} does not apply"),
    "step_exited": ("第 {index} 步在 {action} 到达时已退出, {action} 不适用", "step {index} had exited when the {action} came; it does not apply"),
    "step_being_killed": ("第 {index} 步正在被终止, {action} 不适用", "step {index} is being killed; {action} does not apply"),
    "step_paused_already": ("第 {index} 步已暂停", "step {index} is already paused"),
    "step_not_paused": ("第 {index} 步没有暂停", "step {index} is not paused"),
    "resume_task_first": ("整个任务已暂停: 请恢复任务", "the whole task is paused: resume the task"),
    "json_object": ("对象", "an object"),
    "json_array": ("数组", "an array"),
    "json_string": ("字符串", "a string"),
    "json_boolean": ("布尔值", "a boolean"),
    "json_null": ("null", "null"),
    "json_number": ("数字", "a number"),
})


def message(key: str, lang: str = DEFAULT_LANGUAGE, /, **values: object) -> str:
    return _MESSAGES[key][_lang_index(lang)].format(**values)


@dataclass(frozen=True)
class Phrase:
    """A message not yet rendered: a key of the table and its values (which may be Phrases).
    A key the table does not know is shown as is (a plain English sentence)."""

    key: str
    values: dict[str, Any] = field(default_factory=dict)

    def render(self, lang: str = DEFAULT_LANGUAGE) -> str:
        if self.key not in _MESSAGES:
            return self.key
        values = {k: _render_value(v, lang) for k, v in self.values.items()}
        return message(self.key, lang, **values)


def _render_value(value: Any, lang: str) -> Any:
    if isinstance(value, Phrase):
        return value.render(lang)
    if isinstance(value, State):
        return value.word(lang)
    return value


CACHED_LANGUAGE_VALUE = 256  # characters: browsers send a few dozen


def normalize_language(value: str | None) -> str | None:
    """The one of ours that a `?lang=` value or an Accept-Language header prefers, by quality (ties:
    the first): 'en', 'en-US', 'fr-FR,fr;q=0.9,en;q=0.8' -> 'en'; None when none of ours is acceptable."""
    if not value:
        return None
    # A longer value is read, not kept: 256 headers of 64 KiB, sent before any token is checked,
    # held 16 MiB in the cache.
    return _cached_preference(value) if len(value) <= CACHED_LANGUAGE_VALUE else _preference(value)


def _preference(value: str) -> str | None:
    best, best_quality = None, 0.0
    for entry in value.split(","):
        tag, _, params = entry.partition(";")
        primary = tag.strip().lower().split("-")[0].split("_")[0]
        quality = header_quality(params)
        if primary in LANGUAGES and quality > best_quality:
            best, best_quality = primary, quality
    return best


_cached_preference = functools.lru_cache(maxsize=256)(_preference)  # asked on every request; clients send few distinct headers


def header_quality(params: str) -> float:
    """The q= among an Accept or Accept-Language entry's parameters (1 when absent; 0 when not a
    number), within 0..1."""
    for param in params.split(";"):
        name, _, number = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(number)
            except ValueError:
                return 0.0
            return min(max(quality, 0.0), 1.0) if quality == quality else 0.0  # NaN counts as 0
    return 1.0


def _lang_index(lang: str) -> int:
    return 1 if lang == "en" else 0
