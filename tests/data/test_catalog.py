"""The semantic catalog (data/catalog.py): lazy, idempotent registration that says how to
prepare a missing data set."""
from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog

from maskrcnn_pp.data.catalog import DatasetNotPreparedError, register_semantic_datasets


def test_registration_is_lazy_idempotent_and_explains_missing_data(prepared_liver,
                                                                   monkeypatch, tmp_path):
    register_semantic_datasets()
    register_semantic_datasets()
    dicts = DatasetCatalog.get("liver_train")
    assert len(dicts) == 6
    assert Path(dicts[0]["sem_seg_file_name"]).parent.name == "labels"
    assert Path(dicts[0]["file_name"]).name == Path(dicts[0]["sem_seg_file_name"]).name
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotPreparedError, match="prepare_nodule.py <"):
        DatasetCatalog.get("nodule_val")
