"""SIGTERM and Ctrl-C as exceptions that every `finally` sees, and remembered where a library drops them.

pyzmq's poll, which vLLM waits in while its engine starts (tens of seconds on a CPU), runs the signal handler but
then retries on EINTR, losing the exception the handler raised: a `kill` in that window did nothing, and the
command went on to evaluate, and `xtk run` to train, to the end. So each signal is also remembered, and
`reraise()` raises it again where such a wait has returned."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a time-out, a scheduler), raised where Ctrl-C would be: every `finally` runs, so a vLLM
    engine's processes are stopped and a training's process group ended, instead of outliving the command."""


_received: type[KeyboardInterrupt] | None = None


def _raise(signum, frame) -> None:
    global _received
    _received = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    raise _received()


@contextmanager
def handled():
    """While open, SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt in the main thread (a SIGINT that was
    ignored, as in a background job, stays ignored); only the main thread may set handlers."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mine = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        mine.append(signal.SIGINT)
    previous = {s: signal.signal(s, _raise) for s in mine}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received = None


def reraise() -> None:
    """Raise again a signal received while `handled()` is open (its first exception may have been lost)."""
    if _received is not None:
        raise _received()
