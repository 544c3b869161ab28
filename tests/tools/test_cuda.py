"""The GPU path: AMP training, evaluation, tiled prediction, TorchScript export, NCCL launch.

Marked ``cuda`` and skipped (with the reason shown) where CUDA is missing; ``make gpu-check``
runs them on a GPU machine together with the throughput benchmark. CI never depends on them.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.trainer import CheckedAMPTrainer, Trainer
from tests.helpers import ROOT, liver_phantom, write_lits

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the GPU tests run only on a GPU machine (make gpu-check)")]

QUICK = ROOT / "configs" / "quick_schedules"
QUICK_PP = str(QUICK / "mask_rcnn_pp_synthetic.yaml")
CUDA = ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "DATASETS.TEST", "()"]


def _train(config: str, out, opts: list[str]) -> Trainer:
    cfg = load_config(config, [*CUDA, *opts, "OUTPUT_DIR", str(out)])
    cfg.freeze()
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, CheckedAMPTrainer)   # AMP really on
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.resume_or_load(resume=False)
    trainer.train()
    after = list(trainer.model.parameters())
    assert all(p.is_cuda for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    losses = trainer.storage.latest()
    assert np.isfinite(losses["total_loss"][0])
    return trainer


@pytest.fixture(scope="module")
def trained_pp(tmp_path_factory):
    """Mask R-CNN++ (quick config) trained a few AMP iterations on the GPU."""
    out = tmp_path_factory.mktemp("pp_cuda")
    _train(QUICK_PP, out, ["SOLVER.MAX_ITER", "20", "SOLVER.WARMUP_ITERS", "0",
                           "SOLVER.CHECKPOINT_PERIOD", "100"])
    return out / "model_final.pth"


def test_amp_training_and_evaluation_of_mask_rcnn_pp(trained_pp):
    cfg = load_config(QUICK_PP, ["MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", str(trained_pp),
                                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    model = Trainer.build_model(cfg)
    Trainer.build_checkpointer(cfg, model).load(str(trained_pp), checkpointables=[])
    results = Trainer.test(cfg, model)      # one data set: its results directly
    assert {"segm", "bbox", "nuclei"} <= set(results)
    assert 0.0 <= results["nuclei"]["dsb_map"] <= 1.0 and np.isfinite(results["segm"]["AP"])


def test_amp_training_of_the_semantic_quick_config(tmp_path):

    from maskrcnn_pp.data.prepare import prepare_liver

    hu, seg = liver_phantom()
    for number in range(3):
        write_lits(tmp_path / "lits", number, hu, seg)
    prepare_liver(tmp_path / "lits", size=64, val_fraction=0.34)
    _train(str(QUICK / "semantic_2d_quick.yaml"), tmp_path / "run", ["SOLVER.MAX_ITER", "6"])


def _synthetic_image(size: int = 200) -> np.ndarray:
    from maskrcnn_pp.data.synthetic import SyntheticNucleiSpec, render_image

    return render_image(np.random.default_rng(3), SyntheticNucleiSpec(size=size), False)[0]


def test_tiled_prediction_on_cuda_matches_the_cpu(trained_pp):
    from maskrcnn_pp.inference import load_predictor

    image = _synthetic_image()
    results = {device: load_predictor(QUICK_PP, str(trained_pp), device=device, tile_size=96,
                                      tile_overlap=24, score_thresh=0.05)(image)
               for device in ("cuda", "cpu")}
    gpu, cpu = results["cuda"], results["cpu"]
    assert (gpu.height, gpu.width) == image.shape[:2]
    assert len(gpu.scores) > 0
    assert abs(len(gpu.scores) - len(cpu.scores)) <= max(2, len(cpu.scores) // 10)
    top = min(5, len(cpu.scores))
    np.testing.assert_allclose(gpu.scores[:top], cpu.scores[:top], atol=0.05)


def test_torchscript_export_on_cuda_predicts_like_eager(trained_pp, tmp_path):
    from maskrcnn_pp.inference import load_predictor

    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export_model.py"), "--config-file", QUICK_PP,
         "--weights", str(trained_pp), "--format", "torchscript", "--output", str(out),
         "MODEL.DEVICE", "cuda", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = _synthetic_image(128)
    exported = load_predictor(str(out / "model.ts"), score_thresh=0.05)(image)
    eager = load_predictor(QUICK_PP, str(trained_pp), device="cuda", score_thresh=0.05)(image)
    assert len(eager.scores) > 0
    assert len(exported.scores) == len(eager.scores)
    np.testing.assert_allclose(exported.scores, eager.scores, atol=1e-3)


def test_one_gpu_launch_through_train_net(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_net.py"), "--num-gpus", "1",
         "--config-file", QUICK_PP, *CUDA, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert "DEVICE: cuda" in (out / "config.yaml").read_text()


def test_nccl_process_group_runs_a_ddp_step(tmp_path):
    """What a multi-GPU launch builds, on one GPU: an NCCL group and a DDP model."""
    script = (
        "import sys, torch, torch.distributed as dist\n"
        "from torch.nn.parallel import DistributedDataParallel\n"
        "dist.init_process_group('nccl', init_method='file://' + sys.argv[1], rank=0, "
        "world_size=1)\n"
        "model = DistributedDataParallel(torch.nn.Linear(4, 2).cuda(), device_ids=[0])\n"
        "model(torch.ones(3, 4, device='cuda')).sum().backward()\n"
        "assert dist.get_backend() == 'nccl' and model.module.weight.grad is not None\n"
        "dist.destroy_process_group()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "rendezvous")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
