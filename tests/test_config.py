"""One vocabulary for the three users of the nested core, and the old key names still
loading for one release with a warning that names the new key."""
import warnings

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import maskrcnn_pp  # noqa: F401  (registers)
from maskrcnn_pp.config import DEPRECATED_KEYS, add_maskrcnn_pp_config, config_value
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.modeling.semantic_arch import build_semantic_net
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT

QUICK = ROOT / "configs" / "quick_schedules"
CORE_KEYS = {"WIDTHS", "NODE_CONVS", "UPSAMPLE", "NORM"}
DEEP_SUPERVISION_KEYS = {"DEEP_SUPERVISION_WEIGHTS", "INFERENCE_LEVEL"}


def test_the_three_users_of_the_nested_core_share_key_names():
    cfg = add_maskrcnn_pp_config(get_cfg())
    neck, head, semantic = cfg.MODEL.UNETPP, cfg.MODEL.ROI_MASK_HEAD, cfg.MODEL.SEMANTIC
    for node in (neck, head, semantic):
        assert CORE_KEYS <= set(node), sorted(node)
        assert isinstance(node.WIDTHS, list)
    for node in (head, semantic):
        assert DEEP_SUPERVISION_KEYS <= set(node)
        assert node.INFERENCE_LEVEL == 0  # the accurate mode


def _write(tmp_path, base, body):
    path = tmp_path / "old.yaml"
    path.write_text(f'_BASE_: "{QUICK / base}"\n{body}')
    return str(path)


OLD_CONFIGS = [  # old key in YAML, new key, the value expected under the new key
    ("mask_rcnn_pp_synthetic.yaml", "MODEL:\n  UNETPP:\n    WIDTH: 32\n",
     "MODEL.UNETPP.WIDTHS", [32, 32, 32, 32]),
    ("mask_rcnn_pp_synthetic.yaml", "MODEL:\n  ROI_MASK_HEAD:\n    UNETPP_WIDTHS: [16, 32, 64]\n",
     "MODEL.ROI_MASK_HEAD.WIDTHS", [16, 32, 64]),
    ("mask_rcnn_pp_synthetic.yaml", "MODEL:\n  ROI_MASK_HEAD:\n    UNETPP_NODE_CONVS: 1\n",
     "MODEL.ROI_MASK_HEAD.NODE_CONVS", 1),
    ("semantic_2d_quick.yaml", "MODEL:\n  SEMANTIC:\n    NUM_CONVS: 1\n",
     "MODEL.SEMANTIC.NODE_CONVS", 1),
]


def test_every_deprecated_key_is_covered():
    assert {new for _, _, new, _ in OLD_CONFIGS} == {key.new for key in DEPRECATED_KEYS}


@pytest.mark.parametrize("base,body,new,expected", OLD_CONFIGS, ids=lambda v: str(v)[:30])
def test_old_key_loads_with_a_warning_naming_the_new_key(tmp_path, base, body, new, expected):
    with pytest.warns(FutureWarning, match=f"use {new} instead"):
        cfg = load_config(_write(tmp_path, base, body))
    assert config_value(cfg, new) == expected
    old = next(key.old for key in DEPRECATED_KEYS if key.new == new)
    node, name = old.rsplit(".", 1)
    assert name not in config_value(cfg, node)  # the saved config speaks the new vocabulary only
    assert f"{name}:" not in config_value(cfg, node).dump()


@pytest.mark.parametrize("base,body,new,expected", OLD_CONFIGS, ids=lambda v: str(v)[:30])
def test_old_key_merged_by_plain_detectron2_builds_the_same_model(tmp_path, base, body, new,
                                                                  expected):
    """Users who merge with ``cfg.merge_from_file`` instead of ``load_config`` get the model
    the new key describes."""
    cfg = add_maskrcnn_pp_config(get_cfg())
    cfg.merge_from_file(_write(tmp_path, base, body))
    cfg.MODEL.DEVICE = "cpu"
    reference = load_config(str(QUICK / base), [new, str(expected)])
    with pytest.warns(FutureWarning, match=new):
        model = _build(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shapes = {k: v.shape for k, v in _build(reference).state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes


def _build(cfg):
    torch.manual_seed(0)
    if cfg.MODEL.META_ARCHITECTURE == "SemanticUNetPP":
        return build_semantic_net(cfg)
    return build_model(cfg)


def test_neck_widths_one_per_level():
    """Refused by load_config at the door, and by the builder in a config merged by plain
    Detectron2 calls."""
    with pytest.raises(UserError, match=r"MODEL.UNETPP.WIDTHS = \[32, 64\] has 2 width\(s\) "
                                        r"but MODEL.UNETPP.IN_FEATURES has 4 level\(s\)"):
        load_config(str(QUICK / "mask_rcnn_pp_synthetic.yaml"), ["MODEL.UNETPP.WIDTHS", "[32, 64]"])
    cfg = add_maskrcnn_pp_config(get_cfg())
    cfg.merge_from_file(str(QUICK / "mask_rcnn_pp_synthetic.yaml"), allow_unsafe=False)
    cfg.merge_from_list(["MODEL.UNETPP.WIDTHS", "[32, 64]"])
    with pytest.raises(ValueError, match=r"MODEL.UNETPP.WIDTHS needs one width per "
                                         r"IN_FEATURES level \(4\), got \[32, 64\]"):
        build_model(cfg)


def test_mask_head_upsampling_is_configurable():
    cfg = load_config(str(QUICK / "mask_rcnn_pp_synthetic.yaml"),
                      ["MODEL.ROI_MASK_HEAD.UPSAMPLE", "nearest"])
    head = build_model(cfg).roi_heads.mask_head
    assert all(not hasattr(up, "transpose") for up in head.nested.upsamples.values())
    default = build_model(load_config(str(QUICK / "mask_rcnn_pp_synthetic.yaml")))
    assert all(hasattr(up, "transpose")
               for up in default.roi_heads.mask_head.nested.upsamples.values())
