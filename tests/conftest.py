"""Shared fixtures. Real data comes from $MASKRCNN_PP_DATA (CI sets it to ../shared/data)."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

DATA_ENV = "MASKRCNN_PP_DATA"
_DATASETS_TMP = None


def pytest_configure(config):
    """Point Detectron2's data folder at a private temp dir before maskrcnn_pp is imported,
    so tests never write into (or read from) a user's ./datasets."""
    global _DATASETS_TMP
    _DATASETS_TMP = tempfile.mkdtemp(prefix="maskrcnn_pp_datasets_")
    os.environ["DETECTRON2_DATASETS"] = _DATASETS_TMP


def pytest_unconfigure(config):
    if _DATASETS_TMP:
        shutil.rmtree(_DATASETS_TMP, ignore_errors=True)


def _require_data_file(name: str) -> Path:
    """Path of a real-data archive; fails in CI, skips visibly elsewhere, if it is missing."""
    root = os.environ.get(DATA_ENV)
    path = Path(root) / name if root else None
    if path is None or not path.is_file():
        reason = (f"real data {name} not found: set {DATA_ENV} to the folder that holds it"
                  if not root else f"real data {path} not found")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true requires the real data)")
        pytest.skip(reason)
    return path


def _extract_once(tmp_path_factory, name: str) -> Path:
    archive = _require_data_file(name)
    out = tmp_path_factory.mktemp(name.split(".")[0])
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out


@pytest.fixture(scope="session")
def dsb2018_root(tmp_path_factory) -> Path:
    """The real DSB2018 stage-1 training folder (``<id>/images``, ``<id>/masks``)."""
    return _extract_once(tmp_path_factory, "dsb2018_stage1_train.tar.gz") / "stage1_train"


@pytest.fixture(scope="session")
def dsb2018_archive() -> Path:
    return _require_data_file("dsb2018_stage1_train.tar.gz")


@pytest.fixture(scope="session")
def kvasir_root(tmp_path_factory) -> Path:
    return _extract_once(tmp_path_factory, "kvasir_seg_256.tar.gz") / "Kvasir-SEG"


@pytest.fixture(scope="session")
def clinicdb_root(tmp_path_factory) -> Path:
    return _extract_once(tmp_path_factory, "cvc_clinicdb_256.tar.gz") / "CVC-ClinicDB"
