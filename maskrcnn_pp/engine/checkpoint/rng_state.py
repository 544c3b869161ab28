"""The global random generators' state, saved with every checkpoint and restored on a full
resume, so that a resumed run draws the same random numbers as an uninterrupted one."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

__all__ = ["RNG_STATE_KEY", "capture_rng_state", "restore_rng_state"]

RNG_STATE_KEY = "rng_state"


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random generator, as tensors and plain Python values."""
    bit_generator, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": bit_generator, "key": torch.from_numpy(key.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`.

    Only the main process saves checkpoints, so other ranks cannot get their own state back;
    they reseed from the restored state plus their rank, which keeps resumes reproducible and
    the ranks' random streams different from each other.
    """
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["bit_generator"],
                         numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    rank = comm.get_rank()
    if rank > 0:
        seed_all_rng(int(torch.randint(0, 2**31 - 1, ())) + rank)
