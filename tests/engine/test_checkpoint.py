"""SafeCheckpointer: atomic saves, weights-only files, resume fallbacks, RNG, unsafe pickles."""
from __future__ import annotations

import itertools
import logging
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer, hooks
from detectron2.solver import build_lr_scheduler
from torch import nn

from maskrcnn_pp.engine.checkpoint import (
    CorruptCheckpointError,
    MissingCheckpointError,
    SafeCheckpointer,
    UnsafeCheckpointError,
)
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT


def _solver_cfg(max_iter: int = 20):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = (max_iter // 2,)
    cfg.SOLVER.WARMUP_ITERS = 3
    return cfg


def _train_steps(model, optimizer, scheduler, steps: int) -> None:
    x = torch.linspace(-1, 1, 24).reshape(6, 4)
    y = x.sum(dim=1, keepdim=True).repeat(1, 3)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def _files(folder: Path) -> set:
    return {path.name for path in folder.iterdir()}


def test_roundtrip_restores_model_optimizer_scheduler_and_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = build_lr_scheduler(_solver_cfg(), optimizer)
    _train_steps(model, optimizer, scheduler, 4)
    SafeCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler).save(
        "model_0000003", iteration=3, best_ap=np.float64(0.25), seen=np.arange(3))

    raw = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert set(raw) == {"model", "optimizer", "scheduler", "iteration", "best_ap", "seen",
                        "rng_state"}
    assert raw["best_ap"] == 0.25 and type(raw["best_ap"]) is float
    assert torch.equal(raw["seen"], torch.arange(3))
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert _files(tmp_path) == {"model_0000003.pth", "last_checkpoint"}

    torch.manual_seed(1)
    resumed = nn.Linear(4, 3)
    resumed_optimizer = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    resumed_scheduler = build_lr_scheduler(_solver_cfg(), resumed_optimizer)
    assert not torch.equal(resumed.weight, model.weight)
    extra = SafeCheckpointer(resumed, str(tmp_path), optimizer=resumed_optimizer,
                             scheduler=resumed_scheduler).resume_or_load("", resume=True)
    assert set(extra) == {"iteration", "best_ap", "seen"}
    assert extra["iteration"] == 3 and extra["best_ap"] == 0.25
    assert resumed_scheduler.last_epoch == scheduler.last_epoch == 4
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name

    # Momentum buffers and the LR schedule came back too: training on gives identical results.
    _train_steps(model, optimizer, scheduler, 5)
    _train_steps(resumed, resumed_optimizer, resumed_scheduler, 5)
    assert optimizer.param_groups[0]["lr"] == resumed_optimizer.param_groups[0]["lr"]
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_resume_restores_random_generators_only_on_full_resume(tmp_path):
    model = nn.Linear(2, 2)
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000")

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    expected = draw()
    assert draw() != expected
    SafeCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert draw() == expected
    SafeCheckpointer(model, str(tmp_path)).resume_or_load(
        str(tmp_path / "model_0000000.pth"), resume=False)
    assert draw() != expected


class _DropoutRegression(nn.Module):
    """A loss-dict model (what SimpleTrainer expects) whose loss depends on torch's RNG."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(self.linear(self.dropout(x)), y)}


class _Interrupted(Exception):
    pass


class _InterruptAt(hooks.HookBase):
    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            raise _Interrupted()


def _detectron2_trainer(output_dir: Path, max_iter: int, extra_hooks=()):
    """A Detectron2 SimpleTrainer with the LR-scheduler and periodic-checkpoint hooks."""
    torch.manual_seed(0)
    model = _DropoutRegression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, generator=generator)
    batch = (x, x.sum(dim=1, keepdim=True))
    trainer = SimpleTrainer(model, itertools.repeat(batch), optimizer)
    trainer.scheduler = build_lr_scheduler(_solver_cfg(max_iter), optimizer)
    checkpointer = SafeCheckpointer(model, str(output_dir), trainer=weakref.proxy(trainer))
    trainer.register_hooks([hooks.LRScheduler(optimizer, trainer.scheduler),
                            hooks.PeriodicCheckpointer(checkpointer, 3), *extra_hooks])
    return trainer, checkpointer


def _resume(checkpointer: SafeCheckpointer, trainer) -> int:
    """What DefaultTrainer.resume_or_load(resume=True) does: load, then start after it."""
    checkpointer.resume_or_load("", resume=True)
    return trainer.iter + 1 if checkpointer.has_checkpoint() else 0


def test_detectron2_trainer_resumed_after_interruption_matches_uninterrupted_run(tmp_path):
    max_iter = 10
    uninterrupted, _ = _detectron2_trainer(tmp_path / "a", max_iter)
    uninterrupted.train(0, max_iter)

    interrupted, _ = _detectron2_trainer(tmp_path / "b", max_iter, [_InterruptAt(7)])
    with pytest.raises(_Interrupted):
        interrupted.train(0, max_iter)
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000005.pth"
    raw = torch.load(tmp_path / "b" / "model_0000005.pth", weights_only=True)
    assert raw["trainer"]["iteration"] == 5
    assert raw["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6
    assert "momentum_buffer" in raw["trainer"]["optimizer"]["state"][0]
    shutil.copytree(tmp_path / "b", tmp_path / "control")

    resumed, checkpointer = _detectron2_trainer(tmp_path / "b", max_iter)
    start_iter = _resume(checkpointer, resumed)
    assert start_iter == 6
    resumed.train(start_iter, max_iter)
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name

    # Control: the same resume with the generators disturbed ends elsewhere (dropout differs),
    # so the equality above is owed to the restored RNG state.
    disturbed, checkpointer = _detectron2_trainer(tmp_path / "control", max_iter)
    start_iter = _resume(checkpointer, disturbed)
    assert start_iter == 6
    torch.manual_seed(12345)
    disturbed.train(start_iter, max_iter)
    assert not torch.equal(disturbed.model.linear.weight, uninterrupted.model.linear.weight)


def _save_with_weight(folder: Path, name: str, value: float, iteration: int) -> None:
    model = nn.Linear(2, 2)
    nn.init.constant_(model.weight, value)
    SafeCheckpointer(model, str(folder)).save(name, iteration=iteration)


def test_truncated_or_missing_tagged_checkpoint_falls_back_to_newest_complete(tmp_path, caplog):
    _save_with_weight(tmp_path, "model_0000004", 1.0, 4)
    _save_with_weight(tmp_path, "model_0000009", 2.0, 9)
    os.utime(tmp_path / "model_0000004.pth", (1_000_000, 1_000_000))
    tagged = tmp_path / "model_0000009.pth"
    tagged.write_bytes(tagged.read_bytes()[: tagged.stat().st_size // 2])

    model = nn.Linear(2, 2)
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="fvcore.common.checkpoint"):
        assert checkpointer.has_checkpoint()
        assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000004.pth")
        extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    assert torch.all(model.weight == 1.0)
    warnings = [r.getMessage() for r in caplog.records if "truncated or corrupt" in r.getMessage()]
    assert len(warnings) == 1 and "model_0000004.pth" in warnings[0]

    with pytest.raises(CorruptCheckpointError, match="model_0000009.pth is truncated"):
        checkpointer.load(str(tagged))

    tagged.unlink()
    assert SafeCheckpointer(model, str(tmp_path)).get_checkpoint_file() == str(
        tmp_path / "model_0000004.pth")

    (tmp_path / "model_0000004.pth").unlink()
    nothing_left = SafeCheckpointer(model, str(tmp_path))
    assert not nothing_left.has_checkpoint()
    assert nothing_left.resume_or_load("", resume=True) == {}


_KILLED_SAVE_SCRIPT = textwrap.dedent("""
    import io, sys, time
    import torch
    from torch import nn
    from maskrcnn_pp.engine.checkpoint import SafeCheckpointer

    folder = sys.argv[1]
    model = nn.Linear(512, 512)
    nn.init.constant_(model.weight, 1.0)
    checkpointer = SafeCheckpointer(model, folder)
    checkpointer.save("model_final", iteration=9)
    nn.init.constant_(model.weight, 2.0)

    real_save = torch.save

    def save_half_then_hang(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        print("half written", flush=True)
        time.sleep(120)

    torch.save = save_half_then_hang
    checkpointer.save("model_final", iteration=19)
""")


@pytest.mark.slow
def test_kill_during_save_keeps_previous_checkpoint_and_resume_uses_it(tmp_path):
    script = tmp_path / "killed_save.py"
    script.write_text(_KILLED_SAVE_SCRIPT)
    folder = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(script), str(folder)], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "half written"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    leftovers = [name for name in _files(folder) if name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model_final.pth.")
    assert (folder / leftovers[0]).stat().st_size > 0
    assert (folder / "last_checkpoint").read_text() == "model_final.pth"

    model = nn.Linear(512, 512)
    checkpointer = SafeCheckpointer(model, str(folder))
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 9
    assert torch.all(model.weight == 1.0)

    checkpointer.save("model_0000019", iteration=19)
    assert _files(folder) == {"model_final.pth", "model_0000019.pth", "last_checkpoint"}


def test_save_refuses_values_that_need_full_unpickling(tmp_path):
    checkpointer = SafeCheckpointer(nn.Linear(2, 2), str(tmp_path))
    checkpointer.save("model_0000000", iteration=0)
    with pytest.raises(TypeError, match=r"model_0000001\.pth .*weights_only"):
        checkpointer.save("model_0000001", iteration=1, started=time.struct_time(range(9)))
    assert _files(tmp_path) == {"model_0000000.pth", "last_checkpoint"}
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"


class _CreatesMarkerWhenUnpickled:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for any hostile code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _write_malicious(path: Path, marker: Path) -> None:
    weights = {"weight": np.full((2, 2), 3.0, dtype=np.float32),
               "bias": np.zeros(2, dtype=np.float32)}
    payload = _CreatesMarkerWhenUnpickled(marker)
    if path.suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump({"__author__": "someone", "model": weights, "payload": payload}, f)
    else:
        torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()},
                    "payload": payload}, path)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_malicious_pickle_is_refused_unless_explicitly_allowed(tmp_path, suffix):
    weights_file = tmp_path / f"weights{suffix}"
    marker = tmp_path / "code_ran"
    _write_malicious(weights_file, marker)

    model = nn.Linear(2, 2)
    with pytest.raises(UnsafeCheckpointError) as refused:
        SafeCheckpointer(model).load(str(weights_file))
    message = str(refused.value)
    assert str(weights_file) in message and "--allow-unsafe-pickle" in message
    assert "arbitrary code" in message and "\n" not in message
    assert isinstance(refused.value, UserError)
    assert not marker.exists()
    assert not torch.all(model.weight == 3.0)

    SafeCheckpointer(model, allow_unsafe_pickle=True).load(str(weights_file))
    assert marker.exists()
    assert torch.all(model.weight == 3.0)


def test_missing_weights_file_is_a_clear_file_not_found_error(tmp_path):
    missing = tmp_path / "nowhere" / "model_final.pth"
    with pytest.raises(MissingCheckpointError, match=f"{missing} does not exist") as error:
        SafeCheckpointer(nn.Linear(2, 2)).load(str(missing))
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, UserError)


def test_weights_of_another_architecture_are_refused(tmp_path):
    from maskrcnn_pp.engine.checkpoint import MismatchedCheckpointError

    torch.save({"model": {"head.weight": torch.ones(2)}}, tmp_path / "other.pth")
    with pytest.raises(MismatchedCheckpointError, match="other.pth matches none"):
        SafeCheckpointer(nn.Linear(2, 2)).load(str(tmp_path / "other.pth"))
