"""The npm package in js/: what `npm pack` ships, how Node and TypeScript resolve it, that its
JavaScript keeps to its declarations and to the bus's globs, and that the bus and the
Python wheel serve the very same file."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, BusFactory, require_file

from devbus.typefilter import TypeFilter, parse_patterns

JS = ROOT / "js"
TSC = JS / "node_modules" / ".bin" / "tsc"
NODE_WAIT = 300.0  # npm and tsc take seconds on an idle machine, much longer on a busy one
# Slow: every test runs npm, node or tsc (15-35 s each on a loaded machine).
pytestmark = pytest.mark.slow

SHIPPED = ["README.md", "devbus.d.ts", "devbus.js", "package.json", "react.d.ts", "react.js"]


def require_npm() -> None:
    """Skip without npm and the package's dev dependencies, except in CI."""
    require_file(TSC, f"tsc not found at {TSC} (run `npm ci --prefix js`)")


def run(command: list[str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=NODE_WAIT, check=check)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`npm pack` of js/, as it would be published."""
    require_npm()
    out = tmp_path_factory.mktemp("pack")
    packed = json.loads(run(["npm", "pack", "--json", "--pack-destination", str(out)], JS).stdout)
    filename: str = packed[0]["filename"]
    return out / filename


@pytest.fixture(scope="module")
def installed(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty project that installed the tarball (offline: the package depends on nothing)."""
    project = tmp_path_factory.mktemp("project")
    (project / "package.json").write_text(json.dumps({"name": "uses-devbus", "private": True, "type": "module"}))
    run(["npm", "install", "--offline", "--no-audit", "--no-fund", str(tarball)], project)
    return project


def test_the_tarball_holds_the_client_its_types_and_the_hook(tarball: Path) -> None:
    with tarfile.open(tarball) as archive:
        names = sorted(name.removeprefix("package/") for name in archive.getnames())
        served = archive.extractfile("package/devbus.js")
        assert served is not None
        shipped = served.read()
    assert names == SHIPPED
    assert shipped == (JS / "devbus.js").read_bytes()


def test_node_resolves_both_entry_points_and_react_stays_optional(installed: Path) -> None:
    script = """
        const devbus = await import("devbus");
        const hook = await import("devbus/react").then(() => "loaded", (error) => error.code);
        const meta = (await import("devbus/package.json", {with: {type: "json"}})).default;
        console.log(JSON.stringify({exports: Object.keys(devbus).sort(), hook, meta}));
    """
    result = json.loads(run(["node", "--input-type=module", "-e", script], installed).stdout)
    assert result["exports"] == [
        "DEVBUS_GAP",
        "configure",
        "createDevbus",
        "sendDevWebhook",
        "subscribeToBackendEvents",
        "typeMatcher",
    ]
    # Without React installed the hook cannot load; the client never needs it.
    assert result["hook"] == "ERR_MODULE_NOT_FOUND"
    meta: dict[str, Any] = result["meta"]
    assert meta["sideEffects"] is False
    assert "dependencies" not in meta
    assert meta["peerDependenciesMeta"] == {"react": {"optional": True}}


@pytest.mark.parametrize("resolution", ["bundler", "node16"])
def test_typescript_finds_the_types_of_both_entry_points(installed: Path, resolution: str) -> None:
    (installed / "app.ts").write_text(
        """import { createDevbus, typeMatcher, type DevbusEvent } from "devbus";
import { useDevbus } from "devbus/react";

const bus = createDevbus<{ "agent.created": { name: string } }>();
bus.subscribe("agent.created", (event) => event.type !== "devbus.gap" && event.data.name.toUpperCase());
export const matches: boolean = typeMatcher("agent.*")("agent.created");
export const hook: (p: string, f: (e: DevbusEvent) => void) => string = useDevbus;
export function Names() {
  // A typed client types the hook's events too.
  return useDevbus("agent.created", (event) => event.type !== "devbus.gap" && event.data.name.toUpperCase(), { bus });
}
// @ts-expect-error: agent.created has no `nmae`
useDevbus("agent.created", (event) => event.type !== "devbus.gap" && event.data.nmae, { bus });
// @ts-expect-error: the map says `name` is a string
bus.send("agent.created", { name: 7 });
"""
    )
    module = "es2022" if resolution == "bundler" else "node16"
    flags = ["--strict", "--noEmit", "--target", "es2022", "--module", module, "--moduleResolution", resolution]
    result = run([str(TSC), *flags, "app.ts"], installed, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_javascript_keeps_to_its_declarations() -> None:
    require_npm()
    result = run(["npm", "run", "--silent", "check"], JS, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_declared_value_is_exported_and_nothing_else() -> None:
    """`npm run check` types what the JavaScript exports; this finds what it forgot to export."""
    require_npm()
    script = """
        import ts from "typescript";
        const declared = (file) => {
          const program = ts.createProgram([file], {});
          const checker = program.getTypeChecker();
          const module = checker.getSymbolAtLocation(program.getSourceFile(file));
          return checker.getExportsOfModule(module)
            .filter((symbol) => symbol.flags & ts.SymbolFlags.Value).map((symbol) => symbol.name).sort();
        };
        const devbus = Object.keys(await import("./devbus.js")).sort();
        console.log(JSON.stringify({devbus, declared: declared("devbus.d.ts"), react: declared("react.d.ts")}));
    """
    result = json.loads(run(["node", "--input-type=module", "-e", script], JS).stdout)
    assert result["devbus"] == result["declared"]
    assert result["react"] == ["useDevbus"]
    assert "export function useDevbus" in (JS / "react.js").read_text()


def glob_cases() -> list[tuple[str, str]]:
    """Patterns and types that exercise fnmatch's corners: stars, sets, ranges, brackets."""
    cases = [
        ("agent.*", "agent.created"),
        ("agent.*", "agents.created"),
        ("agent.[cd]*", "agent.deleted"),
        ("agent.[!cd]*", "agent.deleted"),
        ("a?c", "abc"),
        ("[]]", "]"),
        ("[!]]", "a"),
        ("[a-c-e]", "-"),
        ("[z-a]", "m"),
        ("[!z-a]", "m"),
        ("[a-]", "-"),
        ("[", "["),
        ("a[", "a["),
        ("*.*.*", "a.b"),
        ("**b", "aab"),
        ("agent.*,rental.created", "rental.created"),
        ("é.*", "é.x"),
    ]
    chance = random.Random(20)
    letters = "ab.-[]!"

    def near(pattern: str) -> str:
        # A type the pattern may well match: wildcards filled in, the rest kept.
        def fill(c: str) -> str:
            if c == "*":
                return "".join(chance.choices(letters, k=chance.randint(0, 2)))
            return chance.choice(letters) if c == "?" else c

        return "".join(fill(c) for c in pattern)

    for _ in range(3000):
        pattern = "".join(chance.choices(letters + "*?", k=chance.randint(1, 7)))
        text = near(pattern) if chance.random() < 0.5 else "".join(chance.choices(letters, k=chance.randint(0, 6)))
        cases.append((pattern, text))
    return cases


def test_the_client_matches_types_as_the_bus_does() -> None:
    """The tabs filter what the shared stream carries: by the very globs the bus's ?types= applies."""
    require_npm()
    cases = glob_cases()
    script = """
        import { typeMatcher } from "./devbus.js";
        let input = "";
        for await (const chunk of process.stdin) input += chunk;
        console.log(JSON.stringify(JSON.parse(input).map(([p, t]) => typeMatcher(p)(t))));
    """
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=JS,
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=NODE_WAIT,
        check=True,
    )
    client = json.loads(result.stdout)
    expected = [TypeFilter(parse_patterns(pattern))(text) for pattern, text in cases]
    wrong = [(case, mine) for case, mine, theirs in zip(cases, client, expected, strict=True) if mine != theirs]
    assert wrong == []
    assert 0.05 < sum(expected) / len(expected) < 0.95  # the random cases match, and miss, often


async def test_the_bus_serves_the_packages_files(make_bus: BusFactory) -> None:
    bus = await make_bus()
    for name in ("devbus.js", "devbus.d.ts"):
        response = await bus.get(f"/{name}")
        assert await response.read() == (JS / name).read_bytes()


@pytest.mark.slow
def test_the_wheel_carries_the_package_files_not_links(tmp_path: Path) -> None:
    """devbus/static links to js/; a wheel must hold the files themselves."""
    source = tmp_path / "source"
    # The source tree without what a build leaves, its links kept as links.
    ignore = shutil.ignore_patterns(".*", "node_modules", "build", "dist", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    assert (source / "devbus" / "static" / "devbus.js").is_symlink()
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=NODE_WAIT,
    )
    (wheel,) = wheels.glob("devbus-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in ("devbus.js", "devbus.d.ts"):
            info = archive.getinfo(f"devbus/static/{name}")
            assert info.external_attr >> 28 != 0o12, f"{name} is a link in the wheel"
            assert archive.read(info) == (JS / name).read_bytes()
