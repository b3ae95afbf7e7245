"""Module paths of slq 0.1's flat layout, kept importable for one release.

`import slq.compare` (and the others in `MOVED`) gives the module at its new home, with a
DeprecationWarning naming it. Where 0.1's module was split (`slq.compare`'s report and plots went
to `slq.evaluation.report`), the old path is a module holding the names of every new home.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "slq.compare": ("slq.evaluation.compare", "slq.evaluation.report"),
    "slq.evaluate": "slq.evaluation.retrieval",
    "slq.metrics": "slq.evaluation.metrics",
    "slq.shapes": "slq.data.shapes",
    "slq.wordnet": "slq.data.wordnet",
    "slq.demo": "slq.recipes.demo",
    "slq.evidence": "slq.recipes.evidence",
    "slq.pretrain": "slq.recipes.pretrain",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        homes = MOVED[spec.name] if isinstance(MOVED[spec.name], tuple) else (MOVED[spec.name],)
        warnings.warn(f"{spec.name} moved to {' and '.join(homes)}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=3)
        modules = [importlib.import_module(home) for home in homes]
        if len(modules) == 1:
            module = modules[0]
        else:
            module = types.ModuleType(spec.name, modules[0].__doc__)
            for part in modules:
                module.__dict__.update({k: v for k, v in vars(part).items() if not k.startswith("__")})
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        """Already executed at its new home."""


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())


def moved_name(module: str, name: str, home: str):
    """A name that left `module` for `home` in this release: returned with a DeprecationWarning (for a
    module-level `__getattr__`)."""
    warnings.warn(f"{module}.{name} moved to {home}; the old path goes in the next release", DeprecationWarning,
                  stacklevel=3)
    return getattr(importlib.import_module(home), name)
