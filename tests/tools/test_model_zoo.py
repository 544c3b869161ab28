"""Shipped configs are found by name, from a clone and from an installed wheel."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import maskrcnn_pp
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.model_zoo import list_config_files
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT


def test_get_config_file_finds_every_shipped_config_and_it_loads():
    names = list_config_files()
    on_disk = sorted(p.relative_to(ROOT / "configs").as_posix()
                     for p in (ROOT / "configs").rglob("*.yaml"))
    assert names == on_disk
    path = maskrcnn_pp.get_config_file("mask_rcnn_pp.yaml")
    assert Path(path).read_bytes() == (ROOT / "configs" / "mask_rcnn_pp.yaml").read_bytes()
    cfg = load_config(maskrcnn_pp.get_config_file("semantic/polyp_unetpp.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "SemanticUNetPP"


@pytest.mark.parametrize("name", ["no_such.yaml", "../setup.py", "../Makefile", "semantic"])
def test_unknown_or_outside_names_are_refused_with_the_choices(name):
    with pytest.raises(UserError, match="mask_rcnn_pp.yaml"):
        maskrcnn_pp.get_config_file(name)


def test_public_names():
    import torch

    from maskrcnn_pp.modeling import UNet, UNetPlusPlus

    image = torch.zeros(1, 1, 16, 16)
    for net in (UNetPlusPlus(widths=(4, 8, 16)).eval(), UNet(widths=(4, 8, 16)).eval()):
        assert net.predict(image).shape == (1, 1, 16, 16)
    assert {"add_maskrcnn_pp_config", "get_config_file", "load_config", "Trainer",
            "load_predictor", "export_model", "UNetPlusPlus"} <= set(maskrcnn_pp.__all__)
    for name in maskrcnn_pp.__all__:
        assert getattr(maskrcnn_pp, name) is not None, name
    assert maskrcnn_pp.load_config is load_config
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        maskrcnn_pp.no_such_name  # noqa: B018


@pytest.mark.slow
def test_wheel_ships_the_configs_inside_the_package(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("maskrcnn_pp", "configs"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("maskrcnn_pp-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    expected = {f"maskrcnn_pp/configs/{n}" for n in list_config_files()}
    assert shipped == expected
