"""Progress bars that suit where they are written.

On a terminal (or in a notebook) this is tqdm's bar. Written to a log file or a pipe (a
batch job, ``nohup``, a study's ``train.log``), a bar redrawn with carriage returns turns
into one unreadable line of thousands of characters, so there it writes one plain line
(count, rate, elapsed and ETA) at most every ``log_interval`` seconds, and the final count
when it closes.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

__all__ = ["ProgressBar", "LOG_INTERVAL"]

# Seconds between two lines of a progress report written to a file.
LOG_INTERVAL = 30.0


def _in_notebook() -> bool:
    notebook = sys.modules.get("tqdm.notebook")
    return notebook is not None and issubclass(tqdm, notebook.tqdm_notebook)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressBar(tqdm):
    """``tqdm(...)`` with the same arguments, plus ``log_interval`` for non-terminals."""

    def __init__(self, *args, log_interval: float = LOG_INTERVAL, **kwargs):
        self._plain = not _in_notebook() and not _is_terminal(kwargs.get("file") or sys.stderr)
        self._log_interval = log_interval
        self._logged_at: float | None = None
        self._logged_n: float | None = None
        if self._plain:
            # close() writes the last line itself; nothing on a file needs clearing
            kwargs["leave"] = False
            kwargs.setdefault("ascii", True)
            kwargs.pop("dynamic_ncols", None)
        super().__init__(*args, **kwargs)

    def _write_line(self) -> None:
        self.fp.write(f"{self}\n")
        self.fp.flush()
        self._logged_at, self._logged_n = time.monotonic(), self.n

    def display(self, msg=None, pos=None):
        if not self._plain:
            return super().display(msg, pos)
        if msg == "":  # a request to clear the bar: a file keeps its lines
            return False
        if (self._logged_at is not None
                and time.monotonic() - self._logged_at < self._log_interval):
            return False
        self._write_line()
        return True

    def clear(self, nolock: bool = False) -> None:
        if not self._plain:
            super().clear(nolock)

    def close(self) -> None:
        if self._plain and not self.disable and self.n != self._logged_n:
            self._write_line()
        super().close()
