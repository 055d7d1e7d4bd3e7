"""The package's structure: no import cycles, and imports only run downward.

Static, from the source's import statements (``TYPE_CHECKING`` and function-level
imports count too): the layering is ``cli -> server -> transport -> connection ->
jobs -> pool/engine -> models/batching/protocol -> errors/config``
(docs/ARCHITECTURE.md draws it).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wsserve"

#: Layer of each core module (a module may import its own layer or lower ones).
LAYERS: dict[str, int] = {
    "wsserve._version": 0, "wsserve.errors": 0, "wsserve.dtypes": 0, "wsserve.jsontypes": 0, "wsserve.argtypes": 0, "wsserve.config": 0, "wsserve.stats": 0, "wsserve.ratelimit": 0, "wsserve.logs": 0,
    "wsserve.httpmsg": 0, "wsserve.shapes": 0, "wsserve.tracecontext": 0, "wsserve.tracing": 0, "wsserve.tracesettings": 0,
    "wsserve.tensorframe": 1, "wsserve.chat": 1, "wsserve.protocol": 1, "wsserve.batching": 1, "wsserve.auth": 1, "wsserve.metrics": 1,
    "wsserve.models": 1, "wsserve.modelstore": 1, "wsserve.explain": 1, "wsserve.respcache": 1, "wsserve.logcontrol": 1,
    "wsserve.generation": 2, "wsserve.pool": 2,
    "wsserve.jobs": 3, "wsserve.admission": 3,
    "wsserve.connection": 4, "wsserve.rest": 4, "wsserve.bls": 4,
    "wsserve.transport": 5, "wsserve.oipgrpc": 5,
    "wsserve.server": 6,
    "wsserve.registry": 5, "wsserve.worker": 2, "wsserve.supervisor": 7,
    "wsserve.cli": 8, "wsserve.embed": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) if node.level \
                else (node.module or "")
            candidates = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name and not name.startswith(c + "."):
                found.add(c)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _layer(module: str) -> int | None:
    while module:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    return None


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_core_modules_import_only_downward() -> None:
    upward = []
    for module, deps in _graph().items():
        mine = _layer(module)
        if mine is None:
            continue
        for dep in deps:
            theirs = _layer(dep)
            if theirs is not None and theirs > mine:
                upward.append(f"{module} (layer {mine}) imports {dep} (layer {theirs})")
    assert not upward, "\n".join(upward)


def test_the_connection_core_touches_no_socket_loop_or_clock() -> None:
    """Sans-I/O: the core modules import neither asyncio nor time."""
    rest = sorted(f"rest/{p.stem}" for p in (PACKAGE / "rest").glob("*.py"))  # every module of the HTTP API
    assert {"rest/api", "rest/responses", "rest/modelrepo"} <= set(rest)
    for name in ("connection", "jobs", "protocol", "chat", "batching", "auth", "ratelimit", "admission", "httpmsg",
                 "tensorframe", "stats", "generation/scheduler", "generation/running", "generation/stops",
                 *rest, "oipgrpc/convert"):
        deps = {a.name if isinstance(a, ast.alias) else "" for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
        mods = {n.module for n in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text()))
                if isinstance(n, ast.ImportFrom) and n.module}
        assert not ({"asyncio", "time", "socket"} & (deps | mods)), name
