"""Imports run one way: inputs → dispatcher → store, dispatcher → outputs; clients stand apart.

Every module of the ``devbus`` package is read as source (its AST, so imports inside
functions and under ``if TYPE_CHECKING:`` count as much as those at the top) and put
in one layer below. A module may import only from the layers its own layer lists; a
module that no layer names fails the test until it is placed.

shared
    The modules at the top of ``devbus/`` that both sides use: envelopes, the nesting
    limit, frames, errors, the ZMTP codec, type filters, addresses, logging, defaults,
    the version, text for people (counts, cut columns).
    They import only each other: never ``devbus.bus``, ``devbus.client``,
    ``devbus.cli``, ``devbus.watch`` or the package's ``__init__``.
bus base
    What every layer of the bus shares: ``bus/record.py`` (the records in the log),
    settings, metrics, accepting connections and the connection budget, listening on ZeroMQ
    endpoints, the ZMTP peer, its deadline and refusals, the memory budget, replay pages.
    Shared modules and each other only.
store
    ``bus/store/*``: stores and reads, nothing else. Shared, ``record``, ``settings``,
    ``metrics`` and other store modules; never the dispatcher, an input, an output
    or the wiring. Forwarding, even from a stream several buses share, is an
    output (``outputs/forward/cluster.py``).
dispatcher
    ``bus/dispatcher.py``: shared, bus base and the store interface (``store/base.py``).
inputs
    ``bus/inputs/*``: shared, bus base, the store interface, the dispatcher and other
    inputs; never an output (what an input needs from one is a protocol it defines,
    wired by the app).
outputs
    ``bus/outputs/<name>`` (a module, or a folder of modules): shared, bus base, the
    store interface (a replay is a cursor over the log), and modules of the same
    output; never the dispatcher, an input, the wiring or another output.
wiring
    ``app``, ``serve``, ``keys``, ``backplane``, ``views``, ``guard`` and its
    ``allowlists``, ``unrouted``, ``history``, ``preflight``, ``connections`` and
    ``bus/__init__``: anything of the bus.
client, watch
    ``devbus/client/*`` and ``devbus/watch/*``: shared modules and their own folder;
    never the bus.
cli
    ``devbus/cli/*``: anything.
package
    ``devbus/__init__.py`` (the public API: the clients) and ``__main__``: shared,
    client and cli.

Besides the rules, no two modules may import each other, directly or round a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "devbus"

SHARED = "shared"
BASE = "bus base"
STORE = "store"
STORE_INTERFACE = "store interface"
DISPATCHER = "dispatcher"
INPUTS = "inputs"
OUTPUT = "output"  # one layer per output: "output sse", "output forward", ...
WIRING = "wiring"
CLIENT = "client"
WATCH = "watch"
CLI = "cli"
PACKAGE_API = "package"

SHARED_MODULES = {
    "devbus.addresses",
    "devbus.defaults",
    "devbus.envelope",
    "devbus.errors",
    "devbus.frames",
    "devbus.logs",
    "devbus.nesting",
    "devbus.text",
    "devbus.typefilter",
    "devbus.version",
    "devbus.zmtp",
}
BASE_MODULES = {
    "devbus.bus.acceptor",
    "devbus.bus.budget",
    "devbus.bus.connection_budget",
    "devbus.bus.deadline",
    "devbus.bus.endpoints",
    "devbus.bus.metrics",
    "devbus.bus.pages",
    "devbus.bus.record",
    "devbus.bus.refusals",
    "devbus.bus.settings",
    "devbus.bus.zmtp_peer",
}
WIRING_MODULES = {
    "devbus.bus",
    "devbus.bus.allowlists",
    "devbus.bus.app",
    "devbus.bus.backplane",
    "devbus.bus.connections",
    "devbus.bus.guard",
    "devbus.bus.history",
    "devbus.bus.keys",
    "devbus.bus.preflight",
    "devbus.bus.serve",
    "devbus.bus.unrouted",
    "devbus.bus.views",
}

# What each layer may import besides itself (outputs: besides modules of the same output).
ALLOWED = {
    SHARED: {SHARED},
    BASE: {SHARED},
    STORE: {SHARED, STORE_INTERFACE},
    DISPATCHER: {SHARED, BASE, STORE_INTERFACE},
    INPUTS: {SHARED, BASE, STORE_INTERFACE, DISPATCHER},
    OUTPUT: {SHARED, BASE, STORE_INTERFACE},
    WIRING: {SHARED, BASE, STORE, STORE_INTERFACE, DISPATCHER, INPUTS, OUTPUT},
    CLIENT: {SHARED},
    WATCH: {SHARED},
    CLI: {SHARED, BASE, STORE, STORE_INTERFACE, DISPATCHER, INPUTS, OUTPUT, WIRING, CLIENT, WATCH, PACKAGE_API},
    PACKAGE_API: {SHARED, CLIENT, CLI},
}
# A store needs little of the bus base: the record, and its settings or metrics at most.
STORE_BASE = {"devbus.bus.record", "devbus.bus.settings", "devbus.bus.metrics"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """The layer ``module`` belongs to (outputs: ``output <name>``), or None if no rule places it."""
    if module in SHARED_MODULES:
        return SHARED
    if module in BASE_MODULES:
        return BASE
    if module in WIRING_MODULES:
        return WIRING
    if module in ("devbus", "devbus.__main__"):
        return PACKAGE_API
    if module == "devbus.bus.store.base":
        return STORE_INTERFACE
    if module == "devbus.bus.dispatcher":
        return DISPATCHER
    parts = module.split(".")
    if parts[:3] == ["devbus", "bus", "store"]:
        return STORE
    if parts[:3] == ["devbus", "bus", "inputs"]:
        return INPUTS
    if parts[:3] == ["devbus", "bus", "outputs"]:
        return f"{OUTPUT} {parts[3]}" if len(parts) > 3 else f"{OUTPUT}s"
    top = {"client": CLIENT, "watch": WATCH, "cli": CLI}
    if len(parts) > 1 and parts[0] == "devbus" and parts[1] in top:
        return top[parts[1]]
    return None


def imports(path: Path, module: str, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module) for every devbus module that ``path`` imports, wherever in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "devbus":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "devbus":
                continue
            for alias in node.names:
                # ``from devbus.bus import views`` imports the module views.
                submodule = f"{base}.{alias.name}"
                yield node.lineno, submodule if submodule in known else base


def graph() -> tuple[dict[str, Path], dict[str, list[tuple[int, str]]]]:
    modules = all_modules()
    known = set(modules)
    edges = {
        name: sorted({(line, target) for line, target in imports(path, name, known) if target != name})
        for name, path in modules.items()
    }
    return modules, edges


def allowed(source: str, target: str) -> bool:
    source_layer, target_layer = layer_of(source), layer_of(target)
    assert source_layer is not None and target_layer is not None
    if source_layer.startswith(OUTPUT):
        if target_layer == source_layer:
            return True  # the same output
        source_layer = OUTPUT
    if target_layer.startswith(OUTPUT):
        target_layer = OUTPUT
    if source_layer == STORE_INTERFACE:
        source_layer = STORE
    if source_layer == target_layer and source_layer != OUTPUT:
        return True
    if source_layer == STORE and target_layer == BASE:
        return target in STORE_BASE
    if source_layer == BASE and target_layer == BASE:
        return True
    return target_layer in ALLOWED[source_layer]


def circles(edges: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for _, target in edges.get(node, []):
            if target not in edges:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = [str(path.relative_to(ROOT)) for name, path in all_modules().items() if layer_of(name) is None]
    assert not unplaced, f"place these modules in a layer of tests/test_layers.py: {unplaced}"


def test_no_module_imports_against_the_flow() -> None:
    modules, edges = graph()
    broken = []
    for source, targets in edges.items():
        if layer_of(source) is None:
            continue
        for line, target in targets:
            if layer_of(target) is not None and not allowed(source, target):
                where = modules[source].relative_to(ROOT)
                broken.append(f"{where}:{line}: {layer_of(source)} imports {target} ({layer_of(target)})")
    assert not broken, "imports against the flow (see this file's docstring):\n" + "\n".join(broken)


def test_no_import_circles() -> None:
    modules, edges = graph()
    found = []
    for component in circles(edges):
        members = set(component)
        ties = [
            f"  {modules[source].relative_to(ROOT)}:{line} imports {target}"
            for source in component
            for line, target in edges[source]
            if target in members
        ]
        found.append(" <-> ".join(component) + "\n" + "\n".join(ties))
    assert not found, "modules that import each other:\n" + "\n".join(found)


def test_the_checks_see_every_kind_of_import(tmp_path: Path) -> None:
    """The reader finds imports in functions, under TYPE_CHECKING, relative ones and submodules named in a from."""
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import devbus.envelope\n"
        "from devbus.bus import views\n"
        "from . import record\n"
        "if TYPE_CHECKING:\n"
        "    from devbus.bus.outputs.forward import Forwarder\n"
        "def later():\n"
        "    from devbus.bus.store.redis import RedisStore\n"
    )
    known = {"devbus.bus.views", "devbus.bus.record"}
    found = {target for _, target in imports(source, "devbus.bus.store.base", known)}
    assert found == {
        "devbus.envelope",
        "devbus.bus.views",
        "devbus.bus.store",  # `from . import record` in devbus/bus/store/base.py: not a known module
        "devbus.bus.outputs.forward",
        "devbus.bus.store.redis",
    }
    assert circles({"a": [(1, "b")], "b": [(1, "c")], "c": [(1, "a")], "d": [(1, "a")]}) == [["a", "b", "c"]]
    assert not allowed("devbus.bus.store.base", "devbus.bus.outputs.forward")
    assert not allowed("devbus.bus.outputs.sse.stream", "devbus.bus.outputs.egress")
    assert allowed("devbus.bus.outputs.sse.stream", "devbus.bus.outputs.sse.fanout")
    assert not allowed("devbus.client.config", "devbus.bus.settings")
