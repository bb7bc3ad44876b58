"""How a long-running command stops: SIGINT or SIGTERM sets an event the component's loop
watches, so it finishes its step, commits what is durable and closes cleanly."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """An event set by the next SIGINT or SIGTERM (installed for this process)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
