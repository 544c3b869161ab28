"""Helpers shared by test modules (imported as ``from tests.helpers import ...``); pytest
fixtures live in conftest.py."""
from __future__ import annotations

import runpy
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIVER_HU, TUMOUR_HU, BODY_HU, AIR_HU = 60, 20, 40, -1000


def run_script_main(script, capsys, *args):
    """Run a CLI script's ``main(argv)`` in this process (fast); returns (exit code, captured
    stdout/stderr)."""
    main = runpy.run_path(str(script))["main"]
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr()


def flatten_config(node, prefix=""):
    """A config as ``{"A.B.C": value}``, so two configs can be compared key by key."""
    items = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            items.update(flatten_config(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def liver_phantom(shape=(64, 64, 8)) -> tuple[np.ndarray, np.ndarray]:
    """CT-like HU volume (x, y, z in RAS+) and its LiTS labels: a body ellipse, a liver on
    the patient's right (large x) and front (large y), a tumour inside, and no liver on
    the first and last slices."""
    x, y = np.mgrid[:shape[0], :shape[1]]
    body = ((x - 32) / 28) ** 2 + ((y - 32) / 22) ** 2 < 1
    liver = ((x - 44) / 12) ** 2 + ((y - 40) / 9) ** 2 < 1
    tumour = ((x - 46) / 3) ** 2 + ((y - 40) / 3) ** 2 < 1
    hu = np.full(shape, AIR_HU, np.int16)
    seg = np.zeros(shape, np.uint8)
    for z in range(shape[2]):
        hu[body, z] = BODY_HU
        if 0 < z < shape[2] - 1:
            hu[liver, z], seg[liver, z] = LIVER_HU, 1
            hu[tumour, z], seg[tumour, z] = TUMOUR_HU, 2
    return hu, seg


def write_lits(folder: Path, number: int, hu: np.ndarray, seg: np.ndarray,
               affine: np.ndarray | None = None, suffix: str = ".nii.gz") -> None:
    affine = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, affine), str(folder / f"volume-{number}{suffix}"))
    nib.save(nib.Nifti1Image(seg, affine), str(folder / f"segmentation-{number}{suffix}"))


def nodule_phantom(size: int = 32, radius: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Lung-like HU crop with a spherical nodule at its centre, and the nodule's label."""
    grid = np.indices((size,) * 3) - (size - 1) / 2
    sphere = (grid ** 2).sum(axis=0) <= radius ** 2
    hu = np.where(sphere, 50, -800).astype(np.int16)
    return hu, sphere.astype(np.uint8)


def write_nodule(folder: Path, name: str, hu: np.ndarray, label: np.ndarray) -> None:
    for kind, array in (("images", hu), ("labels", label)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(folder / kind / f"{name}.nii.gz"))


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
