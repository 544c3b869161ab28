"""Weights files read without running code from them, and the errors every loader raises.

``.pth`` files load with ``torch.load(weights_only=True)``; ``.pkl`` files (Detectron2's model
zoo, its converters) through an unpickler that builds NumPy arrays and plain Python values
only; anything else (old pickled ``.pth`` files, a pickle naming any other global) is refused
unless ``allow_unsafe_pickle=True``. What the project saves is converted to types that load
weights-only, and checked to load so before it is published.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Optional

import numpy as np
import torch

from ...utils.errors import UserError

__all__ = ["UnsafeCheckpointError", "MissingCheckpointError", "MismatchedCheckpointError",
           "CorruptCheckpointError", "load_weights_file", "to_weights_only_types",
           "is_complete_checkpoint", "check_weights_only_loadable"]


class UnsafeCheckpointError(UserError):
    """A checkpoint needs full unpickling, which can run code, and that was not allowed."""


class MissingCheckpointError(UserError, FileNotFoundError):
    """A checkpoint or weights file that does not exist."""


class MismatchedCheckpointError(UserError):
    """A weights file that does not fit the model (another architecture or config)."""


class CorruptCheckpointError(UserError):
    """A checkpoint file that is truncated or not a PyTorch checkpoint at all."""


def to_weights_only_types(value: Any) -> Any:
    """NumPy arrays become tensors and NumPy scalars Python numbers, recursively.

    Containers without NumPy values are returned as they are (a model's state dict keeps
    its ``_metadata``, which module versioning needs).
    """
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (dict, OrderedDict):
        converted = {key: to_weights_only_types(item) for key, item in value.items()}
        if all(converted[key] is value[key] for key in value):
            return value
        out = type(value)(converted)
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata
        return out
    if type(value) in (list, tuple):
        converted_items = [to_weights_only_types(item) for item in value]
        if all(new is old for new, old in zip(converted_items, value)):
            return value
        return type(value)(converted_items)
    return value


def is_complete_checkpoint(path: str) -> bool:
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
    for entry in ("model", "blobs") if is_pickle else ("model",):
        if entry in loaded and not isinstance(loaded[entry], dict):
            raise CorruptCheckpointError(
                f"checkpoint {filename}: its {entry!r} entry is a "
                f"{type(loaded[entry]).__name__}, not a dict of weights")
    if "model" in loaded:
        checkpoint = loaded
    elif isinstance(loaded.get("state_dict"), dict):
        checkpoint = {"model": loaded["state_dict"]}
    elif is_pickle:
        checkpoint = {"model": loaded.get("blobs", loaded), "__author__": "Caffe2",
                      "matching_heuristics": True}
    else:
        checkpoint = {"model": loaded}
    _check_weight_names_and_arrays(filename, checkpoint["model"])
    if checkpoint.get("__author__") == "Caffe2":
        checkpoint["model"] = {name: value for name, value in checkpoint["model"].items()
                               if not name.endswith("_momentum")}
    return checkpoint


def _check_weight_names_and_arrays(filename: str, weights: dict) -> None:
    """Every name is a string and every NumPy value numeric, so renaming and conversion to
    tensors cannot fail later with a traceback; entries that are not arrays (an epoch
    count) are left for the loaders to skip."""
    for name, value in weights.items():
        if not isinstance(name, str):
            raise CorruptCheckpointError(
                f"checkpoint {filename}: holds the name {name!r} (a {type(name).__name__}); "
                "weight names are strings")
        if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind not in "biufc":
            raise CorruptCheckpointError(
                f"checkpoint {filename}: weight {name!r} is an array of {value.dtype} "
                "values, not numbers")


def check_weights_only_loadable(name: str) -> Callable[[str], None]:
    def check(tmp_path: str) -> None:
        try:
            torch.load(tmp_path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:
            raise TypeError(
                f"checkpoint {name} holds a value that torch.load(weights_only=True) cannot "
                f"read; save tensors and plain Python values only "
                f"({_unpickler_reason(err)})") from None
    return check
