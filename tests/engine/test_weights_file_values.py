"""Weights files whose names or arrays no loader can use are one CorruptCheckpointError
naming the file, before renaming or tensor conversion could fail with a traceback (issue #23
item 10)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from maskrcnn_pp.engine.checkpoint import CorruptCheckpointError, load_weights_file

BAD_PICKLES = [
    ({1: np.ones(2)}, "holds the name 1 (a int); weight names are strings"),
    ({"model": {"conv1.weight": np.ones(2), 7: np.ones(2)}}, "holds the name 7"),
    ({"blobs": [np.ones(2)]}, "its 'blobs' entry is a list, not a dict of weights"),
    ({"model": {"conv1.weight": np.array(["a", "b"])}},
     "weight 'conv1.weight' is an array of <U1 values, not numbers"),
    ({"blobs": {"conv1_w": np.array([b"x"])}}, "weight 'conv1_w' is an array of |S1 values"),
]


@pytest.mark.parametrize("content,words", BAD_PICKLES, ids=[w[:30] for _, w in BAD_PICKLES])
def test_a_pickle_of_unusable_weights_is_named(tmp_path, content, words):
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(CorruptCheckpointError) as raised:
        load_weights_file(str(path))
    assert str(raised.value).startswith(f"checkpoint {path}: ") and words in str(raised.value)


def test_caffe2_blobs_keep_numbers_and_drop_momentum(tmp_path):
    path = tmp_path / "c2.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones(2, np.float32),
                                             "conv1_w_momentum": np.ones(2, np.float32),
                                             "lr": np.float32(0.1), "iter": 3}}, protocol=2))
    checkpoint = load_weights_file(str(path))
    assert set(checkpoint["model"]) == {"conv1_w", "lr", "iter"}
    assert checkpoint["matching_heuristics"] and checkpoint["__author__"] == "Caffe2"
