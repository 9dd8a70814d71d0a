"""The client's two last hangs: a server dripping its answer's head held every call past
--request_timeout (httpx bounds each read, not the answer), and one endless line of an event stream
made httpx-sse buffer without limit. Also the event-stream rules of our own parser."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable

import pytest

from osreapi.client import Client, ConnectionFailed, Fleet
from osreapi.client.follow import Followers
from osreapi.client.sse import Event, EventTooLong, events
from osreapi.embed import TaskResult
from osreapi.records import StepRecord, TaskRecord
from osreapi.vocabulary import State

from .conftest import sh, wait_until
from .test_client_cli import osreapi
from .test_hunt9_client import HostileServer, hostile  # noqa: F401 - the fixture

TIMEOUT = 2.0  # --request_timeout of these tests; each call must end within 10 times that


def drip_head(conn: socket.socket, head: bytes) -> None:
    """A status line, then a header byte every 0.5 s (2 minutes at most), until the client leaves."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for byte in itertools.islice(itertools.cycle(b"X-Slow: drip\r\n"), 240):
        conn.sendall(bytes([byte]))
        time.sleep(0.5)


def outcomes(calls: dict[str, Callable[[], object]], seconds: float) -> dict[str, BaseException | None]:
    """What each call raised (None: nothing), all run at once on threads so that a hang fails the
    test instead of holding it: a TimeoutError of ours for a call still running after `seconds`."""
    raised: dict[str, BaseException | None] = {}

    def run(name: str, call: Callable[[], object]) -> None:
        try:
            call()
            raised[name] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised[name] = exc

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {name: raised.get(name, TimeoutError(f"still waiting after {seconds:g}s")) for name in calls}


def on_client(url: str, call: Callable[[Client], object], **settings) -> Callable[[], object]:
    def run() -> object:
        with Client(url, **settings) as remote:
            return call(remote)

    return run


@pytest.mark.timeout(120)
def test_a_dripped_head_ends_every_call_at_the_request_timeout(hostile):
    server = hostile(drip_head)
    calls = {
        "get": lambda remote: remote.get("x"),
        "submit": lambda remote: remote.submit([sh("true")]),
        "control": lambda remote: remote.kill("x"),
        "wait": lambda remote: remote.wait("x"),
        "ls": lambda remote: remote.list(),
        "logs": lambda remote: remote.logs("x", 0, follow=True),
    }
    results = outcomes({name: on_client(server.url, call, timeout=TIMEOUT) for name, call in calls.items()}, 10 * TIMEOUT)
    for name, error in results.items():
        assert isinstance(error, ConnectionFailed), (name, error)
        assert str(error) == f"{server.url}: the answer was not complete within 2s", name
        assert not error.retry  # a hung server costs one timeout, not one per reconnect


@pytest.mark.timeout(120)
def test_a_dripped_head_is_one_line_in_the_terminal_and_in_a_fleet(hostile):
    server = hostile(drip_head)
    for lang, text in (("en", "the answer was not complete within 2s"), ("zh", "应答未在 2s 内完成")):
        done = osreapi(server.url, "ls", "--request_timeout", "2s", "--lang", lang, timeout=10 * TIMEOUT)
        assert done.returncode == 2 and done.stderr == f"osreapi: error: {server.url}: {text}\n"
    with Fleet([f"127.0.0.1:{server.port}"], timeout=TIMEOUT) as fleet:
        [row] = fleet_rows(fleet)
    assert isinstance(row.error, ConnectionFailed) and str(row.error).endswith("the answer was not complete within 2s")
    done = osreapi(server.url, "get", "x", "--hosts", f"127.0.0.1:{server.port}", "--request_timeout", "2s",
                   "--lang", "en", timeout=10 * TIMEOUT)
    assert done.returncode != 0 and "the answer was not complete within 2s" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def fleet_rows(fleet: Fleet) -> list:
    rows: list = []
    error = outcomes({"get": lambda: rows.extend(fleet.get("x"))}, 10 * TIMEOUT)["get"]
    assert error is None, error
    return rows


# -- one endless line of an event stream ------------------------------------------------------

BOUND = 1 << 20  # the client's max_answer in these tests: one line, one event


class EndlessEvents(HostileServer):
    """An event stream's head, then `data: ` and `filler` without end (64 MiB at most); records,
    per connection, the bytes sent and whether the client went away first."""

    def __init__(self, filler: bytes) -> None:
        self.filler = filler
        self.ends: list[tuple[int, bool]] = []
        super().__init__(self.stream)

    def stream(self, conn: socket.socket, head: bytes) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sent, left = 0, False
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: ")
            while sent < 64 << 20:
                conn.sendall(self.filler)
                sent += len(self.filler)
        except OSError:
            left = True
        self.ends.append((sent, left))
        conn.close()  # the stream's end
        raise OSError("closed")  # ends this connection's thread: no second request on it


@pytest.mark.timeout(120)
@pytest.mark.parametrize("filler", [b"x" * 65536, b"data: x\n" * 8192], ids=["one line", "one event"])
def test_an_endless_line_or_event_ends_the_follow_with_one_error(filler: bytes):
    """httpx-sse buffered an endless line for as long as the server sent it (64 MiB here)."""
    server = EndlessEvents(filler)
    try:
        with Client(server.url, max_answer=BOUND, timeout=TIMEOUT) as remote:
            error = outcomes({"logs": lambda: list(remote.logs("x", 0, follow=True))}, 30 * TIMEOUT)["logs"]
        assert isinstance(error, ConnectionFailed), error
        assert str(error) == f"{server.url}: /x/0/log: a line or an event over {BOUND} bytes, not an osreapi event stream"
        assert wait_until(lambda: len(server.ends) == server.requests, timeout=10)
        # one request (the stream, its status checked by the call): left by the client long before the server's end
        assert server.requests == 1 and all(left and sent < 4 * BOUND for sent, left in server.ends), server.ends
    finally:
        server.close()


@pytest.mark.timeout(120)
def test_followed_output_ends_with_one_error_line_past_the_bound():
    """`--follow` prints a step's endless line as one line naming the step and the bound."""
    server = EndlessEvents(b"x" * 65536)
    lines: list[str] = []
    try:
        with Client(server.url, max_answer=BOUND, timeout=TIMEOUT) as remote:
            followers = Followers(remote, "x", lines.append)
            step = StepRecord(index=0, name="talk", state=State.RUNNING)
            followers.start(TaskResult(TaskRecord(id="x", mode="sequential", count=1, accepted=0.0), (step,)))
            followers.finish(time.monotonic() + 30 * TIMEOUT)
    finally:
        server.close()
    assert lines == [f"[output of step 0: {server.url}: /x/0/log: a line or an event over {BOUND} bytes, "
                     "not an osreapi event stream]\n"]


@pytest.mark.timeout(60)
def test_a_follow_outlives_the_request_timeout(client):
    """The deadline bounds a log stream's head, not the stream: a step quiet for three request
    timeouts between two lines is followed to its end."""
    with Client(client.url, timeout=1) as remote:
        task_id = remote.submit([sh("echo one; sleep 3; echo two")])
        assert "".join(remote.logs(task_id, 0, follow=True)) == "one\ntwo\n"


# -- the event-stream rules (WHATWG HTML, "Interpreting an event stream") ---------------------


def parsed(*chunks: bytes, limit: int = 1 << 20) -> list[Event]:
    return list(events(iter(chunks), limit))


def test_line_ends_crlf_lf_and_cr_even_split_between_chunks():
    text = b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\r\n\r"
    expected = [Event("message", x, "", None) for x in "abcd"]
    assert parsed(text) == expected
    for cut in range(1, len(text)):  # every split of the stream into two chunks reads the same
        assert parsed(text[:cut], b"", text[cut:]) == expected, cut


def test_fields_comments_and_multi_line_data():
    stream = (b"\xef\xbb\xbf: a comment, the server's keep-alive\n"
              b"event: end\nid: 7\nretry: 1500\ndata: first\ndata:second\ndata\nunknown: x\n\n"
              b"data:  two spaces keep one\n\n"
              b"id: bad\x00id\ndata: no id field: the last one stays\n\n"
              b"event: ignored\n\n"  # no data: nothing dispatched, the event type forgotten
              b"data\n\n"
              b"data: cut before its empty line")
    assert parsed(stream) == [
        Event("end", "first\nsecond\n", "7", 1500),
        Event("message", " two spaces keep one", "7", None),
        Event("message", "no id field: the last one stays", "7", None),
        Event("message", "", "7", None),
    ]


def test_a_line_or_an_event_over_the_bound_is_refused_before_it_ends():
    with pytest.raises(EventTooLong):
        parsed(b"data: ", b"x" * 600, b"y" * 600, limit=1000)  # no line end ever came
    with pytest.raises(EventTooLong):
        parsed(b"data: x\n" * 200, limit=1000)
    assert parsed(b"data: " + b"x" * 990 + b"\n\n", limit=1000)[0].data == "x" * 990


def test_a_retry_field_of_thousands_of_digits_is_ignored_not_raised():
    """The parser's own digit check let `retry: 999…` (5,000 digits) reach int(), which refuses over
    4,300 digits: the ValueError came out of Client.logs as a traceback."""
    stream = [b"retry: " + b"9" * 5000 + b"\ndata: x\n\n"]
    assert [event.data for event in events(stream, limit=1 << 20)] == ["x"]


def test_a_log_event_id_of_thousands_of_digits_is_the_clients_error_not_a_traceback(hostile):
    """A server's event id went through int() unchecked for length: 5,000 digits raised ValueError
    out of Client.logs; it is the one-line error for an answer that is no osreapi log."""
    def sse(conn: socket.socket, head: bytes) -> None:
        body = b"id: " + b"7" * 5000 + b"\ndata: x\n\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body)

    server = hostile(sse)
    with Client(server.url, timeout=5) as client, pytest.raises(ConnectionFailed):
        list(client.logs("t", 0))
