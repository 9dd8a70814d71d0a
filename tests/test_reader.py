"""The connection's reader: lines taken from its buffer at C speed read exactly as cheroot's own
reader (pure-Python io) reads them, whatever the line ends, the size asked and what is still on
its way; and every answer carries one valid Date."""

from __future__ import annotations

import email.utils
import socket
import time

import pytest
from cheroot.makefile import StreamReader

from osreapi.http.server import _Reader

from .conftest import Client

CASES = [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", [-1, -1, -1, -1]),
    (b"abc\ndef\n", [2, 2, 10, -1, 0]),
    (b"no line end at all", [4, -1]),
    (b"a\r\n\r\nbody", [-1, 1, -1, 3, 5]),
    (b"", [-1]),
]


def _lines(cls, data: bytes, sizes: list[int], later: bytes) -> list[bytes]:
    """Lines read with `sizes` from a reader whose buffer holds `data` (as the intake leaves it),
    `later` arriving on the socket."""
    ours, theirs = socket.socketpair()
    try:
        reader = cls(ours, "rb", 8192)
        reader._read_buf, reader._read_pos = data, 0
        theirs.sendall(later)
        theirs.shutdown(socket.SHUT_WR)
        return [reader.readline(size) for size in sizes]
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("data, sizes", CASES)
@pytest.mark.parametrize("later", [b"", b"tail\nmore"])
def test_lines_from_the_buffer_read_as_cheroots_reader_reads_them(data, sizes, later):
    assert _lines(_Reader, data, sizes, later) == _lines(StreamReader, data, sizes, later)


def test_every_answer_has_one_date_of_now(client: Client):
    conn = socket.create_connection((client.host, client.port), timeout=10)
    try:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
    finally:
        conn.close()
    for head in data.split(b"HTTP/1.1 ")[1:]:
        dates = [line for line in head.split(b"\r\n") if line.lower().startswith(b"date:")]
        assert len(dates) == 1, head
        when = email.utils.parsedate_to_datetime(dates[0].split(b":", 1)[1].strip().decode())
        assert when.tzinfo is not None and dates[0].endswith(b" GMT")
        assert abs(when.timestamp() - time.time()) < 600  # this day's, not a stale cache's
