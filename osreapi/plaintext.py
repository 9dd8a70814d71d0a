"""Text that must stay plain ASCII: digits that int() reads, and a token an HTTP header carries."""

from __future__ import annotations

import re

from .errors import InvalidValue

ASCII_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() takes '²', which int() refuses


def header_safe(token: str, source: str) -> str:
    """The token, if an HTTP header can carry it: printable ASCII. A header carries bytes, not text:
    a server's token beyond ASCII was never matched (`pässwort` arrives as other characters), and
    the client's made httpx raise (or echo a token holding a line break in its error). The token
    itself is never shown."""
    bad = next((i for i, char in enumerate(token) if not " " <= char <= "~"), None)
    if bad is not None:
        raise InvalidValue(f"{source}: character {bad + 1} of the token cannot travel in an HTTP header "
                           "(printable ASCII only)")
    return token
