"""The Ray cluster that `xtk predict --engine ray` and `xtk serve --engine ray` run on, joined or started for the
command and left as the command found it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ray_cluster(address: str | None) -> Iterator[None]:
    """Joins the cluster at `address` (none: the one `ray start` left here, else a local one started for the
    block and shut down after it). A cluster already joined in this process is used as it is.

    ray.init replaces the command's SIGTERM handler with sys.exit, and its core worker installs a crash handler
    that logs SIGTERM and aborts the process 3 s later (absl's alarm), in the middle of a drain. The command's own
    handler is put back, so SIGTERM ends a Ray command as it ends a local one: every `finally` runs, exit 0
    for serve."""
    import ray

    if ray.is_initialized():
        yield
        return
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level="WARNING")
    try:
        if before is not None:  # None: a handler set outside Python, which Python cannot put back
            signal.signal(signal.SIGTERM, before)
        yield
    finally:
        ray.shutdown()
