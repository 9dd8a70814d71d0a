"""The command line: `osreapi [<flags>] <command> [<args> ...]` (also installed as remote_executor)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import (
    DataDirInUse,
    DataDirUnsafe,
    InvalidValue,
    StoreDamaged,
    one_line_refusals,
)
from .executor.durations import parse_duration, parse_size
from .vocabulary import LANGUAGES

HELP = """\
usage: {prog} [<flags>] <command> [<args> ...]

OS Remote Executor API: runs lists of scripts over HTTP, sequentially, in parallel or as a DAG.

Flags:
  -h, --help              Show context-sensitive help (also try "help run").
      --addr=":2376"      host:port to listen on (127.0.0.1:0 picks a free port).
      --debug             Enable debug messages.
      --key_expire=48h    How long a finished task's record is kept. Example: "key_expire=1h"
      --exec_timeout=24h  Default time limit of one step. Example: "exec_timeout=30m"
      --timeout=30s       Timeout for calling endpoints on the engine.
      --max-requests=0    Maximum number of concurrent requests. 0 to disable.
      --pool_size=30      Size of the execution work pool (step processes at once).
      --version           Show application version.
      --data_dir=DIR      LMDB environment and task workspaces (default: {data_dir}).
      --lang=zh           Language of messages and state words: zh or en.
      --max_output=1MiB   Bytes of output kept per step (head + tail).
      --max_body=1MiB     Largest request body accepted.
      --max_log=64MiB     Bytes of a step's log file kept on disk (the head, then a
                          marker line and the last 64 KiB).
      --token=TOKEN       Require "Authorization: Bearer TOKEN" on every route but /healthz
                          (also --token_file=PATH, not world-readable, or env OSREAPI_TOKEN).
                          Without a token only loopback clients are served.
      --tls_cert=PEM      Serve HTTPS with this certificate (and --tls_key=PEM);
      --tls_client_ca=PEM also require client certificates signed by this CA (mTLS).
      --max_steps=1000    Most steps in one task.
      --max_script=1MiB   Largest command_content of one step.
      --max_env_vars=256  Most env_vars of one step (--max_env_bytes=128KiB in all).
      --max_header=64KiB  Largest request header block.
      --read_timeout=10s  A request's head must arrive whole within this (its body at >= 32 KiB/s).

Commands:
  help [<command>...]
    Show help.

  run
    Run server
{client_commands}"""

# Commands that drive a server over HTTP (osreapi/client/cli.py); imported only when one is used,
# so that the server never loads the client's libraries.
CLIENT_COMMANDS = ("submit", "get", "ls", "logs", "wait", "kill", "pause", "resume", "rm")

HELP_RUN = """\
usage: {prog} run [<flags>]

Run server: listen on --addr, run submitted steps, keep results under --data_dir.
Flags may come before or after the command, spelled with '_' or '-', with '=' or a space.
See "{prog} help" for the list of flags.
"""


HELP_TOPICS = ("help", "run")  # commands `help <command>` knows


def _checked(parse: Callable[[str], float], minimum: float, what: str, strict: bool = False) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = parse(text)
        except (InvalidValue, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value < minimum or (strict and value == minimum):
            bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, got {text!r}")
        return value

    return convert


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidValue(f"invalid integer {text!r}") from None


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Register --a_b and --a-b as one flag."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"])
    parser.add_argument(*spellings, **kwargs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line naming the flag, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--debug", action="store_true")
    _flag(parser, "addr", default=":2376")
    duration = parse_duration
    _flag(parser, "key_expire", default=parse_duration("48h"), type=_checked(duration, 0, "key_expire", strict=True))
    _flag(parser, "exec_timeout", default=parse_duration("24h"), type=_checked(duration, 0, "exec_timeout"))
    _flag(parser, "timeout", default=30.0, type=_checked(duration, 0, "timeout", strict=True))
    _flag(parser, "max-requests", dest="max_requests", default=0, type=_checked(_integer, 0, "max-requests"))
    _flag(parser, "pool_size", default=30, type=_checked(_integer, 1, "pool_size"))
    _flag(parser, "data_dir", default=None)
    _flag(parser, "lang", default="zh", choices=LANGUAGES)
    _flag(parser, "max_output", default=1 << 20, type=_checked(parse_size, 1, "max_output"))
    _flag(parser, "max_body", default=1 << 20, type=_checked(parse_size, 1, "max_body"))
    _flag(parser, "max_log", default=64 << 20, type=_checked(parse_size, 1, "max_log"))
    _flag(parser, "token", default=None)
    _flag(parser, "token_file", default=None)
    _flag(parser, "tls_cert", default=None)
    _flag(parser, "tls_key", default=None)
    _flag(parser, "tls_client_ca", default=None)
    _flag(parser, "max_steps", default=1000, type=_checked(_integer, 1, "max_steps"))
    _flag(parser, "max_script", default=1 << 20, type=_checked(parse_size, 1, "max_script"))
    _flag(parser, "max_env_vars", default=256, type=_checked(_integer, 0, "max_env_vars"))
    _flag(parser, "max_env_bytes", default=128 * 1024, type=_checked(parse_size, 0, "max_env_bytes"))
    _flag(parser, "max_header", default=64 * 1024, type=_checked(parse_size, 1024, "max_header"))
    _flag(parser, "read_timeout", default=10.0, type=_checked(duration, 0, "read_timeout", strict=True))
    parser.add_argument("command", nargs="?")
    parser.add_argument("args", nargs="*")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "osreapi"
    if prog in ("__main__.py", "-m", "-c"):
        prog = "osreapi"
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if word in CLIENT_COMMANDS or word in ("run", "help")), None)
    if command in CLIENT_COMMANDS:
        from .client import cli as client_cli

        rest = list(argv)
        rest.remove(command)
        return client_cli.main(command, rest, prog)
    parser = build_parser(prog)
    args = parser.parse_intermixed_args(argv)
    if args.version:
        print(__version__)
        return 0
    from .embed import default_data_dir

    if args.help or args.command in (None, "help"):
        topics = args.args if args.command == "help" else ([args.command] if args.command else [])
        from .client import cli as client_cli

        unknown = [t for t in topics if t not in client_cli.COMMANDS and t not in HELP_TOPICS]
        if unknown:
            parser.error(f"unknown command {unknown[0]!r} (commands: {', '.join(HELP_TOPICS + CLIENT_COMMANDS)})")
        for number, topic in enumerate(topics or [None]):  # `help ls wait`: each one's help, in turn
            if number:
                print()
            if topic in client_cli.COMMANDS:
                client_cli.build_parser(topic, prog).print_help()
                continue
            text = HELP_RUN if topic == "run" else HELP
            commands = client_cli.commands_help(prog)
            print(text.format(prog=prog, data_dir=default_data_dir(), client_commands=commands), end="")
        if args.command is None and not args.help:
            print(f"{prog}: error: expected a command ({', '.join(['run', *CLIENT_COMMANDS])})", file=sys.stderr)
            return 2
        return 0
    if args.command != "run":
        parser.error(f"unknown command {args.command!r} (commands: help, run, {', '.join(CLIENT_COMMANDS)})")
    if args.args:
        parser.error(f"unexpected arguments: {' '.join(args.args)}")
    return run(args)


def _tune_malloc(arenas: int = 2, mmap_from: int = 128 * 1024) -> None:
    """glibc gives each busy thread its own malloc arena; with an actor per step that fragments
    memory (RSS grows by tens of MB). Two arenas cost no measurable speed here.
    Blocks from `mmap_from` bytes up (requests being read, answers) are mapped and given back to the
    system when freed: glibc's threshold otherwise rises to the largest block freed, and a flood of
    1 MiB uploads left their memory in the heap (RSS ~1.5x the bytes the intake's budget allows)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.mallopt(-3, mmap_from)  # M_MMAP_THRESHOLD, fixed: no longer raised by each free
    except (OSError, AttributeError):
        pass


def _leave_out_openssl() -> None:
    """Without TLS the server needs no OpenSSL, yet bottle's imports (http.client, hmac) load it:
    ~4 MB of an idle server's ~31. Held back, `import ssl` fails as on a Python built without TLS
    (http.client expects that) and hmac/hashlib use Python's built-in hashes."""
    for name in ("_ssl", "_hashlib"):
        sys.modules.setdefault(name, None)


class _CannotStart(Exception):
    """A start-up check failed: print the message, exit with the status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def run(args: argparse.Namespace) -> int:
    _tune_malloc()
    if not args.tls_cert:
        _leave_out_openssl()
    _setup_logging(args.debug)
    stop = threading.Event()
    # SIGHUP too: a server started from a shell gets it when the session ends, and would die at once
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:  # Windows has no SIGHUP
            signal.signal(sig, lambda *_: stop.set())  # the main thread runs the ordered shutdown
    try:
        executor, server = _serve(args)
    except _CannotStart as exc:
        print(f"osreapi: error: {exc}", file=sys.stderr)
        return exc.status
    # Start-up objects live forever: keep them out of the collector's way; collect young objects
    # less often (each step allocates a burst of short-lived records and messages).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)
    try:  # whatever happens from here, the server stops in order: never one left serving, deaf to signals
        _announce(f"osreapi {__version__} listening on {server.url} (data dir: {executor.config.data_dir})")
        while not stop.wait(1.0):  # a timeout keeps signal delivery prompt on every platform
            pass
        logging.getLogger(__name__).info("shutting down: closing HTTP, interrupting running tasks, flushing the store")
    finally:
        server.stop()
        executor.close()
    return 0


def _announce(line: str) -> None:
    """The listening line on stdout, or on the log when nobody reads stdout any more (`| head -1`
    has exited): a server that cannot print still serves, and stops on a signal."""
    try:
        print(line, flush=True)
    except OSError:  # BrokenPipeError; EIO once the terminal has gone
        with contextlib.suppress(OSError):  # no second error when the interpreter flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        logging.getLogger(__name__).warning("stdout is closed: %s", line)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pykka").addFilter(one_line_refusals)


def _serve(args: argparse.Namespace):
    """Check the flags, start the engine, then the HTTP server; raise _CannotStart."""
    from .http.app import HttpSettings, make_app
    from .http.server import HttpServer, raise_fd_limit

    host, port, token, tls = _network(args)
    raise_fd_limit()  # first: the engine fits its pool to the limit
    executor = _engine(args)
    settings = HttpSettings(lang=args.lang, max_body=int(args.max_body), max_requests=int(args.max_requests), token=token)
    try:
        app = make_app(executor, settings)
    except InvalidValue as exc:  # the data dir's audit key cannot be made or read
        executor.close()
        raise _CannotStart(1, f"--data_dir: {exc}") from None
    try:
        server = HttpServer(app, host, port, tls=tls, max_header=int(args.max_header),
                            read_timeout=args.read_timeout)
        server.start()
    except (OSError, ValueError) as exc:
        executor.close()
        raise _CannotStart(1, f"cannot serve on {args.addr}: {exc}") from None
    log = logging.getLogger(__name__)
    if token is not None:
        log.info("bearer token required on every route but /healthz")
    elif not server.loopback_only:
        log.warning(
            "listening beyond loopback without a token: protected mode serves loopback clients only; "
            "set --token, --token_file or OSREAPI_TOKEN to serve others"
        )
    return executor, server


def _network(args: argparse.Namespace):
    """(host, port, token, TLS settings) from the flags."""
    from .http.security import load_token
    from .http.server import TlsSettings, parse_addr

    try:
        host, port = parse_addr(args.addr)
    except InvalidValue as exc:
        raise _CannotStart(2, f"argument --addr: {exc}") from None
    try:
        token = load_token(args.token, args.token_file)
        if args.token is not None:
            logging.getLogger(__name__).warning(
                "--token is visible to every local user in the process list; prefer --token_file or OSREAPI_TOKEN")
    except InvalidValue as exc:
        raise _CannotStart(2, str(exc)) from None
    # Every step inherits the server's environment: a script running `env` would print the token
    # into its output, its answers and its log file.
    os.environ.pop("OSREAPI_TOKEN", None)
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        raise _CannotStart(2, "--tls_cert and --tls_key go together (and --tls_client_ca needs them)")
    tls = TlsSettings(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    if tls is not None:
        _check_tls_files(tls)
    return host, port, token, tls


def _check_tls_files(tls) -> None:
    """Load the certificate, key and CA once here, so that a wrong one is an error naming its flag
    and file (the server's own load says only "No such file or directory" or "PEM lib")."""
    import ssl

    for flag, path in (("--tls_cert", tls.cert), ("--tls_key", tls.key), ("--tls_client_ca", tls.client_ca)):
        try:
            if path is not None:
                open(path, "rb").close()
        except OSError as exc:
            raise _CannotStart(2, f"{flag}: cannot read {path}: {exc.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:  # an empty password: a key that needs one fails here instead of prompting on the terminal
        context.load_cert_chain(tls.cert, tls.key, password=b"")
    except ssl.SSLError as exc:
        raise _CannotStart(2, f"--tls_cert / --tls_key: {tls.cert} and {tls.key} are not a PEM certificate "
                              f"and its unencrypted key ({exc.reason or exc})") from None
    try:
        if tls.client_ca:
            context.load_verify_locations(cafile=tls.client_ca)
    except ssl.SSLError as exc:
        raise _CannotStart(2, f"--tls_client_ca: {tls.client_ca} holds no PEM certificate ({exc.reason or exc})") from None


def _warn_if_open(data_dir: Path) -> None:
    """An existing data dir keeps its mode (the user chose it); one that every local user may
    enter is said, once the server can use it, with the command that closes it."""
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o007:
        logging.getLogger(__name__).warning(
            "data dir %s is open to every local user (mode %04o): its scripts, env values and outputs "
            "can be read; chmod o-rwx %s", data_dir, mode, data_dir)


def _engine(args: argparse.Namespace):
    import lmdb

    from .embed import Executor, default_data_dir
    from .spec import Limits

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        executor = Executor(
            data_dir,
            pool_size=args.pool_size,
            exec_timeout=args.exec_timeout,
            key_expire=args.key_expire,
            max_output=int(args.max_output),
            max_log=int(args.max_log),
            call_timeout=args.timeout,
            limits=Limits(int(args.max_steps), int(args.max_script), int(args.max_env_vars), int(args.max_env_bytes)),
        )
    except DataDirInUse as exc:
        raise _CannotStart(1, str(exc)) from None
    except (DataDirUnsafe, StoreDamaged) as exc:
        raise _CannotStart(1, f"--data_dir: {exc}") from None
    except OSError as exc:  # not a directory, no permission, a file where db/ or workspace/ goes
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(data_dir) else ""
        reason = "not a directory" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror or exc
        raise _CannotStart(1, f"--data_dir: cannot use {data_dir}{where}: {reason}") from None
    except lmdb.Error as exc:  # a damaged or foreign database under db/
        raise _CannotStart(1, f"--data_dir: cannot open the database in {data_dir / 'db'}: {exc}") from None
    _warn_if_open(data_dir)
    return executor
