"""Module paths of slq 0.1's flat layout, kept importable for one release.

`import slq.compare` (and the others in `MOVED`) gives the module at its new home, with a
DeprecationWarning naming it; the module object is the same, so its names are the same too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "slq.compare": "slq.evaluation.compare",
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
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=3)
        module = importlib.import_module(MOVED[spec.name])
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        """Already executed at its new home."""


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
