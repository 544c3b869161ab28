"""Child processes that end with their parent, even when the parent is killed with SIGKILL
and has no chance to stop them (a trainer left running would write into a run folder that
the parent's rerun trains again)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from typing import Callable, Optional

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` for :mod:`subprocess` that has Linux kill the child (SIGKILL) when the
    thread that started it ends; None where the kernel has no parent-death signal.

    The C library is loaded here, in the parent, so the child only makes one system call
    between fork and exec; a parent that died before that call is caught by its PID."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_parent_death_signal
