"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

from .errors import UserError

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_folder(folder: PathLike) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_stream(path: PathLike, write: Callable[[IO[bytes]], None],
                        check: Optional[Callable[[str], None]] = None) -> None:
    """Stream ``write`` into a temporary file beside ``path``, fsync it, optionally
    ``check`` it, then rename it over ``path``; on any failure ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    atomic_write_stream(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: Optional[int] = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def cut_json_lines(path: PathLike, stop: Callable[[Any], bool] = lambda record: False
                   ) -> list:
    """The records of a JSON Lines file before its first unreadable or unfinished line (a
    record cut short by a kill) or its first record for which ``stop`` is true; the file is
    truncated there, in place, so an append-mode handle on it stays valid. No file: []."""
    if not os.path.isfile(path):
        return []
    records, keep = [], 0
    with open(path, "rb") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n") or stop(record):
                break
            records.append(record)
            keep += len(line)
    if keep < os.path.getsize(path):
        os.truncate(path, keep)
    return records


def check_output_dir(path: PathLike, what: str) -> Path:
    """Create folder ``path`` (with its parents) and prove it writable now, so a tool
    fails before its slow work rather than after it; :class:`UserError` names ``what``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{what} {path}: cannot be created or written "
                        f"({err.strerror or err})") from None
    return path


def check_output_file(path: PathLike, what: str) -> Path:
    """:func:`check_output_dir` for the folder of file ``path``, which must not be a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder, expected a file name")
    check_output_dir(path.parent, what)
    return path


def replace_between_markers(path: PathLike, text: str, markers: tuple[str, str]) -> None:
    """Put ``text`` between the two ``markers`` lines of the document at ``path`` (appended
    with them if absent), so that a tool can rewrite its own section of a hand-written
    document; written atomically."""
    path = Path(path)
    document = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{markers[0]}\n{text.strip()}\n{markers[1]}"
    pattern = re.compile(re.escape(markers[0]) + ".*?" + re.escape(markers[1]), re.S)
    if pattern.search(document):
        document = pattern.sub(lambda _: block, document)
    else:
        document = document.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, document)
