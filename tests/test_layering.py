"""The layering rule (../shared/PLATFORM.md), read from the imports of every module of vatt/:
vatt/ imports nothing of flows/ or tuning/ (only vatt/cli.py may, lazily inside its handlers),
and vatt/evaluate imports nothing of vatt/train."""

from __future__ import annotations

import ast
from pathlib import Path

VATT = Path(__file__).resolve().parent.parent / "vatt"
# flows/ and tuning/ install as vatt_flows and vatt_tuning (pyproject.toml); either name counts
OUTSIDE = ("vatt_flows", "vatt_tuning", "flows", "tuning")


def imports(source: str, module: str) -> list[tuple[list[str], bool]]:
    """(modules named, inside a function) for every import statement of `source`, the text of
    `module` (dotted name, for relative imports); `from a import b` names a and a.b."""
    found: list[tuple[list[str], bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(([alias.name], in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of `module`, `level` steps up
                package = module.split(".")[:-node.level]
                base = ".".join([*package, base] if base else package)
            found.append(([base, *(f"{base}.{alias.name}" for alias in node.names)],
                          in_function))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(source: str, module: str) -> list[str]:
    found = []
    for names, in_function in imports(source, module):
        outside = [name for name in names if any(within(name, top) for top in OUTSIDE)]
        if outside and not (module == "vatt.cli" and in_function):
            where = "inside a function" if in_function else "at module level"
            found.append(f"{module} imports {outside[0]} {where}: vatt/ knows nothing of flows/ "
                         "or tuning/ (only vatt/cli.py may import them, in its handlers)")
        training = [name for name in names if within(name, "vatt.train")]
        if within(module, "vatt.evaluate") and training:
            found.append(f"{module} imports {training[0]}: evaluation imports nothing of "
                         "training; move what both need out of vatt/train")
    return found


def test_the_library_keeps_its_layering():
    modules = sorted(VATT.rglob("*.py"))
    assert len(modules) > 50 and VATT / "cli.py" in modules
    found = []
    for path in modules:
        parts = path.relative_to(VATT.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found += violations(path.read_text(), module)
    assert not found, "\n".join(found)


def test_the_rule_reads_every_form_of_import():
    # what the check above must catch (and let through) for its silence to mean anything
    lazy = "def handler():\n    from vatt_flows.pipeline import run_pipeline\n"
    assert violations(lazy, "vatt.cli") == []
    assert violations("from vatt_flows.pipeline import run_pipeline\n", "vatt.cli")
    assert violations(lazy, "vatt.data.ingest")
    assert violations("import vatt_tuning.sweep\n", "vatt.storage")
    assert violations("if True:\n    from vatt.train.resume import TrainState\n",
                      "vatt.evaluate.runner")
    assert violations("def f():\n    from vatt import train\n", "vatt.evaluate.signal")
    assert violations("from ..train import loop\n", "vatt.evaluate.runner")
    assert violations("from vatt.train.resume import TrainState\n", "vatt.cluster.jobs") == []
    assert violations("import flowsheet\n", "vatt.storage") == []
    assert violations("from flows.tasks import ingest_source\n", "vatt.train.loop")
