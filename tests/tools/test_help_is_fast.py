"""``--help`` of every tool and data preparer, and ``import maskrcnn_pp``, answer before
torch and Detectron2 load (issue #23 item 18); what they defer still happens when it is
needed."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from maskrcnn_pp.cli import predict, train_net
from tests.helpers import ROOT

TOOLS = sorted(path.relative_to(ROOT).as_posix() for path in
               [*(ROOT / "tools").glob("*.py"), *(ROOT / "datasets").glob("prepare_*.py")])
HEAVY = ("torch", "detectron2")


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_every_tool_prints_its_help_without_importing_torch():
    """All tools in one fresh interpreter: if one of them imported torch, it would show in
    ``sys.modules`` right after its help."""
    assert any(tool.startswith("datasets/") for tool in TOOLS)
    done = _run_fresh(
        "import contextlib, io, runpy, sys\n"
        f"for tool in {TOOLS!r}:\n"
        "    sys.argv = [tool, '--help']\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            runpy.run_path(tool, run_name='__main__')\n"
        "        except SystemExit as exit:\n"
        "            assert exit.code in (0, None), (tool, exit.code)\n"
        "    assert out.getvalue().startswith('usage: '), (tool, out.getvalue()[:200])\n"
        f"    loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    assert not loaded, f'{tool} --help imports {loaded}'\n")
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_import_maskrcnn_pp_is_light_and_registers_when_detectron2_is_used():
    done = _run_fresh(
        "import sys, maskrcnn_pp\n"
        f"assert not [m for m in {HEAVY!r} if m in sys.modules]\n"
        "from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, "
        "ROI_MASK_HEAD_REGISTRY\n"
        "from detectron2.data import DatasetCatalog\n"
        "assert 'build_resnet_unetpp_backbone' in BACKBONE_REGISTRY\n"
        "assert 'UNetPPMaskHead' in ROI_MASK_HEAD_REGISTRY\n"
        "assert 'SemanticUNetPP' in META_ARCH_REGISTRY\n"
        "assert 'nuclei_synthetic_train' in DatasetCatalog.list()\n"
        "assert sys.meta_path.count(maskrcnn_pp._REGISTRATION_HOOK) == 0\n")
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_registration_waits_for_half_imported_modules():
    """Detectron2 imported from inside this package's own modules (or Detectron2's) does
    not register half-way through them, and registers once they are whole."""
    for first in ("import maskrcnn_pp.data", "import maskrcnn_pp.engine.config",
                  "from maskrcnn_pp.modeling import UNet", "import detectron2.engine"):
        done = _run_fresh(
            f"{first}\nimport maskrcnn_pp\n"
            "from detectron2.modeling import BACKBONE_REGISTRY\n"
            "from detectron2.data import DatasetCatalog\n"
            "assert 'build_resnet_unetpp_backbone' in BACKBONE_REGISTRY\n"
            "assert 'nuclei_synthetic_train' in DatasetCatalog.list()\n")
        assert done.returncode == 0, (first, done.stderr[-3000:])


def test_the_package_names_load_on_first_use():
    import maskrcnn_pp
    for name in maskrcnn_pp.__all__:
        assert getattr(maskrcnn_pp, name) is not None
    assert set(maskrcnn_pp.__all__) <= set(dir(maskrcnn_pp))


def _described(parser: argparse.ArgumentParser) -> dict:
    """Each argument by its option strings (or name): what parsing does with it."""
    return {tuple(action.option_strings) or action.dest: (
        action.dest, type(action).__name__, action.default, action.nargs, action.type,
        action.required) for action in parser._actions}


def test_train_net_takes_detectron2s_flags_with_their_defaults():
    from detectron2.engine import default_argument_parser

    ours, theirs = _described(train_net.argument_parser()), _described(default_argument_parser())
    assert {key: ours.get(key) for key in theirs} == theirs
    assert set(ours) - set(theirs) == {("--allow-unsafe-pickle",), ("--overwrite",)}


def test_predicts_help_values_are_the_librarys():
    for dotted, value in predict.HELP_VALUES.items():
        module, name = dotted.rsplit(".", 1)
        assert getattr(importlib.import_module(module), name) == value, dotted
