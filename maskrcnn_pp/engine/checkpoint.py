"""Checkpoints that survive a kill at any moment and never run code from a file by default.

:class:`SafeCheckpointer` is Detectron2's ``DetectionCheckpointer`` with three changes:

* saving is atomic: the ``.pth`` file and then the ``last_checkpoint`` tag are each written to
  a temporary file in the same folder, fsynced and renamed into place, so ``--resume`` only
  ever sees complete checkpoints; a tagged file that is missing or truncated anyway (copied
  by hand, written by another tool) makes resuming fall back to the newest complete periodic
  checkpoint, with a warning;
* everything saved loads with ``torch.load(weights_only=True)`` (checked before the file is
  published) and loading uses weights-only unpickling; files that need full unpickling (the
  ``.pkl`` files of the Detectron2 model zoo, old pickled ``.pth`` files) are refused unless
  ``allow_unsafe_pickle=True``, because unpickling can run arbitrary code;
* the random number generators (Python, NumPy, torch, CUDA) are saved with every checkpoint
  and restored on a full resume, so a resumed run draws the same random numbers.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import zipfile
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..utils.errors import UserError
from ..utils.io import atomic_write_stream, atomic_write_text

__all__ = [
    "CorruptCheckpointError",
    "MismatchedCheckpointError",
    "MissingCheckpointError",
    "SafeCheckpointer",
    "UnsafeCheckpointError",
    "capture_rng_state",
    "restore_rng_state",
]

LAST_CHECKPOINT_TAG = "last_checkpoint"
RNG_STATE_KEY = "rng_state"
# Files written by fvcore's PeriodicCheckpointer: <prefix>_<iteration>.pth, <prefix>_final.pth.
_PERIODIC_CHECKPOINT = re.compile(r"^.+_(\d+|final)\.pth$")
# Temporary files of an interrupted save: .<name>.pth.<random>.tmp, .last_checkpoint.<random>.tmp
_SAVE_LEFTOVER = re.compile(r"^\.(.+\.pth|" + LAST_CHECKPOINT_TAG + r")\.[^.]+\.tmp$")


class UnsafeCheckpointError(UserError):
    """A checkpoint needs full unpickling, which can run code, and that was not allowed."""


class MissingCheckpointError(UserError, FileNotFoundError):
    """A checkpoint or weights file that does not exist."""


class MismatchedCheckpointError(UserError):
    """A weights file none of whose entries fits the model."""


class CorruptCheckpointError(UserError):
    """A checkpoint file that is truncated or not a PyTorch checkpoint at all."""


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


def _to_weights_only_types(value: Any) -> Any:
    """NumPy arrays become tensors and NumPy scalars Python numbers, recursively.

    Containers without NumPy values are returned as they are (a model's state dict keeps
    its ``_metadata``, which module versioning needs).
    """
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (dict, OrderedDict):
        converted = {key: _to_weights_only_types(item) for key, item in value.items()}
        if all(converted[key] is value[key] for key in value):
            return value
        out = type(value)(converted)
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata
        return out
    if type(value) in (list, tuple):
        converted_items = [_to_weights_only_types(item) for item in value]
        if all(new is old for new, old in zip(converted_items, value)):
            return value
        return type(value)(converted_items)
    return value


def _is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole zip-format torch file (a truncated one has no zip directory)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl"
                       for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The one informative sentence of torch's long weights-only error."""
    for line in str(err).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". ")[0].strip()
    return str(err).splitlines()[0] if str(err) else "weights-only unpickling failed"


def _check_weights_only_loadable(name: str) -> Callable[[str], None]:
    def check(tmp_path: str) -> None:
        try:
            torch.load(tmp_path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:
            raise TypeError(
                f"checkpoint {name} holds a value that torch.load(weights_only=True) cannot "
                f"read; save tensors and plain Python values only "
                f"({_unpickler_reason(err)})") from None
    return check


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, weights-only loading and RNG state.

    Drop-in for Detectron2's: ``hooks.PeriodicCheckpointer`` and
    ``DefaultTrainer.resume_or_load`` work unchanged through ``save``, ``has_checkpoint``,
    ``get_checkpoint_file`` and ``load``.

    Args:
        model, save_dir, save_to_disk, checkpointables: as for ``DetectionCheckpointer``.
        allow_unsafe_pickle: load files that need full unpickling. Only for trusted files:
            unpickling runs whatever code the file names.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *,
                 allow_unsafe_pickle: bool = False, save_to_disk: bool | None = None,
                 **checkpointables: Any):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self._reported_broken: set[str] = set()

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then tag it as the last checkpoint."""
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must be a file name, not a path")
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        data[RNG_STATE_KEY] = capture_rng_state()
        data = _to_weights_only_types(data)

        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_save_leftovers()
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write_stream(save_file, lambda f: torch.save(data, f),
                             _check_weights_only_loadable(save_file))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT_TAG),
                          last_filename_basename)

    def _remove_save_leftovers(self) -> None:
        """Delete temporary files of saves that were killed (only one process saves here)."""
        for name in os.listdir(self.save_dir):
            if _SAVE_LEFTOVER.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.save_dir, name))

    def get_checkpoint_file(self) -> str:
        """The tagged checkpoint, or the newest complete periodic one if that is damaged."""
        tagged = super().get_checkpoint_file()
        if not tagged or _is_complete_checkpoint(tagged):
            return tagged
        fallback = next((path for path in self._periodic_checkpoints_newest_first()
                         if path != tagged and _is_complete_checkpoint(path)), "")
        if tagged not in self._reported_broken:
            self._reported_broken.add(tagged)
            problem = "is truncated or corrupt" if os.path.exists(tagged) else "does not exist"
            instead = (f"resuming from {fallback} instead" if fallback
                       else "no complete checkpoint is left, so training starts afresh")
            self.logger.warning(f"{LAST_CHECKPOINT_TAG} names {tagged}, which {problem}; "
                                f"{instead}")
        return fallback

    def has_checkpoint(self) -> bool:
        return bool(self.get_checkpoint_file())

    def _periodic_checkpoints_newest_first(self) -> list[str]:
        paths = [path for path in self.get_all_checkpoint_files()
                 if _PERIODIC_CHECKPOINT.match(os.path.basename(path))]
        return sorted(paths, key=lambda path: (os.path.getmtime(path), path), reverse=True)

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Load weights (and, on a full resume, the checkpointables and the RNG state).

        ``checkpointables=None`` (what a resume passes) restores everything; a list, as in
        ``resume_or_load(resume=False)``, loads the model and those objects only, and leaves
        the random generators alone.
        """
        if path and not os.path.isfile(path):
            local_path = self.path_manager.get_local_path(path)
            if not os.path.isfile(local_path):
                raise MissingCheckpointError(f"checkpoint or weights file {path} does not exist")
            path = local_path
        self._loading = path
        extra = super().load(path, checkpointables=checkpointables)
        rng_state = extra.pop(RNG_STATE_KEY, None)
        if rng_state is not None and checkpointables is None:
            restore_rng_state(rng_state)
        return extra

    def _load_model(self, checkpoint: dict[str, Any]):
        """Refuse weights that match none of the model's parameters (another architecture):
        loading them would silently leave a randomly initialized model."""
        incompatible = super()._load_model(checkpoint)
        own = self.model.state_dict()
        if own and len(set(incompatible.missing_keys) & set(own)) == len(own):
            raise MismatchedCheckpointError(
                f"weights file {getattr(self, '_loading', '?')} matches none of the model's "
                f"{len(own)} parameters and buffers; is it for another architecture or config?")
        return incompatible

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            self._require_unsafe_permission(filename, "it is a Python pickle (.pkl) file")
            return super()._load_file(filename)
        try:
            loaded = torch.load(filename, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            self._require_unsafe_permission(
                filename, f"it does not load with torch.load(weights_only=True) "
                          f"({_unpickler_reason(err)})")
            loaded = torch.load(filename, map_location="cpu", weights_only=False)
        except (RuntimeError, OSError, EOFError, KeyError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CorruptCheckpointError(
                f"checkpoint {filename} is truncated or not a PyTorch checkpoint "
                f"({reason})") from None
        if not isinstance(loaded, dict):
            raise CorruptCheckpointError(
                f"checkpoint {filename} holds a {type(loaded).__name__}, not a dict of weights")
        return loaded if "model" in loaded else {"model": loaded}

    def _require_unsafe_permission(self, filename: str, reason: str) -> None:
        if not self.allow_unsafe_pickle:
            raise UnsafeCheckpointError(
                f"refusing to load {filename}: {reason}. Loading it needs full unpickling, "
                f"which can run arbitrary code hidden in the file. If you trust where the file "
                f"comes from, pass --allow-unsafe-pickle (allow_unsafe_pickle=True)")
        self.logger.warning(f"Fully unpickling {filename} because allow_unsafe_pickle is set")
