"""The shape of the package: no import cycle, no upward import, modules of a readable size, docs that match.

The import graph is read from the source with `ast` (every `import` and `from ... import` of a
clexproxy module, those under `TYPE_CHECKING` and inside functions included; the Cython sources'
imports by their lines), so it shows what a reader sees, not what happens to load first.

`LAYERS` is the architecture in one table, low to high: a module may import modules of its own
layer or below, never above; modules of one sub-package may import each other (downward only:
the cycle check holds them to one order). An entry names a module or a sub-package; a module
takes the layer of the longest entry that names it or its package, and every module must have
one. Run with `-s` to print the map and the graph.
"""

from __future__ import annotations

import ast
import re
import tokenize
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clexproxy"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations: values, the catalog, settings, the compiled pairs",
     ("clexproxy", "clexproxy.errors", "clexproxy.clock", "clexproxy.headers", "clexproxy.outcome",
      "clexproxy.catalog", "clexproxy.catalog_tables", "clexproxy.config", "clexproxy.cors", "clexproxy.fastpath",
      "clexproxy.outbox", "clexproxy.signals")),
    ("what the request path leans on but never calls back: the store, Redis, metrics and logs, the demo upstream, "
     "the protocol translations",
     ("clexproxy.store", "clexproxy.sync", "clexproxy.observability", "clexproxy.demo", "clexproxy.protocols")),
    ("who is calling: the key table", ("clexproxy.auth",)),
    ("may they: admission", ("clexproxy.limits",)),
    ("the upstream call; keeping memory in step with the store",
     ("clexproxy.upstream", "clexproxy.sync.store")),
    ("the answer back to the client",
     ("clexproxy.relay", "clexproxy.sse_frames", "clexproxy.translating_frames", "clexproxy.keepalive",
      "clexproxy.answer_wire", "clexproxy.proxied_request")),
    ("the components of one process", ("clexproxy.gateway",)),
    ("the endpoints; the console's pages", ("clexproxy.handlers", "clexproxy.web")),
    ("the aiohttp application", ("clexproxy.app",)),
    ("processes, sockets and the raw-byte screen; demo provisioning at start",
     ("clexproxy.server", "clexproxy.demo.provision")),
    ("the command line", ("clexproxy.cli", "clexproxy.__main__")),
)
MAX_LINES = 450

# The Cython sources' imports of Python modules (`cimport` of C declarations is not one).
_PYX_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+import\s+(.+)|import\s+([\w.]+))", re.MULTILINE)
# A source file named in prose: `clexproxy/relay.py`, `metrics.py`, `_sse.pyx`.
_FILE_NAME = re.compile(r"\b[\w/.-]*\w\.(?:py|pyx|pyi)\b")
_NOT_OURS = frozenset({"setup.py"})  # the build script has no class or function to name instead


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def sources() -> dict[str, Path]:
    """Every module of the package (`.py`, and `.pyx` for the compiled ones) by its dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx") and "__pycache__" not in path.parts:
            found[_module_name(path)] = path
    return found


def _resolve(name: str) -> str | None:
    """The module `name` is, or the one it lives in (`clexproxy.fastpath.sse.SSEParser`: `clexproxy.fastpath.sse`)."""
    modules = sources()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module as written, names) of each import in `path`, relative imports made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def absolute(level: int, name: str | None) -> str:
        if not level:
            return name or ""
        base = package.split(".")[: len(package.split(".")) - level + 1]
        return ".".join([*base, name] if name else base)

    if path.suffix == ".pyx":
        for match in _PYX_IMPORT.finditer(path.read_text()):
            frm, names, plain = match.groups()
            if plain:
                yield plain, []
            else:
                level = len(frm) - len(frm.lstrip("."))
                yield absolute(level, frm.lstrip(".") or None), [n.strip() for n in names.split(",")]
        return
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield absolute(node.level, node.module), [alias.name for alias in node.names]


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the clexproxy modules it imports (`from pkg import mod` counts as importing `mod`)."""
    modules = sources()
    graph = {}
    for module, path in modules.items():
        out = set()
        for name, names in _imported(module, path):
            if name != "clexproxy" and not name.startswith("clexproxy."):
                continue
            for member in names or [""]:
                full = f"{name}.{member}" if member else name
                target = full if full in modules else _resolve(name)
                if target is not None and target != module:
                    out.add(target)
        graph[module] = frozenset(out)
    return graph


def placed(module: str) -> int | None:
    """The layer of `module`: that of the longest entry naming it or a package it is in (None: no entry)."""
    best, best_len = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            named = module == entry or (entry != "clexproxy" and module.startswith(entry + "."))
            if named and len(entry) > best_len:
                best, best_len = index, len(entry)
    return best


def layer_of(module: str) -> int:
    layer = placed(module)
    assert layer is not None, f"{module} has no layer in LAYERS"
    return layer


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_every_import_goes_down_the_layers() -> None:
    graph = import_graph()
    print("\nLayers, low to high (a module imports its own layer or below):")
    for number, (job, entries) in enumerate(LAYERS):
        print(f"  {number:2d} {' '.join(entries)}\n     -- {job}")
    print("\nImport graph (layer, module -> the clexproxy modules it imports):")
    for module in sorted(graph, key=lambda m: (placed(m) or 0, m)):
        print(f"  {placed(module)} {module} -> {' '.join(sorted(graph[module])) or '-'}")
    assert sorted(m for m in graph if placed(m) is None) == [], "modules without a layer in LAYERS"
    upward = [
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_every_layer_entry_names_a_module_or_package() -> None:
    modules = sources()
    stale = [e for _, entries in LAYERS for e in entries if e not in modules]
    assert stale == []


def test_no_module_is_over_the_size_limit() -> None:
    """~450 lines at most; the Cython sources and the pure twin's largest concept file may be longer."""
    twins = sorted(PACKAGE.glob("fastpath/_*_py.py"), key=lambda p: len(p.read_text().splitlines()))
    exempt = {twins[-1]} if twins else set()
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in sorted(PACKAGE.rglob("*.py*"))
        if path.suffix in (".py", ".pyi") and path not in exempt
    }
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}


def _prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring in `path` (for Cython, every triple-quoted string)."""
    with path.open("rb") as fh:
        for token in tokenize.tokenize(fh.readline):
            if token.type == tokenize.COMMENT:
                yield token.start[0], token.string
            elif path.suffix == ".pyx" and token.type == tokenize.STRING and token.string.endswith(('"""', "'''")):
                yield token.start[0], token.string
    if path.suffix != ".pyx":
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=False)
                if doc is not None:
                    yield node.body[0].lineno, doc


def test_docstrings_and_comments_name_no_source_file() -> None:
    """Prose names classes and functions (`SharedLimits.lease`), which survive a move; file paths do not."""
    found = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in (".py", ".pyx", ".pyi") or "__pycache__" in path.parts:
            continue
        for line, text in _prose(path):
            named = [n for n in _FILE_NAME.findall(text) if n not in _NOT_OURS]
            if named:
                found.append(f"{path.relative_to(ROOT)}:{line}: {', '.join(named)}")
    assert found == []


def mapped_files(text: str) -> list[str]:
    """The files the package map in docs/ARCHITECTURE.md lists, as paths from the repository root.

    The map is the first fenced block after the `## Package map` heading: a tree indented by two
    spaces a level; each line starts with the names it describes (`relay.py`, `server/`, several
    on one line for a compiled/pure pair), then its job. A directory stands for its `__init__.py`.
    """
    section = text.split("\n## Package map", 1)[1]
    block = section.split("```", 2)[1]
    files: list[str] = []
    dirs: list[str] = []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        del dirs[depth:]
        for word in line.split():
            if word.endswith("/"):
                dirs.append(word.rstrip("/"))
                files.append("/".join([*dirs, "__init__.py"]))
                break  # one directory a line, then its job
            if not word.endswith((".py", ".pyx", ".pyi")):
                break
            files.append("/".join([*dirs, word]))
    return files


def test_the_package_map_lists_exactly_the_modules_on_disk() -> None:
    listed = mapped_files(ARCHITECTURE.read_text())
    on_disk = sorted(
        str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*")
        if path.suffix in (".py", ".pyx", ".pyi") and "__pycache__" not in path.parts
    )
    assert sorted(set(listed)) == sorted(listed), "listed twice"
    assert {"missing from the map": sorted(set(on_disk) - set(listed)),
            "in the map, not on disk": sorted(set(listed) - set(on_disk))} == {
        "missing from the map": [], "in the map, not on disk": []}


def test_the_layer_rule_sees_an_upward_import() -> None:
    """The check itself: a handler importing the server would be upward, and a cycle is found as one."""
    assert layer_of("clexproxy.server.screen") > layer_of("clexproxy.handlers.proxy")
    assert layer_of("clexproxy.demo.provision") > layer_of("clexproxy.demo.upstream")
    assert layer_of("clexproxy.sync.store") > layer_of("clexproxy.limits")
    assert _cycles({"a": frozenset({"b"}), "b": frozenset({"a"}), "c": frozenset()}) == [["a", "b"]]


def documents() -> list[Path]:
    """The repository's own Markdown (not what a tool installed under it)."""
    found = [*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("deploy/**/*.md"),
             *ROOT.glob("benchmarks/*.md"), *ROOT.glob("benchmarks/peers/*.md")]
    return sorted(found)


# What a document points to: a Markdown link's target, a path up out of its folder (`../x`), a source path.
_LINK = re.compile(r"\]\(([^)\s#]+)")
_UP = re.compile(r"(?<![\w.])\.\./[^\s)`'\"]+")
_SOURCE = re.compile(r"(?<![\w/.-])clexproxy/[\w/.]*\w")


def test_documents_point_inside_the_repository_at_what_exists() -> None:
    """No document sends a reader outside the repository, nor to a module that moved."""
    wrong = []
    for doc in documents():
        text = doc.read_text()
        links = [t for t in _LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
        for target in {*links, *_UP.findall(text)}:
            path = (doc.parent / target).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                wrong.append(f"{doc.relative_to(ROOT)}: {target}")
        for named in _SOURCE.findall(text):
            if not (ROOT / named).exists():
                wrong.append(f"{doc.relative_to(ROOT)}: {named}")
    assert wrong == []
