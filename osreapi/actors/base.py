"""What every actor of the engine shares."""

from __future__ import annotations

import queue

import pykka


class EngineActor(pykka.ThreadingActor):
    """An actor whose thread does not keep the interpreter alive: a program that embeds the engine
    and ends without close() (an exception, a forgotten `with`) exits instead of hanging at exit,
    and the Executor closes the engine on the way out (atexit): its steps are interrupted, their
    trees killed, the store flushed.

    Its mailbox is a SimpleQueue (C, one lock): a message from one actor to another costs half
    the CPU of pykka's default queue.Queue (a Condition in Python), and each step of a task takes
    about ten such messages."""

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue:
        return queue.SimpleQueue()
