"""Telling an actor that may already have stopped."""

from __future__ import annotations

from typing import Any

import pykka


def tell_if_alive(ref: pykka.ActorRef, message: Any) -> bool:
    """Tell ref; False when it has stopped (a late timer, exit or reply is then simply dropped)."""
    try:
        ref.tell(message)
        return True
    except pykka.ActorDeadError:
        return False
