"""The layering of docs/architecture.md, read from the source (every import, lazy ones included):
a viewneti_core module imports only from its own layer or below, never Prefect, Dask, tasks/ or
flows/; every subpackage says in its __init__ what it holds."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "viewneti_core"
LAYERS = {  # module or package under viewneti_core -> layer (docs/architecture.md)
    "errors": 0, "atomic_files": 0, "images": 0, "safe_io": 0, "run_lock": 0,
    "data": 1,
    "config": 2,
    "base_model": 3,
    "method": 4,
    "training": 5,
    "inference": 6, "render_args": 6,
    "evaluation": 7,
    "mini_world": 8,
    "demo": 9, "preflight": 9,
}
FORBIDDEN = ("prefect", "prefect_dask", "distributed", "dask", "tasks", "flows", "viewneti_cli")


def _unit(dotted: str) -> str:
    """viewneti_core.data.dtu -> data; viewneti_core.config -> config."""
    return dotted.split(".")[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "viewneti_core":  # from viewneti_core import x
                found += [(node.lineno, f"viewneti_core.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


MODULES = sorted(p for p in CORE.rglob("*.py"))


def test_every_module_has_a_layer():
    units = {p.relative_to(CORE).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"}
    assert units <= set(LAYERS), f"place {sorted(units - set(LAYERS))} in a layer (here and docs/architecture.md)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_imports_run_down_the_layers(path):
    unit = path.relative_to(CORE).parts[0].removesuffix(".py")
    if unit == "__init__":
        return
    layer = LAYERS[unit]
    for line, name in _imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name}:{line} imports {name}: viewneti_core is the Prefect-free library"
        if top == "viewneti_core" and name != "viewneti_core":
            target = _unit(name)
            assert LAYERS[target] <= layer, (f"{path.relative_to(CORE)}:{line} imports {name} "
                                             f"(layer {LAYERS[target]}) from layer {layer}: imports run down only")


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check above can fail: a data module importing the trainer is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from viewneti_core.training.trainer import train\n")
    (line, name), = _imports(bad)
    assert LAYERS[_unit(name)] > LAYERS["data"]


def test_every_subpackage_says_what_it_holds():
    for init in CORE.rglob("__init__.py"):
        if init.parent == CORE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, f"{init.relative_to(CORE)} needs a one-line docstring"
