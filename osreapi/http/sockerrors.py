"""What a socket error says, over plain TCP and TLS alike. The ssl module's classes are told by
name: importing it would load OpenSSL (~4 MB) into a server that serves no TLS."""

from __future__ import annotations

_TLS_WAITS = ("SSLWantReadError", "SSLWantWriteError")
_TLS_GONE = ("SSLEOFError", "SSLZeroReturnError")


def is_tls(sock: object) -> bool:
    """An ssl.SSLSocket (told by what it has: `pending`, bytes it has already decrypted)."""
    return hasattr(sock, "pending")


def would_block(exc: BaseException | None) -> bool:
    """The socket cannot give or take bytes now (TLS: a record half read, or a write that must
    come first); try again when the selector says so."""
    return isinstance(exc, BlockingIOError) or type(exc).__name__ in _TLS_WAITS


def wants_write(exc: BaseException | None) -> bool:
    """A TLS operation that waits for the socket to be writable (else: readable)."""
    return type(exc).__name__ == "SSLWantWriteError"


def client_went_away(exc: BaseException | None) -> bool:
    """A reset, a broken pipe, or a TLS client that closed without saying goodbye."""
    return isinstance(exc, ConnectionError) or type(exc).__name__ in _TLS_GONE
