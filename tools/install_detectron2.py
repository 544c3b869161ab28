#!/usr/bin/env python
"""Install Detectron2 into the running Python from PyPI, where GitHub cannot be reached.

Detectron2 is not published on PyPI. The sdist ``pb1-detectron2==0.6`` is upstream
detectron2 v0.6 renamed, but it cannot be installed as it is (README, "How Detectron2 is
installed"): it declares a C++ extension whose sources it lacks, packages
no model-zoo YAMLs, imports ``detectron2._C`` unconditionally, and uses names removed
from current Pillow, setuptools and numpy. This script downloads that sdist, checks its
sha256, applies the exact edits below (failing loudly if any no longer matches) and
installs it. An already importable detectron2 (e.g. an official build with ``_C``) is
kept untouched.

Usage: ``python tools/install_detectron2.py [--force] [--sdist FILE]``
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_URL = ("https://files.pythonhosted.org/packages/60/26/"
             "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/" + SDIST_NAME)
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

_GUARDED_C_IMPORT = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # built without the C++/CUDA extension (maskrcnn_pp patch)\n"
    "    _C = None\n"
)

_GUARDED_CAFFE2_API = (
    "try:\n"
    "    from caffe2.proto import caffe2_pb2 as _caffe2_pb2  # noqa: F401\n"
    "except ImportError:  # torch without caffe2: no Caffe2Tracer (maskrcnn_pp patch)\n"
    "    pass\n"
    "else:\n"
    "    from .api import *\n"
)


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` by ``new`` in ``path``; ``old`` is a regex when ``regex`` is set.

    ``count`` is how many matches the pristine v0.6 file has; any other number means the
    source is not what this patch was written for, and the install stops.
    """

    path: str
    old: str
    new: str
    count: int = 1
    regex: bool = False
    why: str = ""


_NUMPY_ALIAS = r"\bnp\.(bool|int|float|str)\b"

EDITS = (
    Edit("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],",
         why="the sdist lacks detectron2/layers/csrc: build no C++ extension"),
    Edit("setup.py",
         'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
         'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
         why="the model-zoo YAMLs sit under detectron2/model_zoo/configs in the sdist"),
    Edit("setup.py", '"black==21.4b2",', '"black",',
         why="a 2021 pre-release pin that no longer works with current click"),
    *(Edit(f"detectron2/{p}", "from detectron2 import _C\n", _GUARDED_C_IMPORT,
           why="import without the extension (as upstream does since v0.6)")
      for p in ("layers/deform_conv.py", "layers/roi_align_rotated.py",
                "layers/rotated_boxes.py", "evaluation/fast_eval_api.py")),
    Edit("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR",
         why="Pillow 10 removed Image.LINEAR (it was an alias of BILINEAR)"),
    Edit("detectron2/export/__init__.py", "from .api import *\n", _GUARDED_CAFFE2_API,
         why="torch 2 ships no caffe2: keep TracingAdapter and TorchScript export importable"),
    Edit("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "",
         why="setuptools 82 removed pkg_resources"),
    Edit("detectron2/model_zoo/model_zoo.py",
         'cfg_file = pkg_resources.resource_filename(\n'
         '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
         '    )',
         'cfg_file = os.path.join(os.path.dirname(__file__), "configs", config_path)'),
    *(Edit(f"detectron2/{p}", _NUMPY_ALIAS, r"\1", count=n, regex=True,
           why="numpy removed the np.bool/int/float/str aliases of the builtins")
      for p, n in (("structures/masks.py", 3), ("data/build.py", 2),
                   ("data/datasets/pascal_voc.py", 1), ("evaluation/sem_seg_evaluation.py", 7),
                   ("evaluation/pascal_voc_evaluation.py", 2), ("utils/visualizer.py", 3),
                   ("utils/video_visualizer.py", 1))),
)


class PatchMismatch(RuntimeError):
    """The source differs from pb1-detectron2 0.6, so the edits cannot be trusted."""


def apply_edits(src_root: Path, edits=EDITS) -> None:
    """Apply every edit to the unpacked sdist in ``src_root`` or raise before writing any."""
    patched: dict[Path, str] = {}
    for edit in edits:
        path = src_root / edit.path
        if path not in patched:
            if not path.is_file():
                raise PatchMismatch(f"{edit.path}: file not found in the detectron2 source")
            patched[path] = path.read_text(encoding="utf-8")
        text = patched[path]
        pattern = edit.old if edit.regex else re.escape(edit.old)
        found = len(re.findall(pattern, text))
        if found != edit.count:
            raise PatchMismatch(
                f"{edit.path}: expected {edit.count} match(es) of {edit.old!r}, found {found}; "
                "this is not the pb1-detectron2 0.6 source the patch was written for")
        replacement = edit.new if edit.regex else edit.new.replace("\\", "\\\\")
        patched[path] = re.sub(pattern, replacement, text)
    for path, text in patched.items():
        path.write_text(text, encoding="utf-8")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def download_sdist(dest: Path) -> Path:
    """Fetch the sdist file itself: ``pip download`` would try to build its metadata."""
    target = dest / SDIST_NAME
    print(f"Downloading {SDIST_URL}")
    with urllib.request.urlopen(SDIST_URL, timeout=120) as response, target.open("wb") as f:
        shutil.copyfileobj(response, f)
    return target


def unpack_verified(sdist: Path, dest: Path) -> Path:
    actual = sha256_of(sdist)
    if actual != SDIST_SHA256:
        raise PatchMismatch(f"{sdist}: sha256 {actual} differs from the expected {SDIST_SHA256}")
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    return dest / SDIST_NAME.removesuffix(".tar.gz")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true",
                        help="install the patched v0.6 even if detectron2 is importable")
    parser.add_argument("--sdist", type=Path,
                        help="use this local pb1-detectron2-0.6.tar.gz (offline or mirror)")
    args = parser.parse_args(argv)

    if not args.force and importlib.util.find_spec("detectron2") is not None:
        print("detectron2 is already importable here; keeping it "
              "(use --force to replace it with the patched PyPI v0.6).")
        return 0
    with tempfile.TemporaryDirectory(prefix="detectron2-") as tmp:
        tmp = Path(tmp)
        try:
            sdist = args.sdist or download_sdist(tmp)
            src = unpack_verified(sdist, tmp)
            apply_edits(src)
        except (PatchMismatch, OSError) as err:
            print(f"install_detectron2: {err}", file=sys.stderr)
            return 1
        _pip("install", "--quiet", "--no-build-isolation", str(src))
    print("Installed detectron2 0.6 from PyPI (pb1-detectron2) with the maskrcnn_pp patch.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
