"""Named points where a test can kill gradsift as a crash would: ``GRADSIFT_STOP_AT=NAME`` (or
``NAME@N`` for its Nth visit) makes the process SIGKILL itself there, with no cleanup of any kind;
under torchrun, ``GRADSIFT_STOP_RANK=R`` limits that to the process of rank R.

The crash tests use it to stop a real command at chosen moments (inside a chunk, between chunks,
between a temporary file's write and its rename, mid-epoch) without timing guesses. Unset, a point
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

STOP_ENV = "GRADSIFT_STOP_AT"
_visits: Counter = Counter()


def stop_point(name: str) -> None:
    wanted = os.environ.get(STOP_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name or os.environ.get("GRADSIFT_STOP_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return
    _visits[name] += 1
    if _visits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
