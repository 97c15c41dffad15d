"""The benchmark at its smallest sizes: every scenario runs and every count is right (speed is not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, bus_env

SCENARIOS = ["burst", "http-fanout", "latency", "idle", "slow", "ingest"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        env=bus_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    assert "scenario" in done.stdout  # the table
    scenarios: dict[str, dict[str, object]] = json.loads(Path(out).read_text())["scenarios"]
    return scenarios


@pytest.mark.parametrize("name", SCENARIOS)
def test_quick_scenario_delivers_every_event(quick_run: dict[str, dict[str, object]], name: str) -> None:
    result = quick_run[name]
    assert "error" not in result and "skipped" not in result, result
    assert result["correct"] is True, result


def test_quick_slow_scenario_evicts_the_stalled_subscriber(quick_run: dict[str, dict[str, object]]) -> None:
    assert quick_run["slow"]["evicted"] == 1
    assert quick_run["slow"]["complete"] == quick_run["slow"]["subscribers"]


def test_quick_fanout_compares_with_the_reference(quick_run: dict[str, dict[str, object]]) -> None:
    reference = quick_run["http-fanout"]["reference"]
    assert isinstance(reference, dict)
    assert reference["complete"] == reference["subscribers"] == quick_run["http-fanout"]["subscribers"]
