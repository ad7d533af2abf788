"""The import rules of docs/ARCHITECTURE.md, checked on the source with `ast`.

Every import in every module of src/lumenlm counts: top level, inside functions, under
`TYPE_CHECKING`, `import lumenlm.x`, `from lumenlm.x import y`, `from lumenlm import x`,
relative imports, and `importlib.import_module("lumenlm.x")` with a literal name.

- Layers go one way: a module imports only its own part of the package (its folder, or
  itself for a top-level module) and parts of lower layers; never a higher layer.
- Parts in the same layer are independent, except the pairs in SIBLING_IMPORTS.
- No import cycles between modules, inside a part or across parts.
- Nothing imports the package facade (`lumenlm/__init__.py`, lazy public names) or
  `lumenlm/__main__.py`; they sit above the CLI as the public entry points and are
  not checked themselves.

The checks are pure functions of a source root, so the tests below also prove they
fail on a deliberately added upward import and on a deliberately added cycle.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lumenlm"
PACKAGE = "lumenlm"

# Top to bottom. A "part" is a folder (package) or top-level module of src/lumenlm.
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("entry", frozenset({"cli"})),
    ("pipelines", frozenset({"reproduce"})),
    ("features", frozenset({"train", "evaluate", "infer", "export", "inspect"})),
    ("model storage", frozenset({"modelio"})),
    ("core", frozenset({"model", "data"})),
    ("presets", frozenset({"presets"})),
    (
        "foundation",
        frozenset({"allocator", "blas", "config", "devices", "fsutil", "mkl_shim", "signals"}),
    ),
    ("kernels", frozenset({"ce_rows", "packed", "small_step"})),
    ("platform", frozenset({"cbuild", "cpuinfo"})),
    ("errors", frozenset({"errors"})),
]
# Same-layer imports that are allowed: (importer part, imported part).
# Multiple-choice scoring reuses the inference engine's left padding; the server's
# playground shows the inspect functions' attention maps, logit lens and token losses.
SIBLING_IMPORTS: frozenset[tuple[str, str]] = frozenset(
    {("evaluate", "infer"), ("infer", "inspect")}
)
# The public entry points above the CLI: may import anything, imported by nothing.
FACADE = frozenset({PACKAGE, f"{PACKAGE}.__main__"})

RANK = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}
LAYER_NAME = {part: name for name, parts in LAYERS for part in parts}

Graph = dict[str, set[str]]


# -- building the graph ----------------------------------------------------------------


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root` (the `lumenlm` folder)."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_import_module(call: ast.Call) -> bool:
    """`importlib.import_module("literal")` or `import_module("literal")`."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return (
        name == "import_module"
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The lumenlm modules that the parsed `module` imports, wherever the import is."""
    found: set[str] = set()

    def target(name: str) -> None:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module if is_package else module.rpartition(".")[0]
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import sub` imports the submodule when there is one
                sub = f"{source}.{alias.name}"
                target(sub if sub in known else source)
        elif isinstance(node, ast.Call) and _is_import_module(node):
            target(node.args[0].value)  # type: ignore[attr-defined]
    found.discard(module)
    return found


def build_graph(root: Path) -> Graph:
    """module -> the lumenlm modules it imports, for every module under `root`.

    `from lumenlm.x import y` points at lumenlm.x.y when that is a module, else at
    lumenlm.x (a package means its `__init__`); parent packages that Python also runs
    on the way are not edges (they would make every package a false cycle)."""
    files = module_names(root)
    known = set(files)
    graph: Graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = _imported(tree, name, path.name == "__init__.py", known)
    return graph


# -- the checks ------------------------------------------------------------------------


def part_of(module: str) -> str:
    """lumenlm.train.api -> train; lumenlm.config -> config; lumenlm -> lumenlm."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@dataclass(frozen=True, order=True)
class Violation:
    importer: str
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported}: {self.why}"


def layer_violations(graph: Graph) -> list[Violation]:
    """Every import edge that breaks the layer table, sorted."""
    out: set[Violation] = set()
    for a, targets in graph.items():
        if a in FACADE:
            continue
        pa = part_of(a)
        if pa not in RANK:
            out.add(Violation(a, "*", f"'{pa}' is not in the layer table"))
            continue
        for b in targets:
            pb = part_of(b)
            if b in FACADE:
                out.add(Violation(a, b, "imports the public facade; import the module instead"))
            elif pb == pa:
                continue
            elif pb not in RANK:
                out.add(Violation(a, b, f"'{pb}' is not in the layer table"))
            elif RANK[pb] < RANK[pa]:
                why = f"{pa} (layer '{LAYER_NAME[pa]}') imports the higher layer '{LAYER_NAME[pb]}'"
                out.add(Violation(a, b, why))
            elif RANK[pb] == RANK[pa] and (pa, pb) not in SIBLING_IMPORTS:
                why = f"{pa} and {pb} share the layer '{LAYER_NAME[pa]}' and are independent"
                out.add(Violation(a, b, why))
    return sorted(out)


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle path [a, b, ..., a] per group of modules that import each other, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(_shortest_cycle(graph, min(g), g) for g in groups)


def _shortest_cycle(graph: Graph, start: str, group: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside `group` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & group):
                if w == start:  # back at the start: walk the path back from v
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is on no cycle in {sorted(group)}")


def format_cycle(cycle: list[str]) -> str:
    return " -> ".join(cycle)


# -- the tree as it is -------------------------------------------------------------------


def test_imports_follow_the_layers() -> None:
    problems = layer_violations(build_graph(SRC))
    assert not problems, "imports against docs/ARCHITECTURE.md:\n  " + "\n  ".join(
        map(str, problems)
    )


def test_no_import_cycles() -> None:
    cycles = find_cycles(build_graph(SRC))
    assert not cycles, "import cycles:\n  " + "\n  ".join(map(format_cycle, cycles))


def test_the_layer_table_names_each_part_once() -> None:
    seen = [part for _, parts in LAYERS for part in parts]
    assert len(seen) == len(set(seen))
    assert all(len(pair) == 2 and RANK[pair[0]] == RANK[pair[1]] for pair in SIBLING_IMPORTS)


# -- the checks catch what they should -----------------------------------------------------


def _copy_tree(tmp_path: Path) -> Path:
    return Path(
        shutil.copytree(SRC, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    )


def _append(root: Path, module: str, code: str) -> None:
    """Add `code` at the end of `module`'s file (a module or a package `__init__`)."""
    path = module_names(root)[module]
    path.write_text(path.read_text(encoding="utf-8") + "\n" + code + "\n", encoding="utf-8")


def _up(root: Path, module: str) -> str:
    """The dots of a relative import from `module` to the top of the package."""
    is_package = module_names(root)[module].name == "__init__.py"
    return "." * (module.count(".") + is_package)


@pytest.mark.parametrize(
    "code",
    [
        "from lumenlm.cli import main",
        "import lumenlm.cli",
        "import lumenlm.cli as cli_",
        "from lumenlm import cli",
        "from {up}cli import main",
        "from {up} import cli",
        "def _late():\n    from lumenlm.cli import main",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lumenlm.cli import main",
        "import importlib\n_cli = importlib.import_module('lumenlm.cli')",
    ],
)
def test_an_added_upward_import_is_reported(tmp_path: Path, code: str) -> None:
    root = _copy_tree(tmp_path)
    before = {(v.importer, v.imported) for v in layer_violations(build_graph(root))}
    _append(root, "lumenlm.config", code.format(up=_up(root, "lumenlm.config")))
    after = layer_violations(build_graph(root))
    added = [v for v in after if (v.importer, v.imported) not in before]
    assert [(v.importer, v.imported) for v in added] == [("lumenlm.config", "lumenlm.cli")]
    assert "higher layer 'entry'" in str(added[0])


def test_an_added_sibling_import_is_reported(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    before = set(layer_violations(build_graph(root)))
    _append(root, "lumenlm.infer", "from lumenlm.evaluate import evaluate_lm")
    added = set(layer_violations(build_graph(root))) - before
    assert [(v.importer, v.imported) for v in added] == [("lumenlm.infer", "lumenlm.evaluate")]
    assert "independent" in str(next(iter(added)))


def test_importing_the_facade_or_an_unmapped_part_is_reported(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    before = set(layer_violations(build_graph(root)))
    _append(root, "lumenlm.model", "from lumenlm import GPT as _GPT")
    (root / "newpart.py").write_text("from lumenlm.errors import LumenError\n")
    added = {(v.importer, v.imported) for v in set(layer_violations(build_graph(root))) - before}
    assert added == {("lumenlm.model", "lumenlm"), ("lumenlm.newpart", "*")}


def test_an_added_cycle_is_reported_with_its_path(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    graph = build_graph(root)
    before = find_cycles(graph)
    # the model imports its config; make (a module of) config import the model back
    config = min(m for m in graph["lumenlm.model.gpt"] if part_of(m) == "config")
    _append(root, config, "def _late():\n    import lumenlm.model.gpt")
    added = [c for c in find_cycles(build_graph(root)) if c not in before]
    assert added == [[config, "lumenlm.model.gpt", config]]


def test_a_longer_cycle_inside_one_package_is_reported(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    before = find_cycles(build_graph(root))
    (root / "infer" / "_a.py").write_text("from lumenlm.infer import _b\n")
    (root / "infer" / "_b.py").write_text("from ._c import x\n")
    (root / "infer" / "_c.py").write_text("import lumenlm.infer._a\nx = 1\n")
    graph = build_graph(root)
    added = [format_cycle(c) for c in find_cycles(graph) if c not in before]
    assert added == ["lumenlm.infer._a -> lumenlm.infer._b -> lumenlm.infer._c -> lumenlm.infer._a"]
    assert not set(layer_violations(graph)) - set(layer_violations(build_graph(SRC)))
