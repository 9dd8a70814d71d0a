"""What every actor of the engine shares."""

from __future__ import annotations

import queue
from typing import Any

import pykka

from .reply import Reply


class EngineActor(pykka.ThreadingActor):
    """An actor whose thread does not keep the interpreter alive: a program that embeds the engine
    and ends without close() (an exception, a forgotten `with`) exits instead of hanging at exit,
    and the Executor closes the engine on the way out (atexit): its steps are interrupted, their
    trees killed, the store flushed.

    Its mailbox is a SimpleQueue (C, one lock): a message from one actor to another costs half
    the CPU of pykka's default queue.Queue (a Condition in Python), and each step of a task takes
    about ten such messages.

    Subclasses that override on_stop or on_failure call this class's last."""

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue:
        return queue.SimpleQueue()

    def on_stop(self) -> None:
        self._refuse_mailbox()

    def on_failure(self, exception_type: Any = None, exception_value: Any = None, traceback: Any = None) -> None:
        self._refuse_mailbox()

    def _refuse_mailbox(self) -> None:
        """This actor has stopped (a tell now raises ActorDeadError): what its mailbox still holds
        is never handled. pykka answers the asks among it after this hook, but drops the tells:
        each is given to _unhandled first (the envelopes go back for pykka's own answers)."""
        left = []
        while not self.actor_inbox.empty():
            left.append(self.actor_inbox.get())
        for envelope in left:
            self._unhandled(envelope.message)
            self.actor_inbox.put(envelope)

    def _unhandled(self, message: Any) -> None:
        """A message this stopped actor never handles. A control request's Reply is answered with
        the ActorDeadError pykka gives an ask, not left to its caller's timeout; subclasses give
        back what else a message holds."""
        reply = getattr(message, "reply", None)
        if isinstance(reply, Reply):
            reply.fail(pykka.ActorDeadError(f"{self.actor_ref} stopped before handling the message"))
