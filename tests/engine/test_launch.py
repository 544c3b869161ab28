"""launch() and create_ddp_model() on CPU processes over gloo, and their CUDA delegation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch import nn

import maskrcnn_pp.engine.launch as launch_module
from maskrcnn_pp.engine.launch import create_ddp_model, launch

STEPS = 3
LEARNING_RATE = 0.1


def _regression_batch():
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3


def _ddp_worker(out_dir: str) -> None:
    """Runs in each spawned process: collectives, then a few DDP steps on this rank's shard."""
    rank, world_size = comm.get_rank(), comm.get_world_size()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    torch.manual_seed(rank)  # different on each rank: DDP must broadcast rank 0's weights
    model = create_ddp_model(nn.Linear(3, 1), broadcast_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    x, y = _regression_batch()
    shard = slice(rank * 4, rank * 4 + 4)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x[shard]), y[shard]).backward()
        optimizer.step()
    result = {"world_size": world_size, "local_rank": comm.get_local_rank(),
              "local_size": comm.get_local_size(), "all_reduce": total,
              "all_gather": comm.all_gather(rank), "is_ddp": isinstance(
                  model, nn.parallel.DistributedDataParallel),
              "weights": model.module.state_dict()}
    torch.save(result, Path(out_dir) / f"rank{rank}.pth")


@pytest.fixture
def no_cuda(monkeypatch):
    """Exercise the CPU path even on a machine that has a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.slow
def test_two_cpu_processes_train_ddp_like_one_process_on_the_whole_batch(tmp_path, no_cuda):
    launch(_ddp_worker, 2, dist_url="auto", args=(str(tmp_path),))

    results = [torch.load(tmp_path / f"rank{rank}.pth", weights_only=True) for rank in (0, 1)]
    for rank, result in enumerate(results):
        assert result["world_size"] == 2 and result["local_size"] == 2
        assert result["local_rank"] == rank
        assert result["is_ddp"]
        assert float(result["all_reduce"]) == 3.0
        assert result["all_gather"] == [0, 1]

    # Mean of the two shard gradients == gradient of the mean loss over the whole batch.
    torch.manual_seed(0)
    reference = nn.Linear(3, 1)
    initial = {name: value.clone() for name, value in reference.state_dict().items()}
    optimizer = torch.optim.SGD(reference.parameters(), lr=LEARNING_RATE)
    x, y = _regression_batch()
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(reference(x), y).backward()
        optimizer.step()
    for name, value in reference.state_dict().items():
        assert torch.equal(results[0]["weights"][name], results[1]["weights"][name]), name
        torch.testing.assert_close(results[0]["weights"][name], value, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(value, initial[name])


def test_single_process_runs_main_func_in_the_caller(no_cuda):
    calls = []
    launch(lambda *args: calls.append(args), 1, args=("a", 1))
    assert calls == [("a", 1)]


def test_bad_process_layouts_are_rejected_before_spawning(no_cuda):
    with pytest.raises(ValueError, match="need a dist_url"):
        launch(print, 2)
    with pytest.raises(ValueError, match="one machine only"):
        launch(print, 2, num_machines=2, dist_url="auto")
    with pytest.raises(ValueError, match="machine_rank=2"):
        launch(print, 1, num_machines=2, machine_rank=2, dist_url="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="num_gpus_per_machine=0"):
        launch(print, 0)


def test_with_cuda_detectron2_launcher_is_used_unchanged(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launch_module, "_d2_launch",
                        lambda *args, **kwargs: calls.append((args, kwargs)))
    launch(print, 4, num_machines=2, machine_rank=1, dist_url="tcp://10.0.0.1:9999", args=(7,))
    assert calls == [((print, 4), {"num_machines": 2, "machine_rank": 1,
                                   "dist_url": "tcp://10.0.0.1:9999", "args": (7,),
                                   "timeout": launch_module.DEFAULT_TIMEOUT})]


def test_create_ddp_model_leaves_single_process_models_alone():
    model = nn.Linear(2, 2)
    assert create_ddp_model(model, broadcast_buffers=False) is model
