"""Config loading for every tool: Detectron2 defaults, this project's keys, a safe YAML chain
and overrides, checked before any slow work; and config keys named in GroupNorm errors.

Kept apart from the trainer, so that a tool that only reads a config (compare_runs,
export_model, prune_report) does not import the training loop.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Iterator, List, Optional

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import (
    add_maskrcnn_pp_config,
    check_input_config,
    config_value,
    upgrade_deprecated_keys,
)
from ..modeling.semantic_arch import SemanticUNetPP
from ..utils.errors import UserError
from ..utils.io import check_output_dir

__all__ = ["group_norm_widths_named", "is_semantic", "load_config", "setup"]


def is_semantic(cfg: CfgNode) -> bool:
    """Whether ``cfg`` describes a semantic network (``SemanticUNetPP``), not a detector."""
    return cfg.MODEL.META_ARCHITECTURE == SemanticUNetPP.__name__


def _refuse_duplicate_keys(config_file: str, node: Optional[yaml.Node], path: str = "",
                           seen: Optional[set] = None) -> None:
    """A key given twice in one mapping, at any depth (PyYAML would keep the second block and
    drop the first without a word), named with both of its lines."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an anchor's node is walked once
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(config_file, item, f"{path}[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
        lines: dict = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            dotted = f"{path}.{name}" if path else str(name)
            if name is not None and (key.tag, name) in lines:
                raise UserError(f"{config_file}: {dotted} is given twice (lines "
                                f"{lines[key.tag, name]} and {key.start_mark.line + 1}); "
                                "keep one (YAML would drop the first without a word)")
            lines[key.tag, name] = key.start_mark.line + 1
            _refuse_duplicate_keys(config_file, value, dotted, seen)


# LibYAML's parser where PyYAML was built with it (ten times faster), else the Python one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(config_file: str):
    """The safe-YAML document of ``config_file``, every mapping's keys checked unique."""
    with open(config_file, encoding="utf-8") as file:
        loader = _SAFE_LOADER(file)
        try:
            node = loader.get_single_node()
            _refuse_duplicate_keys(config_file, node)
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()


def _check_config_files(config_file: str, chain: tuple = ()) -> None:
    """Each YAML file of a ``_BASE_`` chain is readable safe YAML, a mapping of unique keys,
    and names a base that exists (Detectron2 would raise FileNotFoundError or TypeError)."""
    try:
        data = _read_yaml(config_file)
    except OSError as err:
        raise UserError(f"config file {config_file} cannot be read ({err.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{config_file}: not a safe YAML config "
                        f"({str(err).splitlines()[0]})") from None
    if data is None:
        raise UserError(f"{config_file}: is empty")
    if not isinstance(data, dict):
        raise UserError(f"{config_file}: the top level is {type(data).__name__}, not a "
                        "mapping of config keys (KEY: value)")
    base = data.get("_BASE_")
    if base is None or isinstance(base, str) and "://" in base:
        return
    if not isinstance(base, str):
        raise UserError(f"{config_file}: _BASE_ must be a file name, got {base!r}")
    path = os.path.expanduser(base)
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(config_file), path)
    if not os.path.isfile(path):
        raise UserError(f"{config_file}: _BASE_ names {base}, which does not exist "
                        f"({os.path.abspath(path)})")
    if os.path.realpath(path) in chain:
        raise UserError(f"{config_file}: _BASE_ {base} includes itself")
    _check_config_files(path, (*chain, os.path.realpath(config_file)))


def load_config(config_file: str, opts: Optional[List[str]] = None) -> CfgNode:
    """Detectron2 defaults + maskrcnn_pp keys + the YAML file + ``KEY VALUE`` overrides.

    YAML is parsed with ``yaml.safe_load`` only (Detectron2's default would fall back to
    ``unsafe_load``, which can run code). Every mistake raises :class:`UserError`.
    """
    cfg = add_maskrcnn_pp_config(get_cfg())
    if not config_file:
        raise UserError("--config-file is required")
    if not os.path.isfile(config_file):
        raise UserError(f"config file {config_file} does not exist")
    _check_config_files(config_file)
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
        cfg.merge_from_list(list(opts or []))
    except KeyError as err:
        raise UserError(f"{config_file}: {err.args[0]}") from None
    except (ValueError, AssertionError, TypeError) as err:
        raise UserError(f"{config_file}: {err}") from None
    upgrade_deprecated_keys(cfg, config_file)
    check_input_config(cfg, config_file)
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in DatasetCatalog.list():
                raise UserError(f"{config_file}: unknown data set {name!r} in DATASETS.{key}; "
                                "register it with DatasetCatalog or use one of the README's")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn("MODEL.DEVICE is 'cuda' but no CUDA device is available: using the CPU",
                      stacklevel=2)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def _check_weights(cfg: CfgNode, resume: bool, eval_only: bool) -> None:
    """MODEL.WEIGHTS names a file that exists; ``--eval-only`` has trained weights to score
    (Detectron2 would evaluate a randomly initialized model and exit 0)."""
    weights = cfg.MODEL.WEIGHTS
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    if eval_only and (not weights or "ImageNetPretrained" in weights):
        raise UserError(f"--eval-only needs trained weights, but MODEL.WEIGHTS is "
                        f"{weights or 'empty'}: add MODEL.WEIGHTS path/to/model_final.pth (or "
                        f"--resume with a checkpoint in OUTPUT_DIR {cfg.OUTPUT_DIR})")
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise UserError(f"MODEL.WEIGHTS file {weights} does not exist")


def setup(args, cfg: Optional[CfgNode] = None) -> CfgNode:
    """Config from parsed CLI args (or ``cfg``, already loaded from them), frozen, with
    Detectron2's logging and output folder. This package's loggers write to the run's
    ``log.txt`` too (Detectron2 sets up only its own): a resumed data stream or a run
    finished from its last checkpoint is on record."""
    cfg = load_config(args.config_file, args.opts) if cfg is None else cfg.clone()
    _check_weights(cfg, getattr(args, "resume", False), getattr(args, "eval_only", False))
    check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="maskrcnn_pp",
                 abbrev_name="mpp")
    return cfg


# Widths normalized by each GroupNorm switch (Detectron2's "GN" has 32 groups).
_GROUP_NORM_WIDTHS = {
    "MODEL.RESNETS.NORM": ("MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS",
                           "MODEL.RESNETS.WIDTH_PER_GROUP"),
    "MODEL.UNETPP.NORM": ("MODEL.UNETPP.WIDTHS", "MODEL.UNETPP.OUT_CHANNELS"),
    "MODEL.FPN.NORM": ("MODEL.FPN.OUT_CHANNELS",),
    "MODEL.ROI_BOX_HEAD.NORM": ("MODEL.ROI_BOX_HEAD.CONV_DIM",),
    "MODEL.ROI_MASK_HEAD.NORM": ("MODEL.ROI_MASK_HEAD.CONV_DIM",),
}


@contextlib.contextmanager
def group_norm_widths_named(cfg: CfgNode) -> Iterator[None]:
    """Around building ``cfg``'s model: a GroupNorm width that its group count does not
    divide becomes a :class:`UserError` naming the config key (torch names neither key nor
    layer)."""
    try:
        yield
    except ValueError as err:
        found = re.fullmatch(r"num_channels \((\d+)\) must be divisible by num_groups "
                             r"\((\d+)\)", str(err))
        if found is None:
            raise
        raise UserError(_group_norm_problem(cfg, *map(int, found.groups()))) from None


def _group_norm_problem(cfg: CfgNode, channels: int, groups: int) -> str:
    """Which config key set a GroupNorm width of ``channels`` that ``groups`` does not divide."""
    def value(key: str):
        return config_value(cfg, key)

    def widths(key: str) -> list:
        return list(value(key)) if isinstance(value(key), (list, tuple)) else [value(key)]

    keys = [key for norm, names in _GROUP_NORM_WIDTHS.items() if value(norm) == "GN"
            for key in names if any(isinstance(w, int) and w % groups for w in widths(key))]
    exact = [key for key in keys if channels in widths(key)]
    named = (exact or keys)[:1]
    if not named:
        return (f"a GroupNorm layer has {channels} channels, which its {groups} groups do not "
                "divide: make every width normalized with NORM 'GN' a multiple of "
                f"{groups}")
    key = named[0]
    bad = value(key) if key not in exact or not isinstance(value(key), (list, tuple)) else \
        f"{list(value(key))}: {channels}"
    return (f"{key} = {bad} is not a multiple of {groups}, the group count of GroupNorm "
            f"(NORM 'GN'): use a multiple of {groups} or another NORM")
