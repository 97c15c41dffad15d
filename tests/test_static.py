"""The browser files the bus serves: routes, content types, prefix; the browser-test gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_fixtures import require_chromium
from support import BusFactory


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html", "<title>devbus</title>"),
        ("/dashboard.js", "text/javascript", "createDevbus"),
        ("/devbus.js", "text/javascript", "export function createDevbus"),
        ("/devbus.d.ts", "application/typescript", "export function createDevbus"),
    ],
    ids=["dashboard", "dashboard-script", "client", "types"],
)
async def test_browser_files_are_served(make_bus: BusFactory, path: str, content_type: str, marker: str) -> None:
    bus = await make_bus()
    response = await bus.get(path)
    assert response.status == 200
    assert response.content_type == content_type
    assert response.headers["Cache-Control"] == "no-cache"
    assert marker in await response.text()


async def test_client_is_served_with_the_bus_prefix(make_bus: BusFactory) -> None:
    bus = await make_bus(prefix="/bus/")
    text = await (await bus.get("/devbus.js")).text()
    assert 'const DEFAULT_PREFIX = /* devbus:prefix */ "/bus";' in text
    assert '"/api/dev"' not in text


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)], ids=["ci", "local"]
)
def test_missing_chromium_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr("browser_fixtures.CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="Chromium not found"):
        require_chromium()
