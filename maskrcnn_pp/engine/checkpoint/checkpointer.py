"""The project's checkpointer: atomic saves, weights that must fit, and the one way a trained
model is loaded.

:class:`SafeCheckpointer` is Detectron2's ``DetectionCheckpointer`` for saving and finding
checkpoints (``hooks.PeriodicCheckpointer`` and ``DefaultTrainer.resume_or_load`` work
unchanged), with its own loading:

* saving is atomic: the ``.pth`` file and then the ``last_checkpoint`` tag are each written to
  a temporary file in the same folder, fsynced and renamed into place, so ``--resume`` only
  ever sees complete checkpoints; a tagged file that is missing or truncated anyway (copied
  by hand, written by another tool) makes resuming fall back to the newest complete periodic
  checkpoint, with a warning;
* files are read by :mod:`.weights_files` (never running code from them by default);
  torchvision and timm ResNets are renamed to Detectron2's (:mod:`.resnet_names`); a
  three-channel stem is summed into a one-channel one for grayscale models; names that an
  earlier release of a module used are upgraded (the module's ``upgrade_state_dict``, the
  one upgrade path);
* weights must fit: a resume, or any load with ``require_all_weights``
  (:func:`load_trained_model`: prediction, evaluation, export, studies), refuses a file that
  lacks a model parameter or holds one with another shape; initializing training from a file
  (``resume_or_load(path, resume=False)``) accepts a partial match such as a backbone, logs
  what matched per module, and refuses a file that matches none of the trunk;
* the random number generators are saved with every checkpoint and restored on a full
  resume (:mod:`.rng_state`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.modeling import build_model

from ...utils.io import atomic_write_stream, atomic_write_text
from ..config import group_norm_widths_named
from .resnet_names import BARE_RESNET_NAME, STEM_WEIGHT, convert_to_detectron2_resnet, trunk_prefix
from .rng_state import RNG_STATE_KEY, capture_rng_state, restore_rng_state
from .weights_files import (
    MismatchedCheckpointError,
    MissingCheckpointError,
    check_weights_only_loadable,
    is_complete_checkpoint,
    load_weights_file,
    to_weights_only_types,
)

__all__ = ["SafeCheckpointer", "load_trained_model", "last_checkpoint",
           "upgrade_earlier_versions", "LAST_CHECKPOINT_TAG"]

LAST_CHECKPOINT_TAG = "last_checkpoint"
# Files written by fvcore's PeriodicCheckpointer: <prefix>_<iteration>.pth, <prefix>_final.pth.
_PERIODIC_CHECKPOINT = re.compile(r"^.+_(\d+|final)\.pth$")
# Temporary files of an interrupted save: .<name>.pth.<random>.tmp, .last_checkpoint.<random>.tmp
_SAVE_LEFTOVER = re.compile(r"^\.(.+\.pth|" + LAST_CHECKPOINT_TAG + r")\.[^.]+\.tmp$")


def _counted(keys) -> list[str]:
    """Keys that count as weights: BatchNorm's step counter matches between any two models."""
    return [key for key in keys if not key.endswith("num_batches_tracked")]


def _first(names: list[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def _module_of(key: str) -> str:
    return ".".join(key.split(".")[:2])


def upgrade_earlier_versions(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Let modules whose parameter names changed between releases rename a file's old keys
    (their ``upgrade_state_dict(state, prefix)``), so checkpoints of earlier versions load."""
    for name, module in model.named_modules():
        upgrade = getattr(module, "upgrade_state_dict", None)
        if callable(upgrade):
            upgrade(state, f"{name}." if name else "")


def check_fit(state: dict[str, Any], own: dict[str, Any], trunk: str, *, path: str,
              require_all: bool, logger: logging.Logger) -> list[str]:
    """Refuse weights that do not fit (all of them when ``require_all``, the trunk always),
    before anything is copied into the model; log the match per module. Returns the keys of
    ``state`` whose shape differs from the model's (left out of a partial load)."""
    wanted = _counted(own)
    absent = [key for key in wanted if key not in state]
    wrong = [key for key in wanted
             if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    misfit = set(absent) | set(wrong)
    trunk_keys = [key for key in wanted if key.startswith(trunk)]
    trunk_misfit = [key for key in trunk_keys if key in misfit]
    what = f"trunk {trunk.rstrip('.')}" if trunk else "model"
    if trunk_keys and len(trunk_misfit) == len(trunk_keys):
        raise MismatchedCheckpointError(
            f"weights file {path} matches none of the {len(trunk_keys)} parameters and "
            f"buffers of the {what}; is it for another architecture or config?")
    if require_all and (absent or wrong):
        problems = []
        if absent:
            problems.append(f"{len(absent)} of the model's {len(wanted)} parameters and "
                            f"buffers are not in it ({_first(absent)})")
        if wrong:
            shapes = [f"{key}: {tuple(state[key].shape)} in the file, {tuple(own[key].shape)} "
                      "in the model" for key in wrong]
            problems.append(f"{len(wrong)} have another shape ({_first(shapes, 2)})")
        raise MismatchedCheckpointError(
            f"weights file {path} does not fit the model: {'; '.join(problems)}. Is it "
            f"for another architecture or config?")
    if require_all:
        return wrong
    counts: dict[str, list[int]] = {}  # module -> [matched, missing, unexpected]
    for key in wanted:
        counts.setdefault(_module_of(key), [0, 0, 0])[key in misfit] += 1
    for key in _counted(state):
        if key not in own:
            counts.setdefault(_module_of(key), [0, 0, 0])[2] += 1
    logger.info(f"Initialized from {path}: {len(wanted) - len(misfit)} of the "
                f"model's {len(wanted)} parameters and buffers matched")
    for module, (matched, missing, unexpected) in counts.items():
        logger.info(f"  {module}: {matched} matched, {missing} missing or of "
                    f"another shape, {unexpected} unexpected")
    if trunk_misfit:
        logger.warning(f"{path} fits only part of the {what}: {len(trunk_misfit)} of "
                       f"{len(trunk_keys)} not in the file or of another shape "
                       f"({_first(trunk_misfit)}); they keep their random values")
    return wrong


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, weights-only loading and RNG state.

    Args:
        model, save_dir, save_to_disk, checkpointables: as for ``DetectionCheckpointer``.
        allow_unsafe_pickle: load files that need full unpickling. Only for trusted files:
            unpickling runs whatever code the file names.
        require_all_weights: every model parameter must come from the file, also when
            ``load`` is given a list of checkpointables (``--eval-only``, export); a full
            resume (``checkpointables=None``) always requires it.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *,
                 allow_unsafe_pickle: bool = False, require_all_weights: bool = False,
                 save_to_disk: bool | None = None, **checkpointables: Any):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.require_all_weights = require_all_weights
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
        data = to_weights_only_types(data)

        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_save_leftovers()
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write_stream(save_file, lambda f: torch.save(data, f),
                            check_weights_only_loadable(save_file))
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
        if not tagged or is_complete_checkpoint(tagged):
            return tagged
        fallback = next((path for path in self._periodic_checkpoints_newest_first()
                         if path != tagged and is_complete_checkpoint(path)), "")
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

        ``checkpointables=None`` (what a resume passes) restores everything and needs every
        model parameter in the file; a list, as in ``resume_or_load(resume=False)``, loads
        the model (a partial match is fine unless ``require_all_weights``) and those objects
        only, and leaves the random generators alone. Returns what else the file holds.
        Every process loads the file itself (a shared file system, as Detectron2 assumes).
        """
        require_all = self.require_all_weights or checkpointables is None
        if not path:
            if require_all:
                raise MissingCheckpointError(
                    "no weights file given (MODEL.WEIGHTS is empty): every model parameter "
                    "must come from a file here")
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        if not os.path.isfile(path):
            local_path = self.path_manager.get_local_path(path)
            if not os.path.isfile(local_path):
                raise MissingCheckpointError(f"checkpoint or weights file {path} does not exist")
            path = local_path
        self.logger.info(f"[Checkpointer] Loading from {path} ...")
        checkpoint = load_weights_file(path, allow_unsafe_pickle=self.allow_unsafe_pickle,
                                       logger=self.logger)
        self.load_model_state(checkpoint, path=path, require_all=require_all)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.logger.info(f"Loading {key} from {path} ...")
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        rng_state = checkpoint.pop(RNG_STATE_KEY, None)
        if rng_state is not None and checkpointables is None:
            restore_rng_state(rng_state)
        return checkpoint

    def load_model_state(self, checkpoint: dict[str, Any], *, path: str,
                         require_all: bool) -> None:
        """Rename the file's weights to the model's, check that they fit, then load them
        (``checkpoint["model"]`` is consumed)."""
        own = self.model.state_dict()
        # entries that are not arrays (an epoch count, a name) cannot be weights
        state = {key: torch.as_tensor(value) if isinstance(value, np.ndarray) else value
                 for key, value in checkpoint.pop("model").items()
                 if isinstance(value, (torch.Tensor, np.ndarray))}
        state = convert_to_detectron2_resnet(state)
        upgrade_earlier_versions(self.model, state)
        trunk = trunk_prefix(own)
        if trunk is not None:
            state = {trunk + key if BARE_RESNET_NAME.match(key) else key: value
                     for key, value in state.items()}
        if checkpoint.pop("matching_heuristics", False) and not set(state) & set(own):
            state = align_and_update_state_dicts(
                own, state, c2_conversion=checkpoint.get("__author__") == "Caffe2")
        if trunk is not None:
            self._adapt_gray_stem(state, own, trunk + STEM_WEIGHT)
        wrong = check_fit(state, own, trunk or "", path=path, require_all=require_all,
                          logger=self.logger)
        for key in wrong:
            del state[key]
        self.model.load_state_dict(state, strict=False)

    def _adapt_gray_stem(self, state: dict[str, Any], own: dict[str, Any], key: str) -> None:
        """A one-channel model gets an RGB stem's filters summed over colour: on a gray image
        repeated in three channels that computes exactly what the RGB stem computes."""
        if key in state and own[key].shape[1] == 1 and state[key].shape[1] == 3 \
                and state[key].shape[0] == own[key].shape[0]:
            state[key] = state[key].sum(dim=1, keepdim=True)
            self.logger.info(f"{key}: summed the file's 3 input channels into the model's 1")


def load_trained_model(cfg, weights: str | os.PathLike, *, allow_unsafe_pickle: bool = False,
                       weights_key: str = "MODEL.WEIGHTS") -> torch.nn.Module:
    """The one way a trained model is loaded (prediction, export, evaluation, studies, the
    demo, the pruning report, pictures): ``cfg``'s model, built with GroupNorm widths named,
    every parameter read from ``weights`` (a missing or partial file is refused, naming
    ``weights_key`` or what does not fit), in eval mode on ``cfg.MODEL.DEVICE``. The random
    generators are left alone."""
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise MissingCheckpointError(f"{weights_key} file {path} does not exist")
    with group_norm_widths_named(cfg):
        model = build_model(cfg)
    SafeCheckpointer(model, allow_unsafe_pickle=allow_unsafe_pickle,
                     require_all_weights=True).load(path, checkpointables=[])
    return model.eval()


def last_checkpoint(output_dir: str) -> str:
    """The checkpoint ``--resume`` continues in ``output_dir`` (the tagged one, or the newest
    complete periodic one if that is damaged), or "" where there is none."""
    return SafeCheckpointer(torch.nn.Module(), output_dir).get_checkpoint_file()
