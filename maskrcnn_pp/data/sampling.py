"""A training stream that a resumed run continues instead of restarting.

Detectron2's ``TrainingSampler`` draws its seed anew in every process start and always
begins at the first index, so ``--resume`` replays the first batches of a fresh random
order. :class:`ResumableTrainingSampler` keeps the seed in the checkpoint (the trainer
saves it) and can skip the samples the earlier iterations consumed; for loaders without
aspect-ratio grouping the resumed run then sees exactly the batches the uninterrupted run
would have seen (when the start iteration is a multiple of ``DATALOADER.NUM_WORKERS``).
"""
from __future__ import annotations

import itertools

from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler

from .. import compat

__all__ = ["ResumableTrainingSampler", "build_resumable_train_loader"]


class ResumableTrainingSampler(compat.SeekableTrainingSampler, TrainingSampler):
    """``TrainingSampler`` whose stream can start after ``skip`` samples (of all ranks)."""

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self):
        if self.skip % self.world_size:
            raise ValueError(f"skip {self.skip} is not a multiple of the world size "
                             f"{self.world_size}")
        yield from itertools.islice(self.infinite_indices(), self.skip + self.rank, None,
                                    self.world_size)


def build_resumable_train_loader(cfg: CfgNode, mapper):
    """Detectron2's training loader over ``cfg.DATASETS.TRAIN``; with the default
    ``DATALOADER.SAMPLER_TRAIN`` its sampler is a :class:`ResumableTrainingSampler`, found
    as the loader's ``resumable_sampler`` attribute (None with other samplers)."""
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
                       if cfg.MODEL.KEYPOINT_ON else 0),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
    sampler = (ResumableTrainingSampler(len(dataset))
               if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler" else None)
    loader = build_detection_train_loader(cfg, mapper=mapper, dataset=dataset, sampler=sampler)
    loader.resumable_sampler = sampler
    return loader
