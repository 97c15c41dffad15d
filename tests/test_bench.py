"""The benchmark at its smallest sizes: every scenario runs and every count is right (speed is not checked)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, bus_env

pytestmark = pytest.mark.slow  # the benchmark runs once per module: about 45 s

SCENARIOS = ["burst", "post", "http-fanout", "latency", "idle", "slow", "ingest", "replay", "filters", "restart"]
# With the SQLite store: the scenarios that say most about a store (speed and replay).
SQLITE_SCENARIOS = ["latency", "ingest", "replay"]


def run_quick(out: Path, *options: str) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(out), *options],
        cwd=ROOT,
        env=bus_env(),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    assert "scenario" in done.stdout  # the table
    scenarios: dict[str, dict[str, object]] = json.loads(Path(out).read_text())["scenarios"]
    return scenarios


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    return run_quick(tmp_path_factory.mktemp("bench") / "quick.json")


@pytest.fixture(scope="module")
def quick_sqlite_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    folder = tmp_path_factory.mktemp("bench-sqlite")
    scenarios = [option for name in SQLITE_SCENARIOS for option in ("--scenario", name)]
    result = run_quick(folder / "quick.json", "--store", f"sqlite:{folder / 'bus.sqlite'}", *scenarios)
    # Every bus had its own database, removed when it stopped.
    assert sorted(path.name for path in folder.iterdir()) == ["quick.json"]
    return result


@pytest.mark.parametrize("name", SCENARIOS)
def test_quick_scenario_delivers_every_event(quick_run: dict[str, dict[str, object]], name: str) -> None:
    result = quick_run[name]
    assert "error" not in result and "skipped" not in result, result
    assert result["correct"] is True, result


@pytest.mark.parametrize("name", SQLITE_SCENARIOS)
def test_quick_scenario_with_the_sqlite_store(quick_sqlite_run: dict[str, dict[str, object]], name: str) -> None:
    result = quick_sqlite_run[name]
    assert "error" not in result and "skipped" not in result, result
    assert result["correct"] is True, result


def test_quick_replay_scenario_resumes_every_reader_and_holds_every_stalled_one(
    quick_run: dict[str, dict[str, object]],
) -> None:
    replay = quick_run["replay"]
    assert replay["readers_in_order"] == replay["readers_complete"] == replay["readers"]
    assert replay["stalled_opened"] == replay["stalled"]
    assert isinstance(replay["retained"], int) and replay["retained"] > 100


def test_quick_filters_scenario_compares_with_one_shared_filter(quick_run: dict[str, dict[str, object]]) -> None:
    filters = quick_run["filters"]
    single = filters["single"]
    assert isinstance(single, dict)
    assert filters["received"] == single["received"] and filters["complete"] == 1


def test_quick_slow_scenario_evicts_the_stalled_subscriber(quick_run: dict[str, dict[str, object]]) -> None:
    assert quick_run["slow"]["evicted"] == 1
    assert quick_run["slow"]["complete"] == quick_run["slow"]["subscribers"]


def test_quick_fanout_compares_with_the_reference(quick_run: dict[str, dict[str, object]]) -> None:
    reference = quick_run["http-fanout"]["reference"]
    assert isinstance(reference, dict)
    assert reference["complete"] == reference["subscribers"] == quick_run["http-fanout"]["subscribers"]


def test_quick_post_scenario_compares_with_a_bare_aiohttp_handler(quick_run: dict[str, dict[str, object]]) -> None:
    post = quick_run["post"]
    bare = post["bare"]
    assert isinstance(bare, dict)
    # Both servers answered every request they got, within the run, and each has a p99.
    for server in (post, bare):
        assert server["non_2xx"] == server["errors"] == 0
        assert isinstance(server["requests"], int) and server["requests"] > 0
        assert isinstance(server["p99_ms"], float) and server["p99_ms"] > 0
    # Every request devbus answered 200 was stored (counted by the bus, not the generator).
    assert isinstance(post["stored"], int) and post["stored"] >= post["requests"]  # type: ignore[operator]
    # wrk drives it where installed (CI installs it); an aiohttp client otherwise.
    wrk = shutil.which("wrk") is not None or os.environ.get("CI", "").lower() == "true"
    assert post["generator"] == ("wrk" if wrk else "aiohttp")


def test_quick_post_scenario_with_the_aiohttp_generator(tmp_path: Path) -> None:
    post = run_quick(tmp_path / "post.json", "--scenario", "post", "--generator", "aiohttp")["post"]
    assert post["correct"] is True, post
    assert post["generator"] == "aiohttp"


def test_quick_burst_compares_with_the_bare_stack(quick_run: dict[str, dict[str, object]]) -> None:
    burst, bare = quick_run["burst"], quick_run["burst"]["bare"]
    assert isinstance(bare, dict)
    assert bare["complete"] == bare["subscribers"] == burst["subscribers"]
    assert bare["checked_in_order"] == bare["checked"] > 0  # the bare stack's ids are checked too
