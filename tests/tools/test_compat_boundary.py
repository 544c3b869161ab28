"""Detectron2's private API is touched only in ``maskrcnn_pp/compat.py``, so a Detectron2
upgrade has one file to check. Read from the source with ``ast``; the private names of a
Detectron2 class are found on the installed classes (their attributes and the
``self._name`` attributes their methods set)."""
from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from functools import cache

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "maskrcnn_pp"
COMPAT = PACKAGE / "compat.py"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@cache
def _private_names_of(cls: type) -> frozenset[str]:
    """Private attributes of ``cls`` and its bases: class attributes and those its methods
    assign on ``self``."""
    names = {name for name in dir(cls) if _is_private(name)}
    for base in cls.__mro__:
        if base is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(base)))
        except (OSError, TypeError):
            continue
        names |= {node.attr for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "self" and _is_private(node.attr)}
    return frozenset(names)


def _detectron2_imports(tree: ast.Module) -> tuple[dict[str, object], list[str]]:
    """Names bound to Detectron2 objects in a module, and the private names it imports."""
    bound: dict[str, object] = {}
    private_imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "detectron2":
                    private_imports += [part for part in alias.name.split(".") if
                                        _is_private(part)]
                    top = alias.asname or alias.name.split(".")[0]
                    bound[top] = importlib.import_module(alias.asname and alias.name
                                                         or "detectron2")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == \
                "detectron2" and node.level == 0:
            private_imports += [part for part in node.module.split(".") if _is_private(part)]
            module = importlib.import_module(node.module)
            for alias in node.names:
                if _is_private(alias.name):
                    private_imports.append(alias.name)
                bound[alias.asname or alias.name] = (
                    getattr(module, alias.name) if hasattr(module, alias.name)
                    else importlib.import_module(f"{node.module}.{alias.name}"))
    return bound, private_imports


def private_detectron2_uses(source: str, where: str) -> list[str]:
    """``file:line name`` for each use of a Detectron2 private name in a module: a private
    import, a private attribute of an imported Detectron2 object, or (in a module that
    imports Detectron2 classes) a method, ``self.``/``super().`` attribute with the name of
    one of those classes' private members."""
    tree = ast.parse(source, where)
    bound, private_imports = _detectron2_imports(tree)
    found = [f"{where}: import of {name}" for name in private_imports]
    members: set[str] = set()
    for value in bound.values():
        if inspect.isclass(value):
            members |= _private_names_of(value)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in bound:
                found.append(f"{where}:{node.lineno} {owner.id}.{node.attr}")
            elif node.attr in members and (
                    (isinstance(owner, ast.Name) and owner.id == "self")
                    or (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name)
                        and owner.func.id == "super")):
                found.append(f"{where}:{node.lineno} {node.attr}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                node.name in members:
            found.append(f"{where}:{node.lineno} def {node.name}")
    return found


def test_detectron2_private_api_only_in_compat():
    sources = sorted(p for p in PACKAGE.rglob("*.py") if p != COMPAT)
    uses = [use for path in sources for use in
            private_detectron2_uses(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert not uses, "Detectron2 private API outside compat.py:\n" + "\n".join(uses)


@pytest.mark.parametrize("source, expected", [
    ("from detectron2.utils import comm\ncomm._LOCAL_PROCESS_GROUP = None\n",
     ["comm._LOCAL_PROCESS_GROUP"]),
    ("from detectron2.engine import SimpleTrainer\n"
     "class T(SimpleTrainer):\n"
     "    def _write_metrics(self, *a):\n"
     "        super()._write_metrics(*a)\n",
     ["def _write_metrics", "_write_metrics"]),
    ("from detectron2.engine import DefaultTrainer\n"
     "class T(DefaultTrainer):\n"
     "    def run(self):\n"
     "        return self._trainer\n",
     ["_trainer"]),
    ("from detectron2.utils.comm import _LOCAL_PROCESS_GROUP\n", ["import of _LOCAL"]),
    ("from detectron2.engine import SimpleTrainer\n"
     "class T(SimpleTrainer):\n"
     "    def _own_helper(self):\n"
     "        return self._own_state\n", []),
])
def test_the_scan_finds_private_uses(source, expected):
    uses = private_detectron2_uses(source, "probe.py")
    assert len(uses) == len(expected)
    for use, text in zip(uses, expected):
        assert text in use
