"""What every actor of the engine shares."""

from __future__ import annotations

import pykka


class EngineActor(pykka.ThreadingActor):
    """An actor whose thread does not keep the interpreter alive: a program that embeds the engine
    and ends without close() (an exception, a forgotten `with`) exits instead of hanging at exit,
    and the Executor closes the engine on the way out (atexit): its steps are interrupted, their
    trees killed, the store flushed."""

    use_daemon_thread = True
