"""Terminal commands of the `osreapi` entry point that drive a server, or a fleet of them:
submit, get, ls, logs, wait, kill, pause, resume, rm.

Exit status: 0 the task succeeded (or the request was done), 1 it did not (or the server refused),
2 usage or connection error, 124 --timeout ran out while waiting."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..cli import _flag, _Parser  # the server's parser habits: --a_b = --a-b, one-line errors
from ..embed import TaskResult
from ..errors import InvalidRequest, InvalidValue, OsreapiError
from ..executor.durations import parse_duration
from ..http.security import load_token
from ..vocabulary import LANGUAGES, message
from .client import DEFAULT_URL, Client, request_timeout, task_path
from .display import Out, Progress, seconds
from .errors import ConnectionFailed, ServerError, Unauthorized
from .fleet import DEFAULT_FANOUT, Fleet, HostResult, parse_hosts, read_hosts_file
from .follow import Followers

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 124
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE
POLL_INTERVAL = 0.25
FLEET_COMMANDS = ("submit", "get", "wait", "kill")
COMMANDS = {
    "submit": ("[FILE|-] [-e 'sh script']... [--async] [--id ID] [--wait] [--follow]",
               "Submit a task from a JSON or YAML list of steps, or -e scripts"),
    "get": ("ID", "Show a task and its steps"),
    "ls": ("[--sort start|end|ttl]", "List the tasks kept"),
    "logs": ("ID STEP [-f] [--offset N]", "Print a step's output (-f: follow it live)"),
    "wait": ("ID [--timeout D]", "Wait for a task to end, with a live progress display"),
    "kill": ("ID [STEP]", "Kill a task's (or one step's) process trees"),
    "pause": ("ID [STEP]", "Suspend a task or a step"),
    "resume": ("ID [STEP]", "Resume it"),
    "rm": ("ID", "Delete a finished task's record and workspace"),
}


class UsageError(OsreapiError):
    """The command line or its input file is wrong."""


def commands_help(prog: str) -> str:
    """The client part of `osreapi help`."""
    lines = [f"  {name} {usage}\n    {summary}\n" for name, (usage, summary) in COMMANDS.items()]
    return (
        "".join(f"\n{line}" for line in lines)
        + f"\n  Client flags (see \"{prog} help submit\"): --url (env OSREAPI_URL), --token, --token_file\n"
        "  (env OSREAPI_TOKEN), --tls_ca, --tls_cert, --tls_key, --insecure, --json, --lang;\n"
        "  --hosts / --hosts_file / --fanout on submit, get, wait and kill drive a fleet.\n"
    )


def main(command: str, argv: Sequence[str], prog: str = "osreapi") -> int:
    _writable_anything()
    args = build_parser(command, prog).parse_intermixed_args(list(argv))
    args.command = command
    out = Out(args.lang, args.json)
    try:
        return HANDLERS[command](args, out)
    except (UsageError, InvalidValue, InvalidRequest, Unauthorized, ConnectionFailed) as exc:
        tell_error(out, exc, _usage_text(exc, args.url, out.lang))
        return EXIT_USAGE
    except ServerError as exc:
        tell_error(out, exc, exc.message)
        return EXIT_FAILED
    except OsreapiError as exc:  # any other refusal made here, before a request (an empty ID: the parser, _named)
        tell_error(out, exc, str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader stopped early (`| head`): what a shell tool killed by SIGPIPE says
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return EXIT_BROKEN_PIPE


def _usage_text(exc: OsreapiError, url: str, lang: str) -> str:
    if isinstance(exc, Unauthorized):  # which server refused the token (a ConnectionFailed names its own)
        return f"{url}: {exc}"
    if isinstance(exc, InvalidRequest) and not isinstance(exc, ServerError):  # refused here: steps JSON cannot hold
        return exc.text(lang)
    return str(exc)


def _writable_anything() -> None:
    """A terminal or pipe whose encoding is not UTF-8 (LANG=en_US.ISO-8859-1, PYTHONIOENCODING=ascii)
    cannot hold our zh words or a step's output: escape what it cannot hold instead of a traceback."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def tell_error(out: Out, exc: OsreapiError, text: str) -> None:
    """The text on stderr; with --json a server's refusal is also its envelope on stdout, as its
    other answers are (a script reading stdout saw nothing of a refused kill or rm)."""
    if out.as_json and isinstance(exc, ServerError):
        out.json({"code": exc.code, "message": exc.message})
    out.error(text)


# -- parsing ------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a duration must not be negative, got {text!r}")
    return value


def _request_timeout(text: str) -> float:
    """The duration, within the bounds Client checks (one check, worded once)."""
    try:
        return request_timeout(_duration(text))
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(f"{exc} ({text!r})") from None


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _named(text: str) -> str:
    """A task id or step: never empty (an empty id would make the path "/", the list of tasks)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser(command: str, prog: str) -> argparse.ArgumentParser:
    usage, summary = COMMANDS[command]
    parser = _Parser(prog=f"{prog} {command}", usage=f"%(prog)s {usage} [<flags>]", description=summary,
                     allow_abbrev=False)
    _flag(parser, "url", default=os.environ.get("OSREAPI_URL") or DEFAULT_URL,
          help=f"server URL (env OSREAPI_URL; default {DEFAULT_URL})")
    _flag(parser, "token", default=None, help="bearer token (prefer --token_file or env OSREAPI_TOKEN)")
    _flag(parser, "token_file", default=None, help="file holding the token (not world-readable)")
    _flag(parser, "tls_ca", default=None, help="CA bundle to check the server's certificate with")
    _flag(parser, "tls_cert", default=None, help="client certificate (mutual TLS), with --tls_key")
    _flag(parser, "tls_key", default=None, help="key of the client certificate")
    _flag(parser, "insecure", action="store_true", help="do not check the server's certificate")
    _flag(parser, "request_timeout", default=10.0, type=_request_timeout,
          help="limit of one request, its whole answer included (a log stream: its head; default 10s)")
    _flag(parser, "json", action="store_true", help="print the server's JSON envelope unchanged")
    _flag(parser, "lang", default="zh", choices=LANGUAGES, help="language of state words and messages")
    if command in FLEET_COMMANDS:
        _flag(parser, "hosts", default=None, help="h1[:port],h2,... : run on every host at once")
        _flag(parser, "hosts_file", default=None, help="file of hosts, one a line ('#' comments)")
        _flag(parser, "fanout", default=DEFAULT_FANOUT, type=_positive, help="most hosts contacted at once")
    ARGUMENTS[command](parser)
    return parser


def _submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="JSON or YAML list of steps; - reads stdin")
    parser.add_argument("-e", "--exec", dest="scripts", action="append", default=[], metavar="SCRIPT",
                        help="add an sh step running SCRIPT (repeatable)")
    _flag(parser, "async", dest="parallel", action="store_true", help="run the steps in parallel")
    _flag(parser, "id", default=None, help="name the task (re-submitting it runs nothing twice)")
    _flag(parser, "wait", action="store_true", help="wait for the end; exit 0 only if it succeeded")
    parser.add_argument("-f", "--follow", action="store_true", help="print the steps' output live (implies --wait)")
    _flag(parser, "timeout", default=None, type=_duration, help="give up waiting after this long (exit 124)")


def _id_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=_named)


def _step_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=_named)
    parser.add_argument("step", nargs="?", type=_named, help="index or name; without it the whole task")


def _wait_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=_named)
    _flag(parser, "timeout", default=None, type=_duration, help="give up after this long (exit 124)")


def _ls_args(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "sort", default=None, choices=("start", "end", "ttl"))


def _logs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=_named)
    parser.add_argument("step", type=_named, help="index or name")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the step ends")
    _flag(parser, "offset", default=0, type=int, help="start at this byte of the output")


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "submit": _submit_args, "get": _id_args, "ls": _ls_args, "logs": _logs_args, "wait": _wait_args,
    "kill": _step_args, "pause": _step_args, "resume": _step_args, "rm": _id_args,
}


def connection(args: argparse.Namespace) -> dict[str, Any]:
    """Client keyword arguments from the flags."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError(message("cli_tls_pair", args.lang))
    verify: bool | str = False if args.insecure else (args.tls_ca or True)
    cert = (args.tls_cert, args.tls_key) if args.tls_cert else None
    token = load_token(args.token, args.token_file)
    return {"token": token, "timeout": args.request_timeout, "verify": verify, "cert": cert, "lang": args.lang}


def fleet_hosts(args: argparse.Namespace) -> list[str] | None:
    if getattr(args, "hosts", None) is None and getattr(args, "hosts_file", None) is None:
        return None
    hosts = parse_hosts(args.hosts or "") + (read_hosts_file(args.hosts_file) if args.hosts_file else [])
    if not hosts:
        raise UsageError(message("cli_no_hosts", args.lang))
    return list(dict.fromkeys(hosts))


def make_fleet(args: argparse.Namespace, hosts: list[str]) -> Fleet:
    scheme = "https" if args.url.startswith("https://") else "http"
    return Fleet(hosts, fanout=args.fanout, scheme=scheme, **connection(args))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found and where, on one line (its own text quotes the input as "<unicode string>")."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: no line and column, a position
        return f"{exc.reason} (character U+{exc.character:04X} at offset {exc.position})"
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def _read_bytes(file: str) -> bytes:
    """FILE's bytes, or stdin's for '-' (as bytes: decoded as a file's are; none when stdin is closed)."""
    if file != "-":
        return Path(file).read_bytes()
    stdin = getattr(sys.stdin, "buffer", None)  # sys.stdin is None under `<&-`
    return stdin.read() if stdin is not None else b""


_YAML_KINDS = {dict: "object", str: "string", int: "number", float: "number", bool: "boolean"}


def load_steps(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The FILE's list (JSON or YAML; '-' is stdin), then one sh step per -e."""
    steps: list[Any] = []
    if args.file is not None:
        where = "stdin" if args.file == "-" else args.file
        try:
            text = _read_bytes(args.file).decode("utf-8")
            loaded = yaml.safe_load(text)
        except OSError as exc:
            raise UsageError(message("cli_cannot_read", args.lang, where=where, reason=exc.strerror)) from None
        except UnicodeDecodeError as exc:
            reason = message("cli_not_utf8", args.lang, byte=f"0x{exc.object[exc.start]:02x}", offset=exc.start)
            raise UsageError(message("cli_cannot_read", args.lang, where=where, reason=reason)) from None
        except yaml.YAMLError as exc:
            raise UsageError(message("cli_bad_file", args.lang, where=where, error=_yaml_problem(exc))) from None
        except RecursionError:  # PyYAML builds nested lists and maps recursively
            raise UsageError(message("cli_too_deep", args.lang, where=where)) from None
        if loaded is None:
            raise UsageError(message("cli_empty_file", args.lang, where=where))
        if not isinstance(loaded, list):
            kind = _YAML_KINDS.get(type(loaded), type(loaded).__name__)
            raise UsageError(message("cli_not_a_list", args.lang, where=where, kind=kind))
        steps.extend(loaded)
    steps.extend({"command_type": "sh", "command_content": script} for script in args.scripts)
    if not steps:
        raise UsageError(message("cli_nothing_to_submit", args.lang))
    return steps


# -- one host ---------------------------------------------------------------------------------


def status_of(result: TaskResult | None, timed_out: bool = False) -> int:
    if result is not None and not result.finished and timed_out:
        return EXIT_TIMEOUT
    return EXIT_OK if result is not None and result.task.succeeded else EXIT_FAILED


def watch(client: Client, task_id: str, out: Out, timeout: float | None, follow: bool) -> tuple[TaskResult | None, bool]:
    """Poll until the task ends, showing progress (and its output with follow); (result, timed out).
    Ctrl-C stops the watching, not the task: say so, and how to stop the task."""
    try:
        return _watch(client, task_id, out, timeout, follow)
    except KeyboardInterrupt:
        print(out.say("cli_interrupted", id=task_id), file=sys.stderr, flush=True)
        raise


def _watch(client: Client, task_id: str, out: Out, timeout: float | None, follow: bool) -> tuple[TaskResult | None, bool]:
    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(out, task_id) as progress:
        followers = Followers(client, task_id, progress.print) if follow else None
        while True:
            result = client.resumed(lambda: client.get(task_id), deadline)  # across a server restart
            progress.update(result)
            if result is None:
                return None, False
            if followers:
                followers.start(result)
            if result.finished:
                if followers:
                    followers.finish(deadline)
                return result, False
            if deadline is not None and time.monotonic() >= deadline:
                return result, True
            if followers:
                followers.drain(POLL_INTERVAL)
            else:
                time.sleep(POLL_INTERVAL)


def show_end(client: Client, out: Out, task_id: str, result: TaskResult | None, timed_out: bool) -> int:
    if out.as_json:
        out.json(client.envelope("GET", task_path(task_id), lang=out.lang)[1])
    elif result is None:
        out.error(out.say("cli_not_found", id=task_id))
    else:
        out.result(result)
        if timed_out:
            out.error(out.say("cli_timed_out", id=task_id, state=out.word(result.task.state)))
    return status_of(result, timed_out)


def show_answer(out: Out, envelope: dict[str, Any], text: str | None = None) -> None:
    """The envelope with --json; otherwise `text`, or the server's message."""
    if out.as_json:
        out.json(envelope)
    else:
        out.line(out.text(envelope["message"] if text is None else text))


def cmd_submit(args: argparse.Namespace, out: Out) -> int:
    steps = load_steps(args)
    mode = "parallel" if args.parallel else None
    hosts = fleet_hosts(args)
    if hosts is not None:
        return fleet_submit(args, out, hosts, steps, mode)
    with Client(args.url, **connection(args)) as client:
        envelope = client.submit_envelope(steps, mode, args.id, lang=args.lang)
        task_id = envelope["data"]["id"]
        if not (args.wait or args.follow):
            show_answer(out, envelope, task_id)
            return EXIT_OK
        if not out.as_json:
            print(out.say("cli_submitted", id=task_id, count=envelope["data"]["count"]), file=sys.stderr, flush=True)
        result, timed_out = watch(client, task_id, out, args.timeout, args.follow and not out.as_json)
        return show_end(client, out, task_id, result, timed_out)


def cmd_get(args: argparse.Namespace, out: Out) -> int:
    hosts = fleet_hosts(args)
    if hosts is not None:
        with make_fleet(args, hosts) as fleet:
            return fleet_rows(out, fleet, fleet.map(lambda host, client: client.get(args.id)), args.id, "get")
    with Client(args.url, **connection(args)) as client:
        return show_end(client, out, args.id, client.get(args.id), False)


def cmd_wait(args: argparse.Namespace, out: Out) -> int:
    hosts = fleet_hosts(args)
    if hosts is not None:
        with make_fleet(args, hosts) as fleet:
            results = fleet.map(lambda host, client: client.wait(args.id, timeout=args.timeout))
            return fleet_rows(out, fleet, results, args.id, "wait")
    with Client(args.url, **connection(args)) as client:
        result, timed_out = watch(client, args.id, out, args.timeout, follow=False)
        return show_end(client, out, args.id, result, timed_out)


def cmd_ls(args: argparse.Namespace, out: Out) -> int:
    with Client(args.url, **connection(args)) as client:
        if out.as_json:
            params = {"sort": args.sort} if args.sort else None
            out.json(client.call("GET", "/", params, lang=out.lang))
        else:
            out.tasks(client.list(args.sort))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, out: Out) -> int:
    with Client(args.url, **connection(args)) as client:
        for chunk in client.logs(args.id, args.step, follow=args.follow, offset=args.offset):
            out.raw(chunk)
    return EXIT_OK


def cmd_control(args: argparse.Namespace, out: Out) -> int:
    hosts = fleet_hosts(args) if args.command == "kill" else None
    if hosts is not None:
        with make_fleet(args, hosts) as fleet:
            done = fleet.map(lambda host, client: client.control(args.id, "kill", args.step, lang=out.lang))
            return fleet_answers(out, done)
    with Client(args.url, **connection(args)) as client:
        show_answer(out, client.control(args.id, args.command, args.step, lang=out.lang))
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, out: Out) -> int:
    with Client(args.url, **connection(args)) as client:
        show_answer(out, client.delete_envelope(args.id, lang=out.lang))
    return EXIT_OK


# -- fleets -------------------------------------------------------------------------------------


def fleet_submit(args: argparse.Namespace, out: Out, hosts: list[str], steps: list[dict[str, Any]],
                 mode: str | None) -> int:
    if args.follow:
        raise UsageError(out.say("cli_follow_fleet"))
    with make_fleet(args, hosts) as fleet:
        submitted = fleet.submit(steps, mode=mode, task_id=args.id)
        ids = {r.host: r.value for r in submitted if r.ok}
        refused = {r.host: r.error for r in submitted if not r.ok}

        def finish(host: str, client: Client) -> TaskResult | None:
            if host in refused:
                raise refused[host]
            return client.wait(ids[host], timeout=args.timeout) if args.wait else client.get(ids[host])

        # With --id every host's task has that id, those that could not be reached included
        return fleet_rows(out, fleet, fleet.map(finish), args.id or ids, "wait" if args.wait else "submit")


def fleet_rows(out: Out, fleet: Fleet, results: list[HostResult[TaskResult | None]],
               task_id: str | dict[str, str], why: str) -> int:
    """One row (or JSON object) per host. why: "submit" (exit 0 when every host accepted the task),
    "get" or "wait" (exit 0 only when every host's task succeeded)."""
    statuses = []
    rows = []

    def own_id(host: str) -> str:
        return task_id if isinstance(task_id, str) else task_id.get(host, "")

    for item in results:
        result = item.value
        status = EXIT_FAILED if item.error else EXIT_OK if why == "submit" else status_of(result, why == "wait")
        statuses.append(status)
        if out.as_json:
            continue
        if item.error is not None:
            rows.append((out.text(item.host), out.text(own_id(item.host)), "", "", out.text(_reason(item.error))))
        elif result is None:
            rows.append((out.text(item.host), out.text(own_id(item.host)), "", "", out.say("cli_host_no_task")))
        else:
            failed = ", ".join(f"{s.index} {s.name}" for s in result.steps if s.failed)
            rows.append((out.text(item.host), out.text(result.task.id), out.state(result.task.state, result.task.succeeded),
                         seconds(result.task.begin, result.task.end), out.text(failed)))
    if out.as_json:
        for line in _hosts_json(fleet, results, own_id, out.lang):
            out.json(line)
    else:
        out.table(out.heading("cli_hosts_heading"), rows)
    if all(s == EXIT_OK for s in statuses):
        return EXIT_OK
    return EXIT_TIMEOUT if all(s in (EXIT_OK, EXIT_TIMEOUT) for s in statuses) else EXIT_FAILED


def fleet_answers(out: Out, answers: list[HostResult[dict[str, Any]]]) -> int:
    for item in answers:
        if out.as_json:
            out.json({"host": item.host, **item.value} if item.ok else {"host": item.host, "error": _reason(item.error)})
    if not out.as_json:
        out.table(out.heading("cli_answers_heading"), [(out.text(a.host), out.text(a.value["message"] if a.ok else _reason(a.error)))
                                       for a in answers])
    return EXIT_OK if all(a.ok for a in answers) else EXIT_FAILED


def _hosts_json(fleet: Fleet, results: list[HostResult[Any]], own_id: Callable[[str], str],
                lang: str) -> list[dict[str, Any]]:
    """Per host {"host": h, "id": ..., <the server's GET /<id> envelope>} or {..., "error": "..."};
    the envelopes are fetched on every host at once, as the call before them was."""
    failed = {item.host: item.error for item in results if item.error is not None}

    def envelope(host: str, client: Client) -> dict[str, Any]:
        if host in failed:
            raise failed[host]
        return client.envelope("GET", task_path(own_id(host)), lang=lang)[1]

    return [{"host": r.host, "id": own_id(r.host), **r.value} if r.ok
            else {"host": r.host, "id": own_id(r.host), "error": _reason(r.error)}
            for r in fleet.map(envelope)]


def _reason(error: OsreapiError | None) -> str:
    return error.message if isinstance(error, ServerError) else str(error)


HANDLERS: dict[str, Callable[[argparse.Namespace, Out], int]] = {
    "submit": cmd_submit, "get": cmd_get, "ls": cmd_ls, "logs": cmd_logs, "wait": cmd_wait,
    "kill": cmd_control, "pause": cmd_control, "resume": cmd_control, "rm": cmd_rm,
}
