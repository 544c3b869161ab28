"""The configs shipped with maskrcnn_pp, found by name as Detectron2's ``model_zoo`` finds its own.

A wheel carries ``configs/`` inside the package (``maskrcnn_pp/configs``); a source checkout or
an editable install reads the repository's ``configs/`` beside the package. Either way a user
outside the clone writes ``cfg.merge_from_file(maskrcnn_pp.get_config_file("mask_rcnn_pp.yaml"))``.
"""
from __future__ import annotations

from pathlib import Path

from .utils.errors import UserError

__all__ = ["configs_root", "get_config_file", "list_config_files"]

_PACKAGE = Path(__file__).resolve().parent


def configs_root() -> Path:
    """The folder that holds the shipped configs."""
    packaged = _PACKAGE / "configs"
    return packaged if packaged.is_dir() else _PACKAGE.parent / "configs"


def list_config_files() -> list[str]:
    """Every shipped config, as the relative name :func:`get_config_file` takes."""
    root = configs_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def get_config_file(name: str) -> str:
    """Path of the shipped config ``name`` (e.g. ``"mask_rcnn_pp.yaml"`` or
    ``"semantic/polyp_unetpp.yaml"``); :class:`UserError` naming the choices otherwise."""
    root = configs_root()
    path = (root / name).resolve()
    if path.suffix != ".yaml" or not path.is_file() or root.resolve() not in path.parents:
        raise UserError(f"no shipped config {name!r}; choose one of: "
                        + ", ".join(list_config_files()))
    return str(path)
