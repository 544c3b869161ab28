"""The training fast paths (MODEL.FAST_PATHS) compute what Detectron2's paths compute."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BitMasks
from torchvision.ops import roi_align

import maskrcnn_pp.engine.trainer as trainer_module
from maskrcnn_pp.data.dsb2018 import convert_dsb2018
from maskrcnn_pp.data.indexed_masks import IndexedBitMasks
from maskrcnn_pp.data.mapper import CheckedDatasetMapper
from maskrcnn_pp.engine.config import load_config
from maskrcnn_pp.modeling.roi_align import SparseROIAlign, sparse_roi_align
from maskrcnn_pp.studies.training_speed import SteppingTrainer
from tests.helpers import ROOT

CPU_STUDY = ROOT / "configs" / "cpu_study"
# Crowded real images: 1272x603 with 375 and 289 nuclei, 696x520 with 369 and 313.
CROWDED = ["a102535b0e88374bea4a1cfd9ee7cb3822ff54f4ab2a9845d428ec22f9ee2288",
           "20b20ab049372d184c705acebe7af026d3580f5fd5a72ed796e3622e1685af2f",
           "0ea221716cf13710214dcd331a61cea48308c3940df1d28cfc7fd817c83714e1",
           "07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5"]
DATASET = "test_fast_paths_crowded"


def _boxes(n: int, size: float, generator: torch.Generator) -> torch.Tensor:
    """Boxes of every size, some partly or wholly outside a (size x size) image."""
    xy = torch.rand(n, 2, generator=generator) * size * 1.2 - 0.1 * size
    wh = torch.rand(n, 2, generator=generator) * size * 0.5 + 0.2
    return torch.cat([xy, xy + wh], 1)


def test_indexed_masks_give_bitmasks_targets_exactly():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 48, 64, generator=generator) > 0.6
    index = torch.randint(0, 12, (40,), generator=generator)
    boxes = _boxes(40, 48, generator)
    indexed = IndexedBitMasks(masks)[index]
    copied = BitMasks(masks)[index]
    assert torch.equal(indexed.crop_and_resize(boxes, 28), copied.crop_and_resize(boxes, 28))
    keep = torch.arange(40) % 3 == 0                  # a second indexing (foreground)
    assert torch.equal(indexed[keep].crop_and_resize(boxes[keep], 14),
                       copied[keep].crop_and_resize(boxes[keep], 14))
    assert torch.equal(indexed.tensor, copied.tensor)
    assert torch.equal(indexed.nonempty(), copied.nonempty())
    assert len(indexed[5]) == 1 and torch.equal(indexed[5].tensor, copied[5].tensor)
    # No pixel is copied per proposal: every view shares the image's masks.
    assert indexed[keep].masks.data_ptr() == masks.data_ptr()


@pytest.mark.parametrize("aligned,sampling_ratio,scale,output", [
    (True, 0, 0.25, (7, 7)), (True, 0, 1 / 32, (14, 14)), (False, 2, 0.125, (7, 7)),
    (False, 0, 1.0, (3, 5))])
def test_sparse_roi_align_matches_torchvision(aligned, sampling_ratio, scale, output):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 16, 24, 32, generator=generator, requires_grad=True)
    boxes = _boxes(60, 32 / scale, generator)
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=generator).float(), boxes], 1)
    grad = torch.randn(60, 16, *output, generator=generator)
    expected = roi_align(features, rois, output, scale, sampling_ratio, aligned)
    (expected_grad,) = torch.autograd.grad(expected, features, grad)
    got = sparse_roi_align(features, rois, output, scale, sampling_ratio, aligned)
    (got_grad,) = torch.autograd.grad(got, features, grad)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got_grad, expected_grad, atol=1e-4, rtol=1e-5)
    assert expected_grad.abs().sum() > 0


def test_sparse_roi_align_falls_back_without_boxes():
    layer = SparseROIAlign((7, 7), 0.25, 0, aligned=True)
    out = layer(torch.randn(1, 4, 8, 8), torch.zeros(0, 5))
    assert out.shape == (0, 4, 7, 7)


@pytest.fixture(scope="module")
def crowded_dataset(dsb2018_root, tmp_path_factory):
    """Four crowded real DSB2018 images, registered as one training set."""
    src = tmp_path_factory.mktemp("crowded") / "stage1_train"
    for image_id in CROWDED:
        shutil.copytree(dsb2018_root / image_id, src / image_id)
    out = tmp_path_factory.mktemp("crowded_coco")
    convert_dsb2018(src, out, val_fraction=0.0, progress=False)
    if DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)
    register_coco_instances(DATASET, {}, str(out / "annotations" / "instances_train.json"),
                            str(out / "images"))
    yield DATASET
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


@pytest.mark.slow
def test_mapper_fast_paths_give_the_same_instances(crowded_dataset):
    """Masks outside the 256x256 crop are not decoded; the instances are the same."""
    cfg = load_config(str(CPU_STUDY / "mask_rcnn_pp.yaml"))
    fast, slow = (CheckedDatasetMapper(_with(cfg, "MODEL.FAST_PATHS", f), True)
                  for f in (True, False))
    for item in DatasetCatalog.get(crowded_dataset):
        for seed in range(3):
            np.random.seed(seed)
            a = fast(item)
            np.random.seed(seed)
            b = slow(item)
            assert torch.equal(a["image"], b["image"])
            ia, ib = a["instances"], b["instances"]
            assert isinstance(ia.gt_masks, IndexedBitMasks)
            assert 0 < len(ia) < len(item["annotations"])
            assert torch.equal(ia.gt_boxes.tensor, ib.gt_boxes.tensor)
            assert torch.equal(ia.gt_classes, ib.gt_classes)
            assert torch.equal(ia.gt_masks.tensor, ib.gt_masks.tensor)


def _with(cfg, key, value):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list([key, str(value)])
    return cfg


def _trainer(config: str, fast: bool, workdir) -> SteppingTrainer:
    torch.set_num_threads(1)
    return SteppingTrainer(config, ["DATASETS.TRAIN", f"('{DATASET}',)"], fast, str(workdir))


def _gradients(trainer: SteppingTrainer) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in trainer.trainer.model.named_parameters()
            if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mask_rcnn_pp", "mask_rcnn_baseline"])
def test_fixed_seed_training_keeps_its_losses(crowded_dataset, model, tmp_path, monkeypatch):
    """The fast data paths give exactly Detectron2's losses; with the sparse ROIAlign too,
    the first step's losses and every gradient agree to float rounding, and the next
    step's losses nearly so (from then on runs drift apart the way any rounding difference
    makes them, once a near-tie in proposal ranking flips)."""
    config = str(CPU_STUDY / f"{model}.yaml")
    reference = _trainer(config, False, tmp_path / "ref")
    fast = _trainer(config, True, tmp_path / "fast")
    reference.step()
    fast.step()
    expected, got = _gradients(reference), _gradients(fast)
    assert expected.keys() == got.keys() and len(got) > 50
    for name in expected:           # relative error of each parameter's gradient
        error = (got[name] - expected[name]).norm() / expected[name].norm().clamp(min=1e-12)
        assert error < 1e-3, (name, float(error))
    for step in range(2):
        if step:
            reference.step()
            fast.step()
        ref, new = reference.losses[step], fast.losses[step]
        assert ref.keys() == new.keys()
        for key in ref:
            assert new[key] == pytest.approx(ref[key], rel=1e-5 if step == 0 else 1e-3,
                                             abs=1e-7), (step, key)
    reference.step()
    monkeypatch.setattr(trainer_module, "use_sparse_roi_align", lambda model: 0)
    exact = _trainer(config, True, tmp_path / "exact")
    for _ in range(3):
        exact.step()
    assert exact.losses == reference.losses
