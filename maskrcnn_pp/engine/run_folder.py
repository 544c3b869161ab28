"""One training per ``OUTPUT_DIR``: an earlier run is continued or replaced on purpose, never
mixed with a new one, and two trainers never write the same folder.

Detectron2 trains into any folder: a new run over a finished one replaces its
``model_final.pth`` and appends to its ``metrics.json``, and two trainers in one folder
interleave their records and checkpoints. :func:`check_earlier_run` refuses the first
unless ``--resume`` or ``--overwrite`` says what to do; :class:`RunFolderLock` refuses the
second, with the PID of the trainer that holds the folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..utils.errors import UserError
from ..utils.io import PathLike, fsync_folder

__all__ = ["check_earlier_run", "RunFolderLock", "LOCK_FILE"]

LOCK_FILE = "train.lock"
# What a training writes into OUTPUT_DIR: checkpoints, which make it a run to continue, and
# records, which belong to the run that wrote them.
_CHECKPOINT_FILES = ("last_checkpoint", "model_*.pth")
_RECORD_FILES = ("metrics.json", "events.out.tfevents.*")


def _files(output_dir: Path, patterns: tuple[str, ...]) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted({path for pattern in patterns for path in output_dir.glob(pattern)
                   if path.is_file()})


def check_earlier_run(output_dir: PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding an earlier training (a checkpoint) unless it is resumed or
    overwritten, and refuse both at once. A new run starts without the records of an
    earlier one: ``overwrite`` removes its checkpoints, metrics and events, and the records
    of a run that stopped before its first checkpoint (nothing to continue) are removed
    too, so that neither outlives its run in ``metrics.json``."""
    if resume and overwrite:
        raise UserError("--resume continues an earlier run, --overwrite replaces it: give one")
    output_dir = Path(output_dir)
    checkpoints = _files(output_dir, _CHECKPOINT_FILES)
    if checkpoints and resume:
        return
    if checkpoints and not overwrite:
        shown = ", ".join(path.name for path in checkpoints[:3])
        more = f" and {len(checkpoints) - 3} more" if len(checkpoints) > 3 else ""
        raise UserError(f"OUTPUT_DIR {output_dir} holds an earlier training ({shown}{more}): "
                        "--resume continues it, another OUTPUT_DIR starts a new one, "
                        "--overwrite replaces it")
    earlier = checkpoints + _files(output_dir, _RECORD_FILES)
    for path in earlier:
        path.unlink()
    if earlier:
        fsync_folder(output_dir)


class RunFolderLock:
    """An exclusive lock on ``OUTPUT_DIR/train.lock`` for as long as a trainer writes the
    folder; the file holds the trainer's PID for the message a second trainer gets.

    The operating system releases the lock when its process ends, however it ends, so a
    ``--resume`` after a kill is never blocked by a stale lock file.
    """

    def __init__(self, output_dir: PathLike):
        self.path = Path(output_dir) / LOCK_FILE
        self._file = None

    def __enter__(self) -> RunFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.path, "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise UserError(f"OUTPUT_DIR {self.path.parent} is being trained by process "
                            f"{holder} (lock {self.path}): wait for it to end or stop it, "
                            "or train into another OUTPUT_DIR") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._file = lock_file
        return self

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
