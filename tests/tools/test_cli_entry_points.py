"""Each tool is a module of maskrcnn_pp.cli, run by tools/*.py and by its console command."""
from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import EntryPoint, distributions
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _console_scripts() -> dict[str, EntryPoint]:
    """The installed package's commands (from every metadata copy of it: a source tree can
    hold an older ``maskrcnn_pp.egg-info`` beside the installed one)."""
    return {ep.name: ep for dist in distributions() if dist.metadata["Name"] == "maskrcnn_pp"
            for ep in dist.entry_points if ep.group == "console_scripts"}


def _wrapped_module(script: Path) -> str:
    """The maskrcnn_pp.cli module a tools/ script imports its ``main`` from."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maskrcnn_pp.cli"):
            return node.module
    raise AssertionError(f"{script.name} does not run a maskrcnn_pp.cli module")


def test_every_tool_script_has_a_console_command_for_the_same_main():
    scripts = _console_scripts()
    wrapped = {_wrapped_module(p) for p in (ROOT / "tools").glob("*.py")
               if p.name != "install_detectron2.py"}  # runs before detectron2 exists
    assert {ep.module for ep in scripts.values()} == wrapped
    for name, ep in scripts.items():
        assert name.startswith("maskrcnn-pp-") and ep.attr == "main"
        assert callable(ep.load())


@pytest.mark.slow
def test_a_console_command_reports_a_user_mistake_in_one_line(tmp_path):
    command = Path(sys.executable).parent / "maskrcnn-pp-eval-nuclei"
    if not command.exists():
        pytest.skip(f"{command} is not installed (pip install -e . makes it)")
    done = subprocess.run([str(command), "--gt", str(tmp_path / "none.json"), "--pred",
                           str(tmp_path / "none.json")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "none.json" in done.stderr and "Traceback" not in done.stderr
