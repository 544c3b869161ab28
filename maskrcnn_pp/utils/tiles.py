"""Where tiles start along one axis; shared by the training patches (``data``) and tiled
prediction (``inference``), which ``data`` may not import."""
from __future__ import annotations

__all__ = ["tile_starts"]


def tile_starts(length: int, tile_size: int, stride: int) -> list[int]:
    """Origins every ``stride`` pixels, the last tile aligned to the end so ``[0, length)``
    is covered (gaps remain where ``stride > tile_size``); ``[0]`` when one tile holds it."""
    if length <= tile_size:
        return [0]
    return [*range(0, length - tile_size, stride), length - tile_size]
