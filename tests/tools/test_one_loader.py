"""A trained model is loaded one way only: ``engine.checkpoint.load_trained_model``.

Read from the source with ``ast``: outside the checkpoint package, no module constructs a
checkpointer or calls a loading method on one (the trainer's own training checkpointer
aside), and the modules that load trained models are exactly the expected callers of
``load_trained_model``; a second recipe, or a new caller, makes this test fail until it is
looked at."""
from __future__ import annotations

import ast

from tests.helpers import ROOT

PACKAGE = ROOT / "maskrcnn_pp"
CHECKPOINT = PACKAGE / "engine" / "checkpoint"
# Training builds, resumes and initializes its model through Detectron2's DefaultTrainer.
TRAINING = {"engine/trainer.py"}
CHECKPOINTERS = {"SafeCheckpointer", "DetectionCheckpointer", "Checkpointer",
                 "build_checkpointer"}
CALLERS = {"engine/train.py", "inference/api.py", "inference/export.py", "studies/evaluation.py",
           "studies/demo.py", "studies/pruning.py", "cli/visualize.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if CHECKPOINT in path.parents:
            continue
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


def _names(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            found |= {alias.name for alias in node.names}
    return found


def _loading_calls(tree: ast.AST) -> list[str]:
    """Calls that load weights into a model: ``<checkpointer>.load(...)`` or
    ``.resume_or_load(...)`` on a checkpointer built or named in the expression, and
    ``load_state_dict`` of a file's contents (``torch.load``)."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr in ("load", "resume_or_load"):
            receiver = _names(node.func.value) | {getattr(node.func.value, "id", "")}
            if receiver & CHECKPOINTERS or any("checkpointer" in n for n in receiver):
                found.append(f"{node.func.attr} (line {node.lineno})")
    return found


def test_no_module_loads_weights_its_own_way():
    recipes = {name: calls for name, tree in _modules()
               if name not in TRAINING and (calls := _loading_calls(tree))}
    assert recipes == {}


def test_the_callers_of_the_one_loader_are_the_expected_ones():
    callers = {name for name, tree in _modules() if "load_trained_model" in _names(tree)}
    assert callers == CALLERS


def test_torch_load_of_a_checkpoint_happens_in_the_checkpoint_package_only():
    loads = set()
    for name, tree in _modules():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                loads.add(name)
    assert loads == set()
