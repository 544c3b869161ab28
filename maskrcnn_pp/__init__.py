"""maskrcnn_pp: UNet++ (nested dense skips, deep supervision) for Detectron2.

``import maskrcnn_pp`` registers the backbone, the mask head, the meta-architectures and
the data sets with Detectron2's registries. It does so when Detectron2's registries
(``detectron2.modeling``, ``detectron2.data``) are imported, at once if they are already,
so that importing the package, and every tool's ``--help``, loads neither torch nor
Detectron2 (seconds); the names below load their modules on first use.
"""
import importlib
import importlib.abc
import sys
import warnings

# Detectron2 v0.6 scripts a few helpers with torch.jit.script at import time, which
# current torch flags as deprecated on every run; the message is noise for our users.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)

from .model_zoo import get_config_file  # noqa: E402

__version__ = "0.1.0"

# The entry points a user needs, by the module that defines them, loaded on first use.
_ENTRY_POINTS = {
    "add_maskrcnn_pp_config": "config", "UNetPlusPlus": "modeling", "UNet": "modeling",
    "load_config": "engine.config", "setup": "engine.config",
    "Trainer": "engine.trainer", "launch_from_args": "engine.train",
    "load_predictor": "inference.api", "export_model": "inference.export",
    "register_nuclei_coco": "data.coco",
}

__all__ = ["get_config_file", *_ENTRY_POINTS, "__version__"]

# Importing these registers with Detectron2 (modeling: backbone, mask head, meta-
# architectures; data.builtin: the data sets; evaluation: their metadata and evaluators).
_REGISTERING_MODULES = ("data.builtin", "evaluation", "modeling")
# Detectron2's modules that hold the registries: whoever looks something up imports them.
_DETECTRON2_REGISTRIES = ("detectron2.modeling", "detectron2.data")


def _register() -> None:
    """Import the registering modules (once: the hook is removed first)."""
    if _REGISTRATION_HOOK in sys.meta_path:
        sys.meta_path.remove(_REGISTRATION_HOOK)
    for name in _REGISTERING_MODULES:
        importlib.import_module(f".{name}", __name__)


# The packages whose modules the hook follows: registering while one of them is half-imported
# would import modules that need it whole.
_FOLLOWED_PACKAGES = (__name__, "detectron2")


def _followed(name: str) -> bool:
    return any(name == package or name.startswith(f"{package}.")
               for package in _FOLLOWED_PACKAGES)


def _half_imported(done: str) -> bool:
    """Whether a module of a followed package, other than ``done`` (whose code has just run),
    is still executing its import."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items())
               if name != done and _followed(name))


class _ThenRegister:
    """A module's own loader, followed by registration once a Detectron2 registry module
    has been imported and no module of Detectron2 or this package is half-imported."""

    def __init__(self, loader, hook: "_RegistrationHook"):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.hook.pending |= module.__name__ in _DETECTRON2_REGISTRIES
        if self.hook.pending and not _half_imported(module.__name__):
            _register()

    def __getattr__(self, name: str):  # get_code, get_source, get_resource_reader, ...
        return getattr(self.loader, name)


class _RegistrationHook(importlib.abc.MetaPathFinder):
    """Finds the modules of Detectron2 and of this package as the other finders do, with
    loaders that register this package once a registry module is whole."""

    pending = False

    def find_spec(self, fullname, path, target=None):
        if not _followed(fullname):
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenRegister(spec.loader, self)
                return spec
        return None


_REGISTRATION_HOOK = _RegistrationHook()


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(f".{_ENTRY_POINTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_ENTRY_POINTS))


if any(name in sys.modules for name in _DETECTRON2_REGISTRIES):
    _register()
else:
    sys.meta_path.insert(0, _REGISTRATION_HOOK)
