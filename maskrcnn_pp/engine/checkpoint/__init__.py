"""Checkpoints that survive a kill at any moment, weights files that never run code, and the
one way a trained model is loaded (:func:`load_trained_model`).

One module per job: :mod:`.checkpointer` (``SafeCheckpointer``: atomic saves, weights that
must fit, the upgrade of earlier releases' names; ``load_trained_model``),
:mod:`.weights_files` (reading ``.pth`` / ``.pkl`` safely, the errors), :mod:`.resnet_names`
(torchvision / timm ResNets under Detectron2's names), :mod:`.rng_state` (the random
generators saved with each checkpoint).
"""
from .checkpointer import (
    LAST_CHECKPOINT_TAG,
    SafeCheckpointer,
    last_checkpoint,
    load_trained_model,
)
from .resnet_names import convert_to_detectron2_resnet, is_resnet_state
from .rng_state import capture_rng_state, restore_rng_state
from .weights_files import (
    CorruptCheckpointError,
    MismatchedCheckpointError,
    MissingCheckpointError,
    UnsafeCheckpointError,
    load_weights_file,
)

__all__ = [
    "CorruptCheckpointError", "MismatchedCheckpointError", "MissingCheckpointError",
    "UnsafeCheckpointError", "SafeCheckpointer", "load_trained_model", "last_checkpoint",
    "load_weights_file",
    "convert_to_detectron2_resnet", "is_resnet_state", "capture_rng_state",
    "restore_rng_state", "LAST_CHECKPOINT_TAG",
]
