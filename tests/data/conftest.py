"""Fixtures of the data tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from maskrcnn_pp.data.prepare import prepare_liver
from tests.helpers import liver_phantom, write_lits


@pytest.fixture
def prepared_liver(tmp_path, monkeypatch) -> Path:
    """A liver data set of two phantom scans (6 + 6 slices, 64x64), prepared under a
    private ``$DETECTRON2_DATASETS``."""
    hu, seg = liver_phantom()
    write_lits(tmp_path / "lits", 0, hu, seg)
    write_lits(tmp_path / "lits", 1, hu, seg)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    prepare_liver(tmp_path / "lits", tmp_path / "datasets", size=64, val_fraction=0.5)
    return tmp_path / "datasets" / "liver"
