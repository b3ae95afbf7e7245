"""The package's layers: lower ones never import upper ones, at module level or inside functions.

    0  errors, _version, _io, _compat        utilities
    1  data                                  records, formats, generated datasets
    2  the method (the flat modules)         backbone ... train, gguf, tiny
    3  evaluation                            metrics, evaluators, comparisons
    4  recipes                               demo, evidence, pretraining
    5  cli                                   the command

Read from the source (every import statement, wherever it stands), so a lazy import inside a
function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "slq"
UTILITIES = {"errors", "_version", "_io", "_compat", "__init__"}
LAYERS = {"data": 1, "evaluation": 3, "recipes": 4, "cli": 5, "__main__": 5}  # `python -m slq` is the CLI


def layer(module: str) -> int:
    """The layer of a dotted module name under slq ("slq.data.shapes" -> 1)."""
    parts = module.split(".")[1:]
    if not parts:
        return 0
    if parts[0] in LAYERS:
        return LAYERS[parts[0]]
    return 0 if parts[0] in UTILITIES else 2


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, package: str | None = None) -> set[str]:
    """slq modules `path` imports, absolute names (relative imports resolved against `package`, by
    default the path's own)."""
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "slq"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "slq":
                names.add(target)
                names |= {f"{target}.{a.name}" for a in node.names if (PACKAGE.parent / f"{target}.{a.name}".replace(
                    ".", "/")).with_suffix(".py").is_file() or (PACKAGE.parent / f"{target}.{a.name}".replace(
                        ".", "/")).is_dir()}
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = layer(module_name(path))
    if module_name(path) == "slq":  # the package's front door re-exports the method's public names
        own = 2
    above = sorted(name for name in imported(path) if layer(name) > own)
    assert not above, f"{module_name(path)} (layer {own}) imports {above}"


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """A function-level, relative import of an upper layer is caught: the check is not empty."""
    fake = tmp_path / "fake.py"
    fake.write_text("import json\n\n\ndef f():\n    from ..cli import options\n    from .. import recipes\n")
    names = imported(fake, package="slq.data")
    assert {"slq.cli", "slq.cli.options", "slq.recipes"} <= names
    assert max(layer(n) for n in names) == 5 > layer("slq.data.fake")


def test_loading_a_backbone_imports_no_tiny_builder_and_no_upper_layer():
    import subprocess
    import sys

    code = ("import sys, slq.backbone, slq.retriever; "
            "print(sorted(m for m in sys.modules if m.startswith('slq.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "slq.tiny" not in loaded and "slq.evaluation" not in loaded and "slq.cli" not in loaded, loaded


LIBRARY = [p for p in SOURCES if layer(module_name(p)) < 5]  # everything but the command


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_code_logs_and_never_prints_nor_imports_the_version_back(path):
    tree = ast.parse(path.read_text())
    prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
    assert not prints, f"{module_name(path)} prints at lines {prints}; log through logging.getLogger('slq')"
    version_from_package = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                            and any(a.name == "__version__" for a in n.names) and (n.module or "") != "_version"]
    assert not version_from_package, f"{module_name(path)} imports __version__ from the package: use slq._version"
