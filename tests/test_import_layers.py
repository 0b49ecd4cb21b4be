"""The import layering of runtimes, quantization and export (issue 16), read from the source with ``ast``.

Every import counts, at module level or inside a function (a lazy import is still a dependency); only imports under
``if TYPE_CHECKING:`` are left out. The rules:

* the neutral modules (the runtime contract, the quantization settings, the ONNX format, the embedding table) import
  only each other (and ``errors``/``machine``);
* a backend or runtime-library module never imports a stage module (``engine``, ``compress.stages``,
  ``export.stage``, ``models.stage``, ``score.*``);
* a stage module never imports a backend or runtime-library module: it finds a backend in the registry;
* among the modules of these layers, no import circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dsvl_adapt"
ROOT = "dsvl_adapt"

NEUTRAL = {"dsvl_adapt.runtimes.contract", "dsvl_adapt.quantization", "dsvl_adapt.export.onnx_format",
           "dsvl_adapt.runtimes.embedding"}
NEUTRAL_MAY_IMPORT = NEUTRAL | {"dsvl_adapt.errors", "dsvl_adapt.machine"}
RUNTIME_LIBRARIES = {"dsvl_adapt.runtimes", "dsvl_adapt.runtimes.onnxruntime", "dsvl_adapt.runtimes.openvino"}
STAGES = {"dsvl_adapt.engine", "dsvl_adapt.compress.stages", "dsvl_adapt.export.stage", "dsvl_adapt.models.stage"}
#: the modules whose imports must not form a circle
LAYERED = NEUTRAL | RUNTIME_LIBRARIES | {"dsvl_adapt.export.onnx", "dsvl_adapt.compress.quantize",
                                        "dsvl_adapt.compress.stages", "dsvl_adapt.export.stage"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_backend(module: str) -> bool:
    return module in RUNTIME_LIBRARIES or module.startswith("dsvl_adapt.runtimes.backends")


def is_stage(module: str) -> bool:
    return module in STAGES or module == "dsvl_adapt.score" or module.startswith("dsvl_adapt.score.")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> dict[str, int]:
    """``{imported dsvl_adapt module: line}`` of ``module`` (``from pkg import sub`` counts ``pkg.sub`` when it
    is a module), outside ``if TYPE_CHECKING:`` blocks."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        if name.startswith(ROOT) and name != module:
            found.setdefault(name, line)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            add(target, node.lineno)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    add(f"{target}.{alias.name}", node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name: line for name, line in found.items() if name in MODULES}


GRAPH = {module: imports_of(module) for module in MODULES}


def _where(module: str, imported: str) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{GRAPH[module][imported]} imports {imported}"


def test_the_layers_exist():
    """The rules below check real modules (a rename must update them, not silently pass)."""
    for module in NEUTRAL | RUNTIME_LIBRARIES | STAGES | {"dsvl_adapt.runtimes.backends.onnxruntime"}:
        assert module in MODULES, module


def test_neutral_modules_import_only_neutral_modules():
    bad = [_where(m, i) for m in sorted(NEUTRAL) for i in GRAPH[m] if i not in NEUTRAL_MAY_IMPORT]
    assert not bad, "a neutral module imports beyond the neutral layer:\n" + "\n".join(bad)


def test_no_backend_or_runtime_module_imports_a_stage_module():
    bad = [_where(m, i) for m in sorted(MODULES) if is_backend(m) for i in GRAPH[m] if is_stage(i)]
    assert not bad, "a runtime backend imports a stage module:\n" + "\n".join(bad)


def test_no_stage_module_imports_a_backend():
    bad = [_where(m, i) for m in sorted(MODULES) if is_stage(m) for i in GRAPH[m] if is_backend(i)]
    assert not bad, "a stage imports a backend module (find it in the registry instead):\n" + "\n".join(bad)


def test_quantization_algorithms_import_no_backend():
    bad = [_where("dsvl_adapt.compress.quantize", i) for i in GRAPH["dsvl_adapt.compress.quantize"] if is_backend(i)]
    assert not bad, "\n".join(bad)


def test_no_import_circle_among_the_layers():
    nodes = {m for m in MODULES if m in LAYERED or is_backend(m)}
    edges = {m: [i for i in GRAPH[m] if i in nodes] for m in nodes}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(nodes):
        if node not in state:
            dfs(node)
    described = [" -> ".join(f"{a} (line {GRAPH[a][b]})" for a, b in zip(c, c[1:])) + f" -> {c[-1]}"
                 for c in cycles]
    assert not cycles, "import circle(s):\n" + "\n".join(described)


@pytest.mark.parametrize("source, rule", [
    ("from ...engine import RunContext\n", "backend"),
    ("def f():\n    from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel\n", "stage"),
])
def test_the_parser_sees_lazy_and_relative_imports(tmp_path, source, rule):
    """The checker itself: a relative import and an import inside a function are both found."""
    path = PACKAGE / ("runtimes/backends/onnxruntime.py" if rule == "backend" else "export/stage.py")
    module = module_name(path)
    original = MODULES[module]
    fake = tmp_path / path.name
    fake.write_text(source)
    MODULES[module] = fake
    try:
        found = imports_of(module)
    finally:
        MODULES[module] = original
    expected = "dsvl_adapt.engine" if rule == "backend" else "dsvl_adapt.runtimes.onnxruntime"
    assert expected in found
