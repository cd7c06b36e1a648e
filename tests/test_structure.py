"""The package's layout: no import cycles among xaikit's modules (function-level imports included), and the
training code split into parts a reader can find (recipes, loop, checkpoints, cards) of readable size."""

import ast
import graphlib
from pathlib import Path

import pytest

XAIKIT = Path(__file__).resolve().parents[1] / "xaikit"
TRAINING = XAIKIT / "train"
#: The longest function (``def`` to its last line, docstring included) the training modules may hold.
MAX_FUNCTION_LINES = 80
#: part of the training code -> names a reader looks for there (each defined in that module, not imported)
TRAINING_PARTS = {
    "recipes": {"TrainConfig", "RECIPES", "check_recipe", "recipe_identity", "finetune_recipe", "describe_recipe"},
    "loop": {"train"},
    "checkpoints": {"RunState", "training_dir"},
    "cards": {"card_entries", "write_weights_and_card", "load_trained", "default_out_dir", "trained_dir"},
}


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package in folder `package`."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph(package: Path) -> dict[str, dict[str, int]]:
    """Module -> {module of the same package it imports: line of the first such import}.

    Every ``import`` and ``from ... import`` counts, at module level or inside a function.
    ``from pkg import name`` imports the module ``pkg.name`` when there is one, else ``pkg``.
    """
    modules = module_names(package)

    def known(name: str) -> str | None:  # the module itself, or the nearest package holding it
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(part for part in (base, node.module) if part)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for target in targets:
                imported = known(target) if target.split(".")[0] == package.name else None
                if imported is not None and imported != name:
                    edges.setdefault(imported, node.lineno)
    return graph


def import_cycle(graph: dict[str, dict[str, int]]) -> list[str]:
    """One import cycle of `graph`, as its imports (``b imports a (line n)``), or [] when there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        cycle = err.args[1]  # [a, b, ..., a]: each module is imported by the next
        return [f"{b} imports {a} (line {graph[b][a]})" for a, b in zip(cycle, cycle[1:])]
    return []


def test_the_import_graph_sees_function_level_imports(tmp_path):
    """The graph used below finds a circle that only a function-level import closes."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (package / "b.py").write_text("from .a import f\nimport pkg.c\n")
    (package / "c.py").write_text("import os\n")
    graph = import_graph(package)
    assert graph == {"pkg": {}, "pkg.a": {"pkg.b": 2}, "pkg.b": {"pkg.a": 1, "pkg.c": 2}, "pkg.c": {}}
    assert import_cycle(graph)


def test_models_and_demo_models_do_not_import_each_other():
    graph = import_graph(XAIKIT)
    assert not ("xaikit.demo_models" in graph["xaikit.models"] and "xaikit.models" in graph["xaikit.demo_models"]), (
        f"xaikit.models imports xaikit.demo_models (line {graph['xaikit.models'].get('xaikit.demo_models')}) and "
        f"xaikit.demo_models imports xaikit.models (line {graph['xaikit.demo_models'].get('xaikit.models')})"
    )


def test_xaikit_has_no_import_cycles():
    cycle = import_cycle(import_graph(XAIKIT))
    assert not cycle, "xaikit's modules import each other in a circle: " + "; ".join(cycle)


def training_sources() -> list[Path]:
    sources = sorted(XAIKIT.glob("train.py")) + sorted(TRAINING.glob("*.py"))
    assert sources, f"no training code found at {XAIKIT / 'train.py'} or in {TRAINING}"
    return sources


@pytest.mark.parametrize("part", sorted(TRAINING_PARTS))
def test_training_is_split_into_parts_a_reader_can_find(part):
    path = TRAINING / f"{part}.py"
    assert path.is_file(), f"the training code's {part} should be in {path}"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(target, ast.Name)}
    assert TRAINING_PARTS[part] <= defined, f"{path} lacks {sorted(TRAINING_PARTS[part] - defined)}"


def test_no_training_function_is_longer_than_a_screen():
    too_long = {
        f"{path.relative_to(XAIKIT.parent)}:{node.lineno} {node.name}": node.end_lineno - node.lineno + 1
        for path in training_sources()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {too_long}"
