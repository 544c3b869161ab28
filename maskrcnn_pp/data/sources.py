"""Source data as users download it: a folder, or a .zip / .tar.gz / .tar of one.

Preparation scripts open their source through :func:`source_root`, so every data set
accepts the archive it is distributed as, and :func:`display_name` names a file inside an
archive as ``ARCHIVE:member/path`` in reports instead of a temporary path.
"""
from __future__ import annotations

import contextlib
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from ..utils.errors import UserError

__all__ = ["source_root", "display_name"]


@contextlib.contextmanager
def source_root(src: Path) -> Iterator[Path]:
    """The folder to search: ``src`` itself, or an archive extracted to a temporary folder."""
    src = Path(src)
    if src.is_dir():
        yield src
        return
    if not src.is_file():
        raise UserError(f"source {src} does not exist")
    with tempfile.TemporaryDirectory(prefix="maskrcnn_pp_source_") as tmp:
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


def display_name(path: Path, root: Path, src: Path) -> str:
    """``path`` as a user knows it: itself in a folder source, ``SRC:member`` in an archive."""
    path, root, src = Path(path), Path(root), Path(src)
    if root == src or not path.is_relative_to(root):
        return str(path)
    return f"{src}:{path.relative_to(root).as_posix()}"
