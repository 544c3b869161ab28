"""Shipped configs are found by name, from a clone and from an installed wheel."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, built from a copy (the build leaves nothing here)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("maskrcnn_pp", "configs"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    built, = (tmp_path / "dist").glob("maskrcnn_pp-*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_the_configs_inside_the_package(wheel):
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    expected = {f"maskrcnn_pp/configs/{n}" for n in list_config_files()}
    assert shipped == expected


@pytest.mark.slow
def test_a_study_trains_and_reports_from_an_installed_wheel(wheel, tmp_path):
    """A temporary venv whose only maskrcnn_pp is the wheel (its other packages are this
    environment's), run outside the checkout: the study trains through
    ``python -m maskrcnn_pp.cli.train_net`` and needs no ``tools/``."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site, = venv.glob("lib/python*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    python = venv / "bin" / "python"
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    where = subprocess.run([str(python), "-c", "import maskrcnn_pp; print(maskrcnn_pp.__file__)"],
                           capture_output=True, text=True, env=env, cwd=work, check=True)
    assert where.stdout.strip().startswith(str(site))
    config = "quick_schedules/mask_rcnn_pp_synthetic.yaml"
    spec = work / "study.yaml"
    spec.write_text(
        f"output: {work / 'study'}\n"
        f"models:\n  pp: {site / 'maskrcnn_pp' / 'configs' / config}\n"
        "seeds: [0]\neval_sets: [nuclei_synthetic_val]\n"
        "overrides: {SOLVER.MAX_ITER: 2, SOLVER.IMS_PER_BATCH: 1, SOLVER.WARMUP_ITERS: 0,"
        " INPUT.MIN_SIZE_TRAIN: [64], INPUT.MAX_SIZE_TRAIN: 64, INPUT.MIN_SIZE_TEST: 64,"
        " INPUT.MAX_SIZE_TEST: 64}\n")
    done = subprocess.run([str(python), "-m", "maskrcnn_pp.cli.study", str(spec),
                           "--resamples", "100", "--ap-resamples", "2"],
                          capture_output=True, text=True, env=env, cwd=work, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "study" / "runs" / "pp" / "seed0" / "model_final.pth").is_file()
    report = json.loads((work / "study" / "study.json").read_text())
    assert report["eval_sets"]["nuclei_synthetic_val"]["final"]["models"]["pp"]["seeds"] == [0]
