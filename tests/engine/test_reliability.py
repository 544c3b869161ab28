"""Issue 7 for real: SIGKILL then --resume, bad images, non-finite losses, two CPU ranks."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.env import seed_all_rng
from torch import nn

import maskrcnn_pp  # noqa: F401
from maskrcnn_pp.data.image_io import UnreadableImageError
from maskrcnn_pp.data.mapper import CheckedDatasetMapper
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.checkpoint import SafeCheckpointer
from maskrcnn_pp.engine.launch import launch
from maskrcnn_pp.engine.trainer import CheckedSimpleTrainer, NonFiniteLossError, Trainer
from tests.helpers import ROOT, liver_phantom, write_lits

QUICK_PP = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")
TINY = ["SOLVER.IMS_PER_BATCH", "1", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN",
        "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATASETS.TEST", "()",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", "0.005"]


def _train_cmd(out, max_iter, *extra):
    return [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", QUICK_PP,
            *extra, *TINY, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "3",
            "OUTPUT_DIR", str(out)]


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_last_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(_train_cmd(out, 400), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    tag = out / "last_checkpoint"
    # two periodic checkpoints written and tagged (a checkpoint written but not yet tagged
    # when the kill lands is rightly not resumed from)
    while not (tag.exists() and tag.read_text().strip() >= "model_0000005.pth"):
        assert proc.poll() is None and time.time() < deadline, "training ended or hung"
        time.sleep(0.2)
    # A second trainer in the folder the first one writes exits 2 naming the holder.
    second = subprocess.run(_train_cmd(out, 400, "--resume"), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"is being trained by process {proc.pid}" in second.stderr.strip().splitlines()[-1]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tagged = (out / "last_checkpoint").read_text().strip()
    saved_iter = torch.load(out / tagged, weights_only=True)["iteration"]
    assert saved_iter >= 5

    resumed = subprocess.run(_train_cmd(out, saved_iter + 3, "--resume"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Starting training from iteration {saved_iter + 1}" in log
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == saved_iter + 2
    assert "optimizer" in final["trainer"]["_trainer"]  # momentum survives a resume


@pytest.mark.slow
def test_a_run_killed_after_its_last_checkpoint_resumes_to_its_final_model(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(_train_cmd(out, 6), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    last = torch.load(out / "model_0000005.pth", weights_only=True)
    # as if killed after the periodic checkpoint of the last iteration, before the final one
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000005.pth")
    resumed = subprocess.run(_train_cmd(out, 6, "--resume"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 5
    # this package's messages reach the console and the run's log.txt, like Detectron2's
    message = "The last checkpoint is the end of training: writing model_final.pth"
    assert message in resumed.stdout + resumed.stderr
    assert message in (out / "log.txt").read_text()
    assert all(torch.equal(final["model"][k], v) for k, v in last["model"].items())


def _broken_image_dataset(tmp_path):
    good = DatasetCatalog.get("nuclei_synthetic_train")[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    return good, {**good, "file_name": str(broken)}


def test_undecodable_image_is_named_or_skipped_with_a_count(tmp_path, caplog):
    cfg = load_config(QUICK_PP)
    good, bad = _broken_image_dataset(tmp_path)
    mapper = CheckedDatasetMapper(cfg, True)
    assert mapper(dict(good))["image"].shape[0] == 3
    with pytest.raises(UnreadableImageError, match="broken.png: cannot read image"):
        mapper(dict(bad))
    cfg.DATALOADER.SKIP_BAD_IMAGES = True
    skipping = CheckedDatasetMapper(cfg, True)
    assert skipping(dict(bad)) is None and skipping(dict(bad)) is None
    assert skipping.skipped == 2
    assert "2 skipped so far" in caplog.text


class _LossModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, batch):
        value = (self.weight * batch[0]).sum()
        return {"loss_ok": value, "loss_bad": value * float("nan")}


def test_non_finite_loss_names_loss_and_iteration_and_keeps_weights(tmp_path):
    model = _LossModel()
    loader = iter(lambda: [torch.ones(3)], None)
    trainer = CheckedSimpleTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
    SafeCheckpointer(model, str(tmp_path)).save("model_good")
    trainer.iter = 0
    from detectron2.utils.events import EventStorage

    with EventStorage(0), pytest.raises(NonFiniteLossError,
                                        match="iteration 0: loss_bad=nan"):
        trainer.run_step()
    assert torch.equal(model.weight.detach(), torch.ones(3))  # no step with NaN gradients
    restored = _LossModel()
    SafeCheckpointer(restored).load(str(tmp_path / "model_good.pth"))
    assert torch.equal(restored.weight, model.weight)


def _train_two_ranks(out_dir):
    from detectron2.utils import comm

    cfg = load_config(QUICK_PP, [*TINY, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "1",
                                 "OUTPUT_DIR", str(out_dir),
                                 "SEED", "1"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    losses = []
    model.register_forward_hook(
        lambda module, inputs, output: losses.append(float(sum(output.values()))))
    trainer.train()
    rank = comm.get_rank()
    torch.save(model.state_dict(), os.path.join(out_dir, f"weights_rank{rank}.pt"))
    with open(os.path.join(out_dir, f"loss_rank{rank}.json"), "w") as f:
        json.dump(losses, f)


@pytest.mark.slow
def test_two_cpu_processes_train_in_lockstep(tmp_path):
    launch(_train_two_ranks, 2, dist_url="auto", args=(str(tmp_path),))
    w0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    rank_losses = [json.loads((tmp_path / f"loss_rank{r}.json").read_text())[0] for r in (0, 1)]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 0
    assert metrics[-1]["total_loss"] == pytest.approx(sum(rank_losses) / 2, rel=1e-5)


def test_resumed_run_sees_the_batches_and_ends_with_the_weights_of_an_uninterrupted_one(
        tmp_path, monkeypatch):
    """Detectron2's own sampler would replay the first batches of a new random order after
    --resume; here the stream continues, metrics.json loses the records a killed run wrote
    after its checkpoint, and the result is that of a run never stopped."""

    from maskrcnn_pp.data.prepare import prepare_liver
    from maskrcnn_pp.modeling.semantic_arch import SemanticUNetPP

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    hu, seg = liver_phantom(shape=(64, 64, 12))
    write_lits(tmp_path / "lits", 0, hu, seg)
    prepare_liver(tmp_path / "lits", tmp_path / "datasets", size=32, val_fraction=0)
    seen = []
    original_forward = SemanticUNetPP.forward

    def recording_forward(self, batched_inputs):
        if self.training:
            seen.append([d["file_name"] for d in batched_inputs])
        return original_forward(self, batched_inputs)

    monkeypatch.setattr(SemanticUNetPP, "forward", recording_forward)

    def trainer(out, max_iter, seed):
        cfg = load_config(str(ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml"),
                          ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "4",
                           "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)])
        seed_all_rng(seed)  # what cfg.SEED does in default_setup; also draws the data seed
        return Trainer(cfg)

    trainer(tmp_path / "a", 8, seed=0).train()
    uninterrupted, seen[:] = list(seen), []
    assert uninterrupted[4:] != uninterrupted[:4]

    trainer(tmp_path / "b", 4, seed=0).train()
    with open(tmp_path / "b" / "metrics.json", "a") as metrics:  # what a kill leaves behind
        metrics.write('{"iteration": 4, "total_loss": 1.0}\n{"iteration": 5, "total_')
    seen[:] = []
    resumed = trainer(tmp_path / "b", 8, seed=1)  # another seed: the checkpoint's must win
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    assert seen == uninterrupted[4:]

    reference = torch.load(tmp_path / "a" / "model_final.pth", weights_only=True)["model"]
    final = torch.load(tmp_path / "b" / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(final[k], v) for k, v in reference.items())
    lines = (tmp_path / "b" / "metrics.json").read_text().splitlines()
    iterations = [json.loads(line)["iteration"] for line in lines]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 7


class _ExplodingModel(torch.nn.Module):
    """Fails in its forward pass as Detectron2's RPN does when weights became non-finite."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Parameter(torch.ones(2))
        self.second = torch.nn.Parameter(torch.tensor([1.0, float("inf")]))

    def forward(self, batch):
        raise FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has "
                                 "diverged.")


def test_divergence_caught_by_detectron2_names_iteration_weight_and_last_loss():
    from detectron2.utils.events import EventStorage

    model = _ExplodingModel()
    trainer = CheckedSimpleTrainer(model, iter(lambda: [torch.ones(2)], None),
                                   torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.iter = 7
    with EventStorage(6) as storage:
        storage.put_scalars(loss_a=2.0, loss_b=3e9)
        storage.step()
        with pytest.raises(NonFiniteLossError) as caught:
            trainer.run_step()
    assert str(caught.value) == (
        "diverged at iteration 7: non-finite predicted boxes or scores (Detectron2: Predicted "
        "boxes or scores contain Inf/NaN. Training has diverged.) with the first non-finite "
        "weight second; the losses of iteration 6 were finite, the largest loss_b=3e+09")


def test_user_error_from_a_data_loader_worker_is_its_own_line(capsys):
    """torch re-raises a worker's exception with the worker's traceback as its message."""
    from torch._utils import ExceptionWrapper

    from maskrcnn_pp.data.image_io import UnreadableImageError
    from maskrcnn_pp.utils.errors import exit_on_user_error

    try:
        raise UnreadableImageError("/data/x.png: cannot read image")
    except UnreadableImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")

    @exit_on_user_error
    def main():
        wrapped.reraise()

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: /data/x.png: cannot read image\n"
