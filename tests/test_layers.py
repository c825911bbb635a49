"""The layers of docs/architecture.md, checked from the source: imports run one way, and never in a cycle.

base      posttrain.core                  imports nothing of ours above it
domain    rewards, data_pipelines         import the base (data_pipelines may use rewards, never the reverse)
pipeline  the rest of posttrain           imports everything below, its own folders in the order of a run:
          recipe < stages.base (the stage contract) < training, eval_presets < report < stages (the kinds)
          < run, launch < cli

Every import counts, also those inside functions (a lazy import is still an arrow); imports under
`if TYPE_CHECKING:` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("posttrain", "rewards", "data_pipelines")
#: What each layer may import, by module-name prefix (its own modules always).
ALLOWED = {
    "posttrain.core": ("posttrain.core",),
    "rewards": ("rewards", "posttrain.core"),
    "data_pipelines": ("data_pipelines", "rewards", "posttrain.core"),
}


#: The pipeline's folders, lowest first: a module may import from its own rank and below. `run` and `launch` share a
#: rank (the runner launches workers; a worker takes the run's lock and base model).
PIPELINE = (
    ("posttrain.recipe",),
    ("posttrain.stages.base",),
    ("posttrain.training", "posttrain.eval_presets"),
    ("posttrain.report",),
    ("posttrain.stages",),
    ("posttrain.run", "posttrain.launch"),
    ("posttrain.cli",),
)
#: The only modules allowed at posttrain's top level: everything else lives in the folder of its part of the run.
TOP_LEVEL = {"posttrain"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, source: str, is_package: bool = False) -> set[str]:
    """Our modules that `module` imports (the deepest module each import names)."""
    tree = ast.parse(source)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)
            return
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)

    visit(tree)
    return found


GRAPH = {module: _imports(module, path.read_text(), path.name == "__init__.py") for module, path in MODULES.items()}


def _layer(module: str) -> str | None:
    for prefix in ALLOWED:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m)))
def test_a_lower_layer_imports_nothing_above_it(module: str) -> None:
    allowed = ALLOWED[_layer(module)]  # type: ignore[index]
    above = sorted(m for m in GRAPH[module] if not any(m == a or m.startswith(a + ".") for a in allowed))
    assert not above, f"{module} ({MODULES[module].relative_to(ROOT)}) imports {above} from a layer above it"


def _rank(module: str) -> int | None:
    """The module's rank in PIPELINE (the most specific prefix wins: `posttrain.stages.base` before `stages`)."""
    best: tuple[int, int] | None = None
    for rank, prefixes in enumerate(PIPELINE):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    return None if best is None else best[0]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _rank(m) is not None))
def test_the_pipeline_imports_in_the_order_of_a_run(module: str) -> None:
    rank = _rank(module)
    assert rank is not None
    above = sorted(m for m in GRAPH[module] if (r := _rank(m)) is not None and r > rank)
    assert not above, f"{module} ({MODULES[module].relative_to(ROOT)}) imports {above}, which sit later in the run"


def test_every_pipeline_module_has_a_place() -> None:
    homeless = sorted(m for m in MODULES if m.startswith("posttrain") and not _layer(m) and _rank(m) is None
                      and m not in TOP_LEVEL)
    assert not homeless, f"modules outside the folders of the run: {homeless} (put each in the folder of its job)"


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            connect(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_checker_sees_lazy_relative_and_type_only_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .answer import THINK_OPEN\n"
        "if TYPE_CHECKING:\n    from posttrain.run.runner import run_recipe\n"
        "def f():\n    from posttrain.stages import KINDS\n    import posttrain.recipe\n"
    )
    assert _imports("rewards.format", source) == {"rewards.answer", "posttrain.stages", "posttrain.recipe"}


def test_the_checker_sees_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GRAPH, "posttrain.core.errors", GRAPH["posttrain.core.errors"] | {"posttrain.core.plugins"})
    monkeypatch.setitem(GRAPH, "posttrain.core.plugins", GRAPH["posttrain.core.plugins"] | {"posttrain.core.errors"})
    assert ["posttrain.core.errors", "posttrain.core.plugins"] in _cycles()


def test_the_order_check_sees_an_arrow_back_and_a_loose_module(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = "posttrain.training.trainer"
    monkeypatch.setitem(GRAPH, trainer, GRAPH[trainer] | {"posttrain.run.runner"})
    with pytest.raises(AssertionError, match="sit later in the run"):
        test_the_pipeline_imports_in_the_order_of_a_run(trainer)
    monkeypatch.setitem(MODULES, "posttrain.helpers", ROOT / "posttrain" / "helpers.py")
    with pytest.raises(AssertionError, match=r"posttrain\.helpers"):
        test_every_pipeline_module_has_a_place()


def test_no_module_is_over_600_lines() -> None:
    """One concept per module: a module past 600 lines holds more than one (split it where the concepts part)."""
    long = {m: n for m, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines: {long}"
