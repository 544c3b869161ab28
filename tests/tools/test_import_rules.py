"""The layering of the package, checked from the source (docs/architecture.md): networks know
tensors, not data sets or metrics; metrics judge predictions, they do not build models; the
nested core is plain PyTorch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "maskrcnn_pp"

FORBIDDEN = {  # subpackage -> subpackages it must not import
    "modeling": {"data", "evaluation", "engine", "inference", "studies", "cli"},
    "evaluation": {"modeling", "engine", "inference", "studies", "cli"},
    "data": {"modeling", "evaluation", "engine", "inference", "studies", "cli"},
    "engine": {"inference", "studies", "cli"},
    "inference": {"studies", "cli"},
    "studies": {"cli"},
}


def _imports(path: Path, location: Path | None = None) -> list[str]:
    """Every module ``path`` imports, absolute; relative imports are resolved as if the file
    were at ``location`` (default: where it is)."""
    package = (location or path).relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "maskrcnn_pp" else None


@pytest.mark.parametrize("owner", sorted(FORBIDDEN))
def test_subpackages_import_only_what_their_layer_allows(owner):
    broken = sorted({f"{path.relative_to(PACKAGE.parent)} imports {module}"
                     for path in (PACKAGE / owner).rglob("*.py")
                     for module in _imports(path)
                     if _subpackage(module) in FORBIDDEN[owner]})
    assert not broken, "\n".join(broken)


SHARED = ["config.py", "compat.py", "model_zoo.py", "utils"]  # used by every package


@pytest.mark.parametrize("shared", SHARED)
def test_shared_modules_import_no_package(shared):
    paths = [PACKAGE / shared] if shared.endswith(".py") else (PACKAGE / shared).rglob("*.py")
    packages = {"modeling", "data", "evaluation", "engine", "inference", "studies", "cli"}
    broken = sorted({f"{path.relative_to(PACKAGE.parent)} imports {module}"
                     for path in paths for module in _imports(path)
                     if _subpackage(module) in packages})
    assert not broken, "\n".join(broken)


def test_the_nested_core_imports_only_torch_and_the_standard_library():
    outside = sorted({module for module in _imports(PACKAGE / "modeling" / "nested.py")
                      if module.split(".")[0] not in {"torch", *sys.stdlib_module_names}})
    assert not outside, outside


# Modules that read a config without training: importing them must not load the trainer.
CONFIG_READERS = ("maskrcnn_pp.engine.config", "maskrcnn_pp.engine", "maskrcnn_pp.cli.compare_runs",
                  "maskrcnn_pp.cli.prune_report", "maskrcnn_pp.cli.export_model")


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, so ``sys.modules`` shows what its imports load."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_reading_a_config_does_not_import_the_trainer():
    probe = ("import importlib, sys\n"
             f"for name in {CONFIG_READERS!r}:\n"
             "    importlib.import_module(name)\n"
             "    if 'maskrcnn_pp.engine.trainer' in sys.modules:\n"
             "        sys.exit(f'{name} imports maskrcnn_pp.engine.trainer')\n")
    done = _run_fresh(probe)
    assert done.returncode == 0, done.stderr[-2000:]


def test_import_registers_without_loading_the_training_loop_or_predictors():
    """``import maskrcnn_pp`` registers; its entry points (``maskrcnn_pp.load_predictor``)
    load their packages on first use."""
    done = _run_fresh(
        "import sys, maskrcnn_pp; from detectron2.modeling import BACKBONE_REGISTRY; "
        "assert 'build_resnet_unetpp_backbone' in BACKBONE_REGISTRY; "
        "loaded = [m for m in ('maskrcnn_pp.engine.trainer', 'maskrcnn_pp.inference') "
        "if m in sys.modules]; assert not loaded, loaded; "
        "maskrcnn_pp.load_predictor; assert 'maskrcnn_pp.inference' in sys.modules")
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_checker_resolves_relative_imports_and_sees_a_violation(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from ..modeling.semantic_arch import build_semantic_net\n"
                     "from . import nuclei\nimport numpy\n")
    imported = _imports(probe, location=PACKAGE / "evaluation" / "probe.py")
    assert {"maskrcnn_pp.modeling.semantic_arch", "maskrcnn_pp.evaluation.nuclei",
            "numpy"} <= set(imported)
    assert _subpackage("maskrcnn_pp.modeling.semantic_arch") in FORBIDDEN["evaluation"]
