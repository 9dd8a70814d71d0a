"""When a request is whole enough for a worker (osreapi/http/intake.py): the rule on its own."""

from __future__ import annotations

import pytest

from osreapi.http.intake import ChunkWalk, request_ready

HEAD = b"POST / HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    "data, ready, body",
    [
        (b"GET / HTTP/1.1\r\nHost: x", False, 0),  # head not finished
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True, 0),
        (HEAD + b"Content-Length: 5\r\n\r\nab", False, 5),  # body owed
        (HEAD + b"content-length: 5\r\n\r\nabcde", True, 5),
        (HEAD + b"Content-Length: 5\r\n\r\nabcdeGET / HTTP/1.1\r\n", True, 5),  # a pipelined next request follows
        (HEAD + b"Content-Length: -1\r\n\r\n", True, 0),  # malformed: the parser answers 400 at once
        (HEAD + b"Content-Length: 2000\r\n\r\n", True, 0),  # over max_body: answered 413 unread
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", False, 1000),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", True, 1000),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nabcde\r\n0\r\nTrailer: t\r\n\r\n", True, 1000),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", True, 1000),  # malformed chunk size
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n7d0\r\n", True, 1000),  # 2000 bytes announced: over
    ],
)
def test_request_ready(data: bytes, ready: bool, body: int):
    assert request_ready(data, max_header=4096, max_body=1000) == (ready, body)


def test_a_head_over_max_header_goes_to_the_parser_to_be_refused():
    assert request_ready(b"GET / HTTP/1.1\r\nX: " + b"y" * 5000, max_header=4096, max_body=1000) == (True, 0)


def test_a_chunked_body_is_walked_once_across_reads():
    walk = ChunkWalk()
    data = bytearray(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(3000):  # 3,000 one-byte chunks arriving one by one
        data += b"1\r\nx\r\n"
        assert request_ready(data, 4096, 100_000, walk) == (False, 100_000)
    assert walk.total == 3000 and walk.pos == len(data)
    data += b"0\r\n\r\n"
    assert request_ready(data, 4096, 100_000, walk) == (True, 100_000)
