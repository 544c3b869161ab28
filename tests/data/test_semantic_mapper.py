"""The semantic mapper (data/semantic_mapper.py): training resizes and flips image and
label, testing keeps the label at its stored size; labels that are not class ids are
named."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from maskrcnn_pp.data.catalog import SemanticDataError
from maskrcnn_pp.data.semantic_mapper import SemanticDatasetMapper


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_mapper_train_and_test(prepared_liver):
    record = {"file_name": str(next((prepared_liver / "val" / "images").iterdir())),
              "image_id": "x"}
    record["sem_seg_file_name"] = record["file_name"].replace("/images/", "/labels/")
    truth = read_png(Path(record["sem_seg_file_name"]))
    train = SemanticDatasetMapper(True, image_format="L", size=32, num_classes=1, flip=True)
    out = train(dict(record))
    assert out["image"].shape == (1, 32, 32) and out["image"].dtype == torch.float32
    assert out["sem_seg"].shape == (32, 32) and out["sem_seg"].dtype == torch.int64
    assert (out["height"], out["width"]) == (32, 32)
    assert 0 < out["sem_seg"].sum() < truth.sum()
    test = SemanticDatasetMapper(False, image_format="L", size=32, num_classes=1, flip=True)
    out = test(dict(record))
    assert out["image"].shape == (1, 32, 32)
    assert np.array_equal(out["sem_seg"].numpy(), truth)  # scored at the stored size
    assert (out["height"], out["width"]) == (64, 64)


def test_mapper_rejects_bad_labels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images/a.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(tmp_path / "labels/a.png"), np.full((8, 8), 255, np.uint8))
    cv2.imwrite(str(tmp_path / "labels/b.png"), np.zeros((6, 8), np.uint8))
    mapper = SemanticDatasetMapper(False, image_format="L", size=0, num_classes=1, flip=False)
    record = {"file_name": str(tmp_path / "images/a.png"), "image_id": "a"}
    with pytest.raises(SemanticDataError, match="a.png: label value 255 is not a class id"):
        mapper({**record, "sem_seg_file_name": str(tmp_path / "labels/a.png")})
    with pytest.raises(SemanticDataError, match="differ in size"):
        mapper({**record, "sem_seg_file_name": str(tmp_path / "labels/b.png")})
