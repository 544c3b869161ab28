"""torchvision / timm ResNet state dicts under Detectron2's ResNet names (the trunk of every
detector here), so that ImageNet weights from either library initialize a model."""
from __future__ import annotations

import re
from typing import Any, Optional

__all__ = ["convert_to_detectron2_resnet", "is_resnet_state", "trunk_prefix",
           "BARE_RESNET_NAME", "STEM_WEIGHT"]


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
BARE_RESNET_NAME = re.compile(r"^(stem|res\d)\.")
_CAFFE2_RESNET_NAME = re.compile(r"^(conv1_w$|res\d_)")  # Detectron2's model zoo .pkl
STEM_WEIGHT = "stem.conv1.weight"


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
    return any(BARE_RESNET_NAME.match(key) or _CAFFE2_RESNET_NAME.match(key) for key in state)


def trunk_prefix(model_keys) -> Optional[str]:
    """``backbone.bottom_up.`` (or wherever the model's Detectron2 ResNet sits), else None."""
    return next((key[:-len(STEM_WEIGHT)] for key in model_keys if key.endswith(STEM_WEIGHT)),
                None)
