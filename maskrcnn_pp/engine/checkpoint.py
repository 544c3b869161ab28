"""Checkpoints that survive a kill at any moment and never run code from a file by default.

:class:`SafeCheckpointer` is Detectron2's ``DetectionCheckpointer`` with these changes:

* saving is atomic: the ``.pth`` file and then the ``last_checkpoint`` tag are each written to
  a temporary file in the same folder, fsynced and renamed into place, so ``--resume`` only
  ever sees complete checkpoints; a tagged file that is missing or truncated anyway (copied
  by hand, written by another tool) makes resuming fall back to the newest complete periodic
  checkpoint, with a warning;
* everything saved loads with ``torch.load(weights_only=True)`` (checked before the file is
  published) and loading never runs code from a file: ``.pth`` files load weights-only, and
  ``.pkl`` files (Detectron2's model zoo, its converters) through an unpickler that builds
  NumPy arrays and plain Python values only; anything else (old pickled ``.pth`` files, a
  pickle naming any other global) is refused unless ``allow_unsafe_pickle=True``;
* torchvision and timm ResNet state dicts (also inside ``state_dict`` / ``model`` wrappers,
  with ``module.`` prefixes) are renamed to Detectron2's ResNet, the trunk of every detector
  here; a three-channel stem is summed into a one-channel one for grayscale models;
* weights must fit: a resume, or any load with ``require_all_weights``
  (:func:`load_inference_weights`: prediction, evaluation, export), refuses a file that lacks
  a model parameter or holds one with another shape; initializing training from a file
  (``resume_or_load(path, resume=False)``) accepts a partial match such as a backbone, logs
  what matched per module, and refuses a file that matches none of the trunk;
* the random number generators (Python, NumPy, torch, CUDA) are saved with every checkpoint
  and restored on a full resume, so a resumed run draws the same random numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import random
import re
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from .. import compat
from ..utils.errors import UserError
from ..utils.io import atomic_write_stream, atomic_write_text
from .config import group_norm_widths_named

__all__ = [
    "CorruptCheckpointError",
    "convert_to_detectron2_resnet",
    "is_resnet_state",
    "load_inference_weights",
    "load_trained_model",
    "load_weights_file",
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
    """A weights file that does not fit the model (another architecture or config)."""


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
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". ")[0].strip()
    # newer torch: a paragraph about the changed default, the reason, a link to the docs
    reasons = [line for line in lines
               if not line.startswith(("Weights only load failed", "Check the documentation"))]
    return (reasons or lines or ["weights-only unpickling failed"])[0].rstrip(".")


# The globals a pickle of NumPy weights names: NumPy 1 and 2 spellings, Python 2 builtins.
_NUMPY_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"), *((builtins, name) for builtins in ("builtins", "__builtin__")
                             for name in ("set", "frozenset", "complex")),
})


class _DisallowedGlobal(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays, dtypes and builtin values, and nothing else: a pickle can only
    run code through the globals it names, and none of these runs anything."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_PICKLE_GLOBALS:
            raise _DisallowedGlobal(f"{module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _require_unsafe_permission(filename: str, reason: str, allow_unsafe_pickle: bool,
                               logger: logging.Logger) -> None:
    if not allow_unsafe_pickle:
        raise UnsafeCheckpointError(
            f"refusing to load {filename}: {reason}. Loading it needs full unpickling, "
            f"which can run arbitrary code hidden in the file. If you trust where the file "
            f"comes from, pass --allow-unsafe-pickle (allow_unsafe_pickle=True)")
    logger.warning(f"Fully unpickling {filename} because allow_unsafe_pickle is set")


def _corrupt(filename: str, what: str, err: BaseException) -> CorruptCheckpointError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CorruptCheckpointError(f"checkpoint {filename} is truncated or not {what} "
                                  f"({reason})")


def _read_pickle(filename: str, allow_unsafe_pickle: bool, logger: logging.Logger) -> Any:
    with open(filename, "rb") as file:
        try:
            try:
                return _NumpyOnlyUnpickler(file, encoding="latin1").load()
            except _DisallowedGlobal as err:
                _require_unsafe_permission(
                    filename, f"the pickle names {err.name}, which NumPy weights do not need",
                    allow_unsafe_pickle, logger)
            file.seek(0)
            return pickle.load(file, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                ImportError, IndexError, KeyError) as err:
            raise _corrupt(filename, "a pickle of NumPy weights", err) from None


def _read_torch_file(filename: str, allow_unsafe_pickle: bool, logger: logging.Logger) -> Any:
    try:
        try:
            # timm's training checkpoints keep their argparse arguments beside the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(filename, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            _require_unsafe_permission(
                filename, f"it does not load with torch.load(weights_only=True) "
                          f"({_unpickler_reason(err)})", allow_unsafe_pickle, logger)
        return torch.load(filename, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, KeyError) as err:
        raise _corrupt(filename, "a PyTorch checkpoint", err) from None


def load_weights_file(filename: str, *, allow_unsafe_pickle: bool = False,
                      logger: Optional[logging.Logger] = None) -> dict[str, Any]:
    """A weights file as Detectron2's checkpoint dict ``{"model": state dict, ...}``.

    ``.pkl``: NumPy-only pickles load without permission (a dict of Caffe2-named blobs is
    flagged for Detectron2's name matching, as ``DetectionCheckpointer`` does); other files
    load weights-only. A ``state_dict`` wrapper (timm, Lightning) is unwrapped.
    """
    logger = logger or logging.getLogger(__name__)
    if not os.path.isfile(filename):
        raise MissingCheckpointError(f"weights file {filename} does not exist")
    is_pickle = filename.endswith(".pkl")
    read = _read_pickle if is_pickle else _read_torch_file
    loaded = read(filename, allow_unsafe_pickle, logger)
    if not isinstance(loaded, dict):
        raise CorruptCheckpointError(
            f"checkpoint {filename} holds a {type(loaded).__name__}, not a dict of weights")
    if isinstance(loaded.get("model"), dict):
        return loaded
    if "model" in loaded:
        raise CorruptCheckpointError(
            f"checkpoint {filename}: its 'model' entry is a {type(loaded['model']).__name__}, "
            "not a dict of weights")
    if isinstance(loaded.get("state_dict"), dict):
        return {"model": loaded["state_dict"]}
    if is_pickle:
        blobs = loaded.get("blobs", loaded)
        return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")},
                "__author__": "Caffe2", "matching_heuristics": True}
    return {"model": loaded}


# torchvision / timm ResNet names -> Detectron2 ResNet names; None drops the entry.
_RESNET_RENAMES = [
    (re.compile(r"^conv1\.weight$"), "stem.conv1.weight"),
    (re.compile(r"^bn1\.(\w+)$"), r"stem.conv1.norm.\1"),
    (re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\.weight$"), r"res{stage}.\2.conv\3.weight"),
    (re.compile(r"^layer(\d)\.(\d+)\.bn(\d)\.(\w+)$"), r"res{stage}.\2.conv\3.norm.\4"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.0\.weight$"), r"res{stage}.\2.shortcut.weight"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.1\.(\w+)$"), r"res{stage}.\2.shortcut.norm.\3"),
    (re.compile(r"^fc\.\w+$"), None),
]
_BARE_RESNET_NAME = re.compile(r"^(stem|res\d)\.")
_CAFFE2_RESNET_NAME = re.compile(r"^(conv1_w$|res\d_)")  # Detectron2's model zoo .pkl
_STEM_WEIGHT = "stem.conv1.weight"


def convert_to_detectron2_resnet(state: dict[str, Any]) -> dict[str, Any]:
    """A torchvision or timm ResNet state dict renamed to Detectron2's ResNet
    (``stem.conv1``, ``res2.0.conv1.norm`` ...), without ``module.`` prefixes, the
    classifier ``fc`` or BatchNorm's ``num_batches_tracked`` (FrozenBN has none).

    Any other state dict comes back as it is, so that callers can pass every file through.
    """
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    if "layer1.0.conv1.weight" not in state:
        return state
    renamed = {}
    for key, value in state.items():
        new_key = key
        for pattern, replacement in _RESNET_RENAMES:
            match = pattern.match(key)
            if match:
                if replacement is not None and "{stage}" in replacement:
                    replacement = replacement.replace("{stage}", str(int(match.group(1)) + 1))
                new_key = None if replacement is None else match.expand(replacement)
                break
        if new_key is not None and not new_key.endswith("num_batches_tracked"):
            renamed[new_key] = value
    return renamed


def is_resnet_state(state: dict[str, Any]) -> bool:
    """Whether ``state`` (after :func:`convert_to_detectron2_resnet`) holds a ResNet trunk by
    Detectron2 or Caffe2 names, so a converter can refuse any other network."""
    return any(_BARE_RESNET_NAME.match(key) or _CAFFE2_RESNET_NAME.match(key) for key in state)


def _trunk_prefix(model_keys) -> Optional[str]:
    """``backbone.bottom_up.`` (or wherever the model's Detectron2 ResNet sits), else None."""
    return next((key[:-len(_STEM_WEIGHT)] for key in model_keys if key.endswith(_STEM_WEIGHT)),
                None)


def _counted(keys) -> list[str]:
    """Keys that count as weights: BatchNorm's step counter matches between any two models."""
    return [key for key in keys if not key.endswith("num_batches_tracked")]


def _first(names: list[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def _module_of(key: str) -> str:
    return ".".join(key.split(".")[:2])


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


class SafeCheckpointer(compat.CheckpointerHooks, DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, weights-only loading and RNG state.

    Drop-in for Detectron2's: ``hooks.PeriodicCheckpointer`` and
    ``DefaultTrainer.resume_or_load`` work unchanged through ``save``, ``has_checkpoint``,
    ``get_checkpoint_file`` and ``load``.

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

        ``checkpointables=None`` (what a resume passes) restores everything and needs every
        model parameter in the file; a list, as in ``resume_or_load(resume=False)``, loads
        the model (a partial match is fine unless ``require_all_weights``) and those objects
        only, and leaves the random generators alone.
        """
        self._require_all = self.require_all_weights or checkpointables is None
        if not path and self._require_all:
            raise MissingCheckpointError("no weights file given (MODEL.WEIGHTS is empty): "
                                         "every model parameter must come from a file here")
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

    def read_file(self, filename: str) -> dict[str, Any]:
        return load_weights_file(filename, allow_unsafe_pickle=self.allow_unsafe_pickle,
                                 logger=self.logger)

    def load_model_state(self, checkpoint: dict[str, Any]):
        """Rename the file's weights to the model's, check that they fit, then load them."""
        own = self.model.state_dict()
        # entries that are not arrays (an epoch count, a name) cannot be weights
        state = {key: value for key, value in checkpoint["model"].items()
                 if isinstance(value, (torch.Tensor, np.ndarray))}
        self.ndarrays_to_tensors(state)
        state = convert_to_detectron2_resnet(state)
        _upgrade_earlier_versions(self.model, state)
        trunk = _trunk_prefix(own)
        if trunk is not None:
            state = {trunk + key if _BARE_RESNET_NAME.match(key) else key: value
                     for key, value in state.items()}
        if checkpoint.pop("matching_heuristics", False) and not set(state) & set(own):
            state = align_and_update_state_dicts(
                own, state, c2_conversion=checkpoint.get("__author__") == "Caffe2")
        if trunk is not None:
            self._adapt_gray_stem(state, own, trunk + _STEM_WEIGHT)
        checkpoint["model"] = state
        self._check_fit(state, own, trunk or "")
        return super().load_model_state(checkpoint)

    def _adapt_gray_stem(self, state: dict[str, Any], own: dict[str, Any], key: str) -> None:
        """A one-channel model gets an RGB stem's filters summed over colour: on a gray image
        repeated in three channels that computes exactly what the RGB stem computes."""
        if key in state and own[key].shape[1] == 1 and state[key].shape[1] == 3 \
                and state[key].shape[0] == own[key].shape[0]:
            state[key] = state[key].sum(dim=1, keepdim=True)
            self.logger.info(f"{key}: summed the file's 3 input channels into the model's 1")

    def _check_fit(self, state: dict[str, Any], own: dict[str, Any], trunk: str) -> None:
        """Refuse weights that do not fit (all of them for a resume or inference, the trunk
        when initializing training), before anything is copied into the model; log the
        match per module."""
        path = getattr(self, "_loading", "?")
        wanted = _counted(own)
        absent = [key for key in wanted if key not in state]
        wrong = [f"{key}: {tuple(state[key].shape)} in the file, {tuple(own[key].shape)} in "
                 "the model" for key in wanted
                 if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
        misfit = set(absent) | {entry.split(":", 1)[0] for entry in wrong}
        trunk_keys = [key for key in wanted if key.startswith(trunk)]
        trunk_misfit = [key for key in trunk_keys if key in misfit]
        what = f"trunk {trunk.rstrip('.')}" if trunk else "model"
        if trunk_keys and len(trunk_misfit) == len(trunk_keys):
            raise MismatchedCheckpointError(
                f"weights file {path} matches none of the {len(trunk_keys)} parameters and "
                f"buffers of the {what}; is it for another architecture or config?")
        if self._require_all and (absent or wrong):
            problems = []
            if absent:
                problems.append(f"{len(absent)} of the model's {len(wanted)} parameters and "
                                f"buffers are not in it ({_first(absent)})")
            if wrong:
                problems.append(f"{len(wrong)} have another shape ({_first(wrong, 2)})")
            raise MismatchedCheckpointError(
                f"weights file {path} does not fit the model: {'; '.join(problems)}. Is it "
                f"for another architecture or config?")
        if self._require_all:
            return
        counts: dict[str, list[int]] = {}  # module -> [matched, missing, unexpected]
        for key in wanted:
            counts.setdefault(_module_of(key), [0, 0, 0])[key in misfit] += 1
        for key in _counted(state):
            if key not in own:
                counts.setdefault(_module_of(key), [0, 0, 0])[2] += 1
        self.logger.info(f"Initialized from {path}: {len(wanted) - len(misfit)} of the "
                         f"model's {len(wanted)} parameters and buffers matched")
        for module, (matched, missing, unexpected) in counts.items():
            self.logger.info(f"  {module}: {matched} matched, {missing} missing or of "
                             f"another shape, {unexpected} unexpected")
        if trunk_misfit:
            self.logger.warning(f"{path} fits only part of the {what}: {len(trunk_misfit)} of "
                                f"{len(trunk_keys)} not in the file or of another shape "
                                f"({_first(trunk_misfit)}); they keep their random values")

    def log_incompatible_keys(self, incompatible) -> None:
        """``_check_fit`` has already said what did not match."""


def _upgrade_earlier_versions(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Let modules whose parameter names changed between releases rename a file's old keys
    (their ``upgrade_state_dict(state, prefix)``), so checkpoints of earlier versions load."""
    for name, module in model.named_modules():
        upgrade = getattr(module, "upgrade_state_dict", None)
        if callable(upgrade):
            upgrade(state, f"{name}." if name else "")


def load_inference_weights(model: torch.nn.Module, path: str, *,
                           allow_unsafe_pickle: bool = False) -> dict[str, Any]:
    """Load every parameter of ``model`` from ``path`` (prediction, evaluation, export), or
    raise :class:`MismatchedCheckpointError` naming what is missing or of another shape.

    Returns what else the file holds; the random generators are left alone.
    """
    return SafeCheckpointer(model, allow_unsafe_pickle=allow_unsafe_pickle,
                            require_all_weights=True).load(path, checkpointables=[])


def load_trained_model(cfg, weights: str | os.PathLike, *, allow_unsafe_pickle: bool = False,
                       weights_key: str = "MODEL.WEIGHTS") -> torch.nn.Module:
    """The one way a trained model is loaded (prediction, export, evaluation, studies, the
    demo, the pruning report, pictures): ``cfg``'s model, built with GroupNorm widths named,
    every parameter read from ``weights`` (a missing or partial file is refused, naming
    ``weights_key`` or what does not fit), in eval mode on ``cfg.MODEL.DEVICE``."""
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise MissingCheckpointError(f"{weights_key} file {path} does not exist")
    with group_norm_widths_named(cfg):
        model = build_model(cfg)
    load_inference_weights(model, path, allow_unsafe_pickle=allow_unsafe_pickle)
    return model.eval()
