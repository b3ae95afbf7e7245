"""The package's layers: lower ones never import upper ones, at module level or inside functions.

    0  errors, _version, _io, _compat        utilities
    1  data                                  records, formats, generated datasets
    2  the method (the flat modules)         backbone ... train, gguf, tiny
    3  index, karr, evaluation               built on the method, never imported by it: the search index
                                             (embeds with a retriever), KARR's rewriting (its LM rewriter
                                             runs a local LM through slq.gguf), metrics and comparisons
    4  serve                                 the search service, over an index
    5  recipes                               demo, evidence, pretraining, the benches
    6  cli                                   the command

The flat modules of the method may import each other; index, karr and evaluation never do.
Read from the source (every import statement, wherever it stands), so a lazy import inside a
function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "slq"
UTILITIES = {"errors", "_version", "_io", "_compat", "__init__"}
LAYERS = {"data": 1, "index": 3, "karr": 3, "evaluation": 3, "serve": 4, "recipes": 5, "cli": 6,
          "__main__": 6}  # `python -m slq` is the CLI


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


SIDE_BY_SIDE = ("index", "karr", "evaluation")  # layer 3: independent uses of the method


def package_of(module: str) -> str:
    """The first name under slq ("slq.index.build" -> "index")."""
    return (module.split(".") + [""])[1]


@pytest.mark.parametrize("path", [p for p in SOURCES if package_of(module_name(p)) in SIDE_BY_SIDE],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_uses_of_the_method_import_none_of_each_other(path):
    own = package_of(module_name(path))
    others = sorted(n for n in imported(path) if package_of(n) in SIDE_BY_SIDE and package_of(n) != own)
    assert not others, f"{module_name(path)} imports {others}"


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """A function-level, relative import of an upper layer is caught: the check is not empty."""
    fake = tmp_path / "fake.py"
    fake.write_text("import json\n\n\ndef f():\n    from ..cli import options\n    from .. import recipes\n")
    names = imported(fake, package="slq.data")
    assert {"slq.cli", "slq.cli.options", "slq.recipes"} <= names
    assert max(layer(n) for n in names) == layer("slq.cli") > layer("slq.data.fake")


def test_loading_a_backbone_imports_no_tiny_builder_and_no_upper_layer():
    import subprocess
    import sys

    code = ("import sys, slq.backbone, slq.retriever; "
            "print(sorted(m for m in sys.modules if m.startswith('slq.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "slq.tiny" not in loaded and "slq.evaluation" not in loaded and "slq.cli" not in loaded, loaded


LIBRARY = [p for p in SOURCES if layer(module_name(p)) < layer("slq.cli")]  # everything but the command


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_code_logs_and_never_prints_nor_imports_the_version_back(path):
    tree = ast.parse(path.read_text())
    prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
    assert not prints, f"{module_name(path)} prints at lines {prints}; log through logging.getLogger('slq')"
    version_from_package = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                            and any(a.name == "__version__" for a in n.names) and (n.module or "") != "_version"]
    assert not version_from_package, f"{module_name(path)} imports __version__ from the package: use slq._version"
