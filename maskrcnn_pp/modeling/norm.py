"""Detectron2 norm names for the nested core, shared by the neck and the mask head."""
from __future__ import annotations

from detectron2.layers import get_norm

from .nested import NormSpec

__all__ = ["nested_norm"]


def nested_norm(norm: str) -> NormSpec:
    """A Detectron2 norm name as the nested core takes it. "GN" stays a name: the core's
    GroupNorm uses gcd(32, C) groups, so narrow nodes (< 32 channels) work too; every
    other name ("BN", "SyncBN", "FrozenBN", ...) is built by Detectron2's ``get_norm``."""
    return norm if norm in ("", "GN") else (lambda channels: get_norm(norm, channels))
