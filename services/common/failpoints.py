"""Named crash points for tests that must kill a process at an exact line.

`SANAD_FAILPOINTS=outbox.after_write` makes the process SIGKILL itself when it reaches
that point, the same as an OOM kill or a node failure would; unset, it costs a dict look-up.
"""
from __future__ import annotations

import os
import signal

_ACTIVE = frozenset(filter(None, os.environ.get("SANAD_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
