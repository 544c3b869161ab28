"""Source data as users download it: a folder, or a .zip / .tar.gz / .tar of one.

Preparers open their source through :func:`source_root`, so every data set accepts the
archive it is distributed as, search it with :func:`walk`, which follows symlinked folders
(a data set assembled from links is found like a copied one), and name a file inside an
archive as ``ARCHIVE:member/path`` in reports (:func:`display_name`) instead of a
temporary path.
"""
from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from ..utils.errors import UserError

__all__ = ["source_root", "walk", "display_name"]


@contextlib.contextmanager
def source_root(src: Path, scratch: Path | None = None) -> Iterator[Path]:
    """The folder to search: ``src`` itself, or an archive extracted to a temporary folder
    under ``scratch`` (default: the system's temporary folder).

    Members are copied to disk in bounded chunks by ``tarfile`` / ``zipfile`` (16 / 64 KiB
    at a time), never read whole. Preparers put ``scratch`` beside their output: the
    system's temporary folder is often in memory (tmpfs), where an extracted archive would
    cost as much memory as its size.
    """
    src = Path(src)
    if src.is_dir():
        yield src
        return
    if not src.is_file():
        raise UserError(f"source {src} does not exist")
    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".maskrcnn_pp_source_", dir=scratch) as tmp:
        try:
            if zipfile.is_zipfile(src):
                with zipfile.ZipFile(src) as archive:
                    archive.extractall(tmp)
            else:
                with tarfile.open(src) as archive:
                    archive.extractall(tmp, filter="data")
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError,
                ValueError) as err:
            raise UserError(f"cannot read archive {src}: {err or type(err).__name__} "
                            "(expected a folder, .zip, .tar.gz or .tar)") from err
        yield Path(tmp)


def walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` of ``root`` in sorted order, following symlinked folders (each real
    folder once, so a link loop ends), without hidden folders or macOS ``__MACOSX`` forks.

    Like ``os.walk``, a caller may remove names from the yielded folder list to not descend
    into them; paths keep the link's name, so reports name what the user sees.
    """
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        identity = os.stat(dirpath)
        if (identity.st_dev, identity.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((identity.st_dev, identity.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
        yield Path(dirpath), dirnames, sorted(filenames)


def display_name(path: Path, root: Path, src: Path) -> str:
    """``path`` as a user knows it: itself in a folder source, ``SRC:member`` in an archive."""
    path, root, src = Path(path), Path(root), Path(src)
    if root == src or not path.is_relative_to(root):
        return str(path)
    return f"{src}:{path.relative_to(root).as_posix()}"
