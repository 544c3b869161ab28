"""Config values checked at the door (issue #23 items 10 and 11): a value a model or the
training loop would fail on later, and a YAML key given twice, are one UserError naming
the key (and the lines), before anything is built."""
from __future__ import annotations

import pytest
from detectron2.config import get_cfg

from maskrcnn_pp.config import VALUE_RULES, add_maskrcnn_pp_config, check_config_values
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT

QUICK = ROOT / "configs" / "quick_schedules"
PP, BASELINE = QUICK / "mask_rcnn_pp_synthetic.yaml", QUICK / "mask_rcnn_baseline_synthetic.yaml"
SEMANTIC = QUICK / "semantic_2d_quick.yaml"

# (config, override key, bad value, words the message must hold)
BAD_VALUES = [
    (PP, "SOLVER.MAX_ITER", "-5", "must be an integer >= 1"),
    (PP, "SOLVER.MAX_ITER", "0", "must be an integer >= 1"),
    (PP, "SOLVER.IMS_PER_BATCH", "0", ">= 1"),
    (PP, "SOLVER.CHECKPOINT_PERIOD", "0", ">= 1"),
    (PP, "SOLVER.WARMUP_ITERS", "-1", ">= 0"),
    (PP, "SOLVER.BASE_LR", "-0.1", ">= 0"),
    (PP, "SOLVER.BASE_LR", "1e999", "finite"),
    (PP, "TEST.EVAL_PERIOD", "-1", ">= 0"),
    (PP, "DATALOADER.NUM_WORKERS", "-2", ">= 0"),
    (PP, "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "0", ">= 1"),
    (PP, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "0", ">= 1"),
    (PP, "MODEL.UNETPP.WIDTHS", "[32, 32, 32]", "MODEL.UNETPP.IN_FEATURES has 4 level(s)"),
    (PP, "MODEL.UNETPP.WIDTHS", "[32, 0, 32, 32]", "positive integers"),
    (PP, "MODEL.UNETPP.OUT_CHANNELS", "0", ">= 1"),
    (PP, "MODEL.UNETPP.NODE_CONVS", "-1", ">= 0"),
    (PP, "MODEL.UNETPP.UPSAMPLE", "cubic", "['nearest', 'bilinear', 'transpose']"),
    (PP, "MODEL.UNETPP.NODE_INIT", "xavier", "['', 'msra']"),
    (PP, "MODEL.ROI_MASK_HEAD.WIDTHS", "[16, 32]", "at least 3 levels"),
    (PP, "MODEL.ROI_MASK_HEAD.NODE_CONVS", "0", ">= 1"),
    (PP, "MODEL.ROI_MASK_HEAD.NODE_INIT", "xavier", "['', 'msra']"),
    (PP, "MODEL.ROI_MASK_HEAD.UPSAMPLE", "cubic", "'nearest'"),
    (PP, "MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS", "[0.5, 0.3, 0.2]",
     "3 value(s) for 2 supervised output(s) [1, 2]"),
    (PP, "MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS", "[-1.0, 1.0]", ">= 0"),
    (PP, "MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL", "9", "use 0 (accurate) or one of the outputs"),
    (PP, "MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL", "-1", "[1, 2]"),
    (PP, "MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS", "[0.0, 0.0]", "every output weight 0"),
    (SEMANTIC, "MODEL.SEMANTIC.ARCH", "resnet", "'unetpp' or 'unet'"),
    (SEMANTIC, "MODEL.SEMANTIC.WIDTHS", "[8]", "at least 2 levels"),
    (SEMANTIC, "MODEL.SEMANTIC.DIMS", "4", "[1, 2, 3]"),
    (SEMANTIC, "MODEL.SEMANTIC.IN_CHANNELS", "0", ">= 1"),
    (SEMANTIC, "MODEL.SEMANTIC.NUM_CLASSES", "0", ">= 1"),
    (SEMANTIC, "MODEL.SEMANTIC.NODE_CONVS", "0", ">= 1"),
    (SEMANTIC, "MODEL.SEMANTIC.UPSAMPLE", "cubic", "'transpose'"),
    (SEMANTIC, "MODEL.SEMANTIC.NODE_INIT", "xavier", "'msra'"),
    (SEMANTIC, "MODEL.SEMANTIC.DEEP_SUPERVISION_WEIGHTS", "[1.0]", "for 2 supervised output(s)"),
    (SEMANTIC, "MODEL.SEMANTIC.INFERENCE_LEVEL", "9", "one of the outputs [1, 2]"),
    (SEMANTIC, "INPUT.SEMANTIC_SIZE", "-1", ">= 0"),
]


def test_every_rule_has_a_bad_value_here():
    assert {key for key, _ in VALUE_RULES} == {key for _, key, _, _ in BAD_VALUES}


@pytest.mark.parametrize("config,key,value,words", BAD_VALUES,
                         ids=[f"{key}={value}" for _, key, value, _ in BAD_VALUES])
def test_a_bad_value_is_one_user_error_naming_the_key(config, key, value, words):
    with pytest.raises(UserError) as raised:
        load_config(str(config), [key, value])
    message = str(raised.value)
    assert message.startswith(f"{config}: {key} = ") and words in message, message


def test_the_semantic_outputs_follow_arch_and_deep_supervision():
    """U-Net and UNet++ without deep supervision have one output, L: level L is available,
    level 1 and per-output weights are not."""
    assert load_config(str(SEMANTIC), ["MODEL.SEMANTIC.DEEP_SUPERVISION", "False",
                                       "MODEL.SEMANTIC.INFERENCE_LEVEL", "2"])
    for arch_opts in (["MODEL.SEMANTIC.ARCH", "unet"],
                      ["MODEL.SEMANTIC.DEEP_SUPERVISION", "False"]):
        with pytest.raises(UserError, match=r"one of the outputs \[2\]"):
            load_config(str(SEMANTIC), [*arch_opts, "MODEL.SEMANTIC.INFERENCE_LEVEL", "1"])


def test_an_output_trained_with_weight_zero_is_no_inference_level():
    opts = ["MODEL.ROI_MASK_HEAD.DEEP_SUPERVISION_WEIGHTS", "[0.0, 1.0]"]
    assert load_config(str(PP), [*opts, "MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL", "2"])
    with pytest.raises(UserError, match=r"INFERENCE_LEVEL = 1 is output 1, which MODEL.ROI_"
                                        r"MASK_HEAD.DEEP_SUPERVISION_WEIGHTS trains with weight "
                                        r"0: use 0 \(accurate\) or one of the trained outputs "
                                        r"\[2\]"):
        load_config(str(PP), [*opts, "MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL", "1"])


def test_the_keys_of_a_model_the_config_does_not_build_are_not_checked():
    """The baseline builds FPN and Detectron2's mask head: MODEL.UNETPP and the UNet++ head
    keys are read by nothing, so any value there is left alone."""
    cfg = load_config(str(BASELINE), ["MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL", "9",
                                      "MODEL.UNETPP.WIDTHS", "[1]"])
    assert cfg.MODEL.ROI_MASK_HEAD.INFERENCE_LEVEL == 9


@pytest.mark.parametrize("config", sorted(p.relative_to(ROOT / "configs").as_posix()
                                          for p in (ROOT / "configs").rglob("*.yaml")
                                          if p.parent.name != "studies"))
def test_every_shipped_config_passes_the_checks(config):
    cfg = add_maskrcnn_pp_config(get_cfg())
    cfg.merge_from_file(str(ROOT / "configs" / config), allow_unsafe=False)
    check_config_values(cfg, config)


def _yaml(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_top_level_key_given_twice_names_both_lines(tmp_path):
    config = _yaml(tmp_path, "twice.yaml", f"_BASE_: {PP}\nSOLVER:\n  MAX_ITER: 7\n"
                                           "OUTPUT_DIR: out\nSOLVER:\n  BASE_LR: 0.1\n")
    with pytest.raises(UserError) as raised:
        load_config(str(config))
    assert str(raised.value) == (f"{config}: SOLVER is given twice (lines 2 and 5); keep one "
                                 "(YAML would drop the first without a word)")


def test_a_nested_key_given_twice_is_named_by_its_path(tmp_path):
    config = _yaml(tmp_path, "nested.yaml", f"_BASE_: {PP}\nMODEL:\n  UNETPP:\n"
                                            "    NODE_CONVS: 1\n    NODE_CONVS: 2\n")
    with pytest.raises(UserError, match=r"MODEL\.UNETPP\.NODE_CONVS is given twice "
                                        r"\(lines 4 and 5\)"):
        load_config(str(config))


def test_a_key_given_twice_in_a_base_file_names_the_base(tmp_path):
    base = _yaml(tmp_path, "base.yaml", f"_BASE_: {PP}\nOUTPUT_DIR: a\nOUTPUT_DIR: b\n")
    config = _yaml(tmp_path, "child.yaml", "_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(UserError, match=rf"^{base}: OUTPUT_DIR is given twice \(lines 2 and 3\)"):
        load_config(str(config))


def test_the_same_key_in_sibling_nodes_and_anchors_is_fine(tmp_path):
    config = _yaml(tmp_path, "fine.yaml",
                   f"_BASE_: {PP}\nMODEL:\n  UNETPP:\n    NODE_CONVS: 1\n"
                   "  ROI_MASK_HEAD:\n    NODE_CONVS: &convs 1\n  SEMANTIC:\n"
                   "    NODE_CONVS: *convs\n")
    cfg = load_config(str(config))
    assert cfg.MODEL.UNETPP.NODE_CONVS == cfg.MODEL.ROI_MASK_HEAD.NODE_CONVS == 1


def test_the_config_vocabularies_are_the_nested_cores():
    """config.py repeats the core's choices (it must not import torch): they stay equal."""
    from maskrcnn_pp import config
    from maskrcnn_pp.modeling import nested

    assert config._NODE_INITS == nested.NODE_INITS
    for mode in config._UPSAMPLINGS:
        nested._Upsample(mode, 8, 4, 2)
    with pytest.raises(ValueError, match="unknown upsampling"):
        nested._Upsample("cubic", 8, 4, 2)
