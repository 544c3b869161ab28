"""The study description: what a multi-seed study compares, read from YAML and checked.

A description holds ``output`` (folder), ``models``, ``seeds``, shared ``overrides`` (the
schedule), and optionally ``eval_sets`` (registered data sets; default: the models'
DATASETS.TEST), ``eval_iters`` (training iterations whose checkpoints are evaluated, for
learning curves; default: the last one), ``pairs`` (the model pairs whose differences are
reported; default: every pair), ``contrasts`` (named weighted sums of models, e.g. the main
effects of a 2x2 ablation) and ``group_pattern`` (a regular expression whose first group,
matched on an image's file name, names the unit images are resampled by).

A model is a config file, or a mapping with ``config`` and per-model ``overrides`` (a
one-factor variant without a config file of its own), or ``runs_of: <model>`` with
``eval_overrides``: the other model's trained runs evaluated with other inference settings
(e.g. another ``INFERENCE_LEVEL``), trained once.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from detectron2.data import DatasetCatalog

from ..utils.errors import UserError

__all__ = ["ModelEntry", "StudySpec", "load_spec", "check_spec", "SPEC_KEYS", "STUDY_KEYS"]

SPEC_KEYS = {"output", "models", "seeds", "overrides", "eval_sets", "eval_iters", "pairs",
             "contrasts", "group_pattern"}
MODEL_KEYS = {"config", "overrides", "runs_of", "eval_overrides"}
# Set by the study for every run; a description cannot override them.
STUDY_KEYS = ("SEED", "OUTPUT_DIR", "DATASETS.TEST")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ModelEntry:
    """One compared model: how it is trained (config + overrides) and evaluated."""

    name: str
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    runs_of: str | None = None
    eval_overrides: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        if self.runs_of:
            return {"runs_of": self.runs_of, "eval_overrides": dict(self.eval_overrides)}
        if not self.overrides and not self.eval_overrides:
            return {"config": self.config}
        return {"config": self.config, "overrides": dict(self.overrides),
                "eval_overrides": dict(self.eval_overrides)}


@dataclass
class StudySpec:
    """What to compare; see the module docstring for the YAML form."""

    output: Path
    models: dict[str, ModelEntry]
    seeds: list[int]
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_sets: list[str] = field(default_factory=list)
    eval_iters: list[int] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    contrasts: dict[str, dict[str, float]] = field(default_factory=dict)
    group_pattern: str | None = None
    source: str = "<command line>"

    def as_dict(self) -> dict:
        return {"output": str(self.output),
                "models": {n: m.as_dict() for n, m in self.models.items()},
                "seeds": list(self.seeds), "overrides": dict(self.overrides),
                "eval_sets": list(self.eval_sets), "eval_iters": list(self.eval_iters),
                "pairs": [list(p) for p in self.pairs],
                "contrasts": {k: dict(v) for k, v in self.contrasts.items()},
                "group_pattern": self.group_pattern}


def load_spec(path: str | os.PathLike, more_overrides: dict | None = None,
              **changes: Any) -> StudySpec:
    """Read and check a study YAML; ``changes`` (non-None) replace its fields,
    ``more_overrides`` are merged into its overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(sorted(SPEC_KEYS))}")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(SPEC_KEYS))}")
    data.update({k: v for k, v in changes.items() if v is not None})
    if more_overrides:
        data["overrides"] = {**(data.get("overrides") or {}), **more_overrides}
    return check_spec(data, str(path))


def _check_overrides(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where} must map config keys to values")
    for key in value:
        if key in STUDY_KEYS:
            raise UserError(f"{where}.{key} is set by the study for each run; remove it")
    return dict(value)


def _check_models(models: Any, source: str) -> dict[str, ModelEntry]:
    if not isinstance(models, dict):
        raise UserError(f"{source}: 'models' must map model names to config files")
    entries: dict[str, ModelEntry] = {}
    for name, value in models.items():
        where = f"{source}: models.{name}"
        if not (isinstance(name, str) and _NAME.match(name)):
            raise UserError(f"{source}: model name {name!r} must be letters, digits, '_', "
                            "'-' or '.' (it names a folder)")
        if isinstance(value, str):
            value = {"config": value}
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a config file or a mapping with "
                            f"{', '.join(sorted(MODEL_KEYS))}")
        unknown = sorted(set(value) - MODEL_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(MODEL_KEYS))}")
        runs_of = value.get("runs_of")
        if runs_of is not None:
            if set(value) - {"runs_of", "eval_overrides"}:
                raise UserError(f"{where}: a model with runs_of takes only eval_overrides")
            if runs_of not in models or isinstance(models[runs_of], dict) and \
                    models[runs_of].get("runs_of"):
                raise UserError(f"{where}: runs_of {runs_of!r} is not a trained model of this "
                                "study")
            entries[name] = ModelEntry(name, config="", runs_of=runs_of,
                                       eval_overrides=_check_overrides(
                                           value.get("eval_overrides"),
                                           f"{where}: eval_overrides"))
            continue
        config = value.get("config")
        if not isinstance(config, str) or not Path(config).is_file():
            raise UserError(f"{where}: config file {config} does not exist")
        entries[name] = ModelEntry(
            name, config=config,
            overrides=_check_overrides(value.get("overrides"), f"{where}: overrides"),
            eval_overrides=_check_overrides(value.get("eval_overrides"),
                                            f"{where}: eval_overrides"))
    for entry in entries.values():
        if entry.runs_of:
            entry.config = entries[entry.runs_of].config
    return entries


def _int_list(value: Any, key: str, source: str, minimum: int) -> list[int]:
    value = value or []
    if (not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                               and v >= minimum for v in value)
            or len(set(value)) != len(value)):
        raise UserError(f"{source}: '{key}' must be a list of distinct integers >= {minimum}, "
                        f"got {value!r}")
    return list(value)


def check_spec(data: dict, source: str) -> StudySpec:
    """A :class:`StudySpec` from a plain dict; every mistake names ``source`` and the key."""
    for key in ("output", "models", "seeds"):
        if data.get(key) in (None, "", [], {}):
            raise UserError(f"{source}: '{key}' is required")
    models = _check_models(data["models"], source)
    seeds = _int_list(data["seeds"], "seeds", source, 0)
    overrides = _check_overrides(data.get("overrides"), f"{source}: overrides")
    eval_iters = sorted(_int_list(data.get("eval_iters"), "eval_iters", source, 1))
    eval_sets = data.get("eval_sets") or []
    if not isinstance(eval_sets, list) or not all(isinstance(s, str) for s in eval_sets):
        raise UserError(f"{source}: 'eval_sets' must be a list of registered data set names")
    registered = set(DatasetCatalog.list())
    for name in eval_sets:
        if name not in registered:
            raise UserError(f"{source}: eval_sets: unknown data set {name!r}; register it with "
                            "DatasetCatalog (see README) or use a registered name")
    pairs = []
    for pair in data.get("pairs") or []:
        if (not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1]
                or not all(m in models for m in pair)):
            raise UserError(f"{source}: pairs: {pair!r} must be two different models of the "
                            f"study ({', '.join(models)})")
        pairs.append((pair[0], pair[1]))
    contrasts = {}
    for name, weights in (data.get("contrasts") or {}).items():
        where = f"{source}: contrasts.{name}"
        if not isinstance(weights, dict) or not weights:
            raise UserError(f"{where} must map model names to weights")
        for model, weight in weights.items():
            if model not in models:
                raise UserError(f"{where}: unknown model {model!r}")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise UserError(f"{where}.{model}: weight {weight!r} is not a number")
        if abs(sum(weights.values())) > 1e-9:
            raise UserError(f"{where}: weights sum to {sum(weights.values())}, not 0 (a "
                            "contrast compares models; e.g. {a: 0.5, b: 0.5, c: -0.5, d: -0.5})")
        contrasts[str(name)] = {m: float(w) for m, w in weights.items()}
    pattern = data.get("group_pattern")
    if pattern is not None:
        try:
            if re.compile(pattern).groups < 1:
                raise UserError(f"{source}: group_pattern {pattern!r} needs a (group)")
        except re.error as err:
            raise UserError(f"{source}: group_pattern {pattern!r}: {err}") from None
    return StudySpec(output=Path(data["output"]), models=models, seeds=seeds,
                     overrides=overrides, eval_sets=list(eval_sets), eval_iters=eval_iters,
                     pairs=pairs, contrasts=contrasts, group_pattern=pattern, source=source)
