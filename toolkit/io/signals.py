"""SIGTERM and Ctrl-C as exceptions that every `finally` sees, and sent again where a library drops them.

pyzmq's poll, which vLLM waits in while its engine starts (tens of seconds on a CPU), runs the signal handler but
then retries on EINTR, losing the exception the handler raised: a `kill` in that window did nothing, and the
command went on to evaluate, and `xtk run` to train, to the end. A Ctrl-C there also stops the engine core (the
whole process group gets it), and vLLM then waits forever for its answer. So each signal is remembered:
`redelivered()` sends it again while such a call is still running, and `reraise()` raises it once it returned."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

# How often a signal is sent again to a call that has not ended since.
RESEND_S = 1.0


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a time-out, a scheduler), raised where Ctrl-C would be: every `finally` runs, so a vLLM
    engine's processes are stopped and a training's process group ended, instead of outliving the command."""


_received: int | None = None  # the signal number, while `handled()` is open


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise(signum, frame) -> None:
    global _received
    _received = signum
    raise _exception(signum)


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


@contextmanager
def redelivered():
    """Around a call in the main thread that may drop a signal's exception and then wait on: once a signal was
    received, it is sent to the main thread again every RESEND_S until the call has ended, by the exception or
    not; the handler raises it at the first wait that lets it through."""
    main = threading.main_thread()
    if threading.current_thread() is not main:
        yield
        return
    done, lock = threading.Event(), threading.Lock()

    def resend() -> None:
        while not done.wait(RESEND_S):
            with lock:  # never after the call has ended: the exception would hit the caller's clean-up
                if _received is not None and not done.is_set():
                    signal.pthread_kill(main.ident, _received)

    watcher = threading.Thread(target=resend, name="xtk-signal-resend", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        with lock:
            done.set()
        watcher.join()


def reraise() -> None:
    """Raise again a signal received while `handled()` is open (its first exception may have been lost)."""
    if _received is not None:
        raise _exception(_received)
