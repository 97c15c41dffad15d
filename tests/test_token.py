"""--token: required everywhere but health and the page files, by header or query."""

from __future__ import annotations

import pytest
from support import BusFactory, Client, open_stream

TOKEN = "s3cret-t0ken"
EVENT = {"event_type": "t.ok", "data": {}}
PROTECTED = ["/api/dev/events", "/api/dev/history", "/metrics"]


@pytest.fixture
async def locked(make_bus: BusFactory) -> Client:
    """A bus started with --token."""
    return await make_bus(token=TOKEN)


async def recorded(client: Client) -> int:
    return int((await (await client.get("/api/dev/health")).json())["events"])


@pytest.mark.parametrize(
    ("headers", "query"),
    [({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong"), ({"Authorization": TOKEN}, "")],
    ids=["none", "wrong-header", "wrong-query", "no-bearer-scheme"],
)
async def test_missing_or_wrong_token_is_401_and_records_nothing(
    locked: Client, headers: dict[str, str], query: str
) -> None:
    response = await locked.post(f"/api/dev/webhook{query}", json=EVENT, headers=headers)
    assert response.status == 401
    assert "Authorization: Bearer" in (await response.json())["error"]
    for path in PROTECTED:
        assert (await locked.get(f"{path}{query}", headers=headers)).status == 401, path
    assert await recorded(locked) == 0


async def test_token_in_header_or_query_opens_every_endpoint(locked: Client) -> None:
    stream = await open_stream(locked, f"/api/dev/events?token={TOKEN}")
    by_header = await locked.post("/api/dev/webhook", json=EVENT, headers={"Authorization": f"bearer {TOKEN}"})
    by_query = await locked.post(f"/api/dev/trigger?token={TOKEN}", json=EVENT)
    assert (by_header.status, by_query.status) == (200, 200)
    assert [(await stream.event())["id"] for _ in range(2)] == [
        (await by_header.json())["id"],
        (await by_query.json())["id"],
    ]
    assert (await locked.get("/api/dev/history", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
    assert (await locked.get(f"/metrics?token={TOKEN}")).status == 200


async def test_health_and_page_files_need_no_token(locked: Client) -> None:
    """A page must load before it can read ?token= from its own URL; the files hold no secret."""
    for path in ["/api/dev/health", "/", "/dashboard.js", "/devbus.js", "/devbus.d.ts", f"/?token={TOKEN}"]:
        assert (await locked.get(path)).status == 200, path


async def test_only_the_exact_health_path_is_exempt(make_bus: BusFactory) -> None:
    """Regression: any path ending in /health used to skip the token check."""
    client = await make_bus(token=TOKEN, prefix="/bus")
    assert (await client.get("/bus/health")).status == 200
    for path in ["/api/dev/health", "/bus/x/health", "/bus/health/"]:
        assert (await client.get(path)).status == 401, path


async def test_preflight_needs_no_token(locked: Client) -> None:
    """Browsers never send credentials on a preflight; refusing it would break every page."""
    preflight = await locked.options(
        "/api/dev/webhook",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204


async def test_without_token_setting_no_token_is_needed(bus: Client) -> None:
    assert (await bus.post("/api/dev/webhook", json=EVENT)).status == 200
    for path in PROTECTED:
        response = await bus.get(path)
        assert response.status == 200, path
        response.close()
