"""The event catalogue: GET /types, schema inference and its bounds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from support import BusFactory, Client, post

from devbus.bus.metrics import Metrics
from devbus.bus.outputs.catalogue.catalogue import SHAPES_PER_SECOND, Catalogue
from devbus.client.typescript import to_typescript
from devbus.envelope import MAX_DEPTH, Event


async def catalogue(client: Client, **headers: str) -> dict[str, Any]:
    response = await client.get("/api/dev/types", headers=headers)
    assert response.status == 200, await response.text()
    return dict(await response.json())


def by_type(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["type"]: entry for entry in answer["types"]}


def event(event_type: str, data: dict[str, Any], *, seq: int = 1, timestamp: str = "2026-01-01T00:00:00Z") -> Event:
    return Event(id=f"r-{seq}", type=event_type, data=data, timestamp=timestamp, source="test")


async def test_types_merges_optional_fields_nulls_numbers_and_nested_arrays(bus: Client) -> None:
    await post(bus, "agent.created", {"name": "Ada", "age": 3, "tags": [["a"], []], "owner": None}, source="seed")
    await post(bus, "agent.created", {"name": "Bo", "age": 2.5, "tags": [["b", 1]], "owner": {"id": 7}})
    await post(bus, "agent.created", {"name": "Cy", "age": 1, "tags": [], "owner": None, "note": "x"})
    await post(bus, "other.thing", {})

    answer = await catalogue(bus)
    assert [entry["type"] for entry in answer["types"]] == ["agent.created", "other.thing"]
    agent = by_type(answer)["agent.created"]
    assert agent["count"] == 3
    assert agent["sources"] == ["http", "seed"]
    assert agent["first_seen"] < agent["last_seen"]
    assert agent["schema_complete"] is True
    schema = agent["schema"]
    assert schema["type"] == "object"
    assert sorted(schema["required"]) == ["age", "name", "owner", "tags"]  # `note` is optional
    properties = schema["properties"]
    assert properties["age"] == {"type": "number"}  # 3 and 2.5
    assert properties["note"] == {"type": "string"}
    assert properties["tags"]["items"]["type"] == "array"
    assert properties["tags"]["items"]["items"]["type"] == ["integer", "string"]
    owner = properties["owner"]["anyOf"]
    assert {"type": "null"} in owner
    assert {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]} in owner
    assert agent["example"]["name"] in {"Ada", "Bo", "Cy"}
    assert by_type(answer)["other.thing"]["schema"] == {"type": "object"}


async def test_types_needs_the_token_like_history(make_bus: BusFactory) -> None:
    client = await make_bus(token="s3cret")
    refused = await client.get("/api/dev/types")
    assert refused.status == 401
    answer = await catalogue(client, Authorization="Bearer s3cret")
    assert answer["types"] == []


async def test_types_follows_the_prefix(make_bus: BusFactory) -> None:
    client = await make_bus(prefix="/bus")
    response = await client.post("/bus/webhook", json={"event_type": "a.b", "data": {"x": 1}})
    assert response.status == 200
    answer = await (await client.get("/bus/types")).json()
    assert [entry["type"] for entry in answer["types"]] == ["a.b"]
    assert (await client.get("/api/dev/types")).status == 404


def test_types_past_the_cap_are_counted_in_metrics_not_catalogued() -> None:
    metrics = Metrics()
    catalogue = Catalogue(metrics, max_types=2)
    catalogue.observe([event(f"t.{n}", {"n": n}, seq=n) for n in range(5)])
    assert [entry["type"] for entry in catalogue.snapshot()["types"]] == ["t.0", "t.1"]
    text = metrics.render().decode()
    assert 'devbus_catalogue_skipped_total{reason="types"} 3.0' in text
    assert "devbus_catalogue_types 2.0" in text


def test_a_schema_stops_learning_at_its_size_cap_and_keeps_what_fitted() -> None:
    metrics = Metrics()
    catalogue = Catalogue(metrics, max_schema_bytes=600)
    # A map keyed by ids grows the schema with every key: the bound must stop it.
    catalogue.observe([event("scores", {f"user{n}": n}, seq=n) for n in range(100)])
    entry = catalogue.snapshot()["types"][0]
    assert entry["count"] == 100
    assert entry["schema_complete"] is False
    assert 0 < len(entry["schema"]["properties"]) < 100
    assert 'devbus_catalogue_skipped_total{reason="schema"} 1.0' in metrics.render().decode()
    catalogue.observe([event("scores", {"late": "x"}, seq=101)])
    assert "late" not in catalogue.snapshot()["types"][0]["schema"]["properties"]


def test_a_burst_is_sampled_but_every_type_gets_a_schema_and_a_count() -> None:
    catalogue = Catalogue(Metrics())
    size = SHAPES_PER_SECOND * 5
    catalogue.observe([event("first", {"a": 1}, seq=n) for n in range(size)])  # uses up the shape budget
    burst = [event("bulk", {"n": n}, seq=n) for n in range(size)]
    burst.insert(777, event("rare", {"only": "once"}, seq=99_999))
    catalogue.observe(burst)
    entries = {e["type"]: e for e in catalogue.snapshot()["types"]}
    assert entries["bulk"]["count"] == size
    assert entries["bulk"]["schema"]["properties"] == {"n": {"type": "integer"}}
    assert entries["rare"]["count"] == 1
    assert entries["rare"]["schema"]["properties"] == {"only": {"type": "string"}}


def test_below_the_shape_rate_every_payload_is_looked_at() -> None:
    catalogue = Catalogue(Metrics())
    payloads = [{"n": 1}] * (SHAPES_PER_SECOND - 2) + [{"n": None, "late": [1.5]}]
    catalogue.observe([event("t", data, seq=n) for n, data in enumerate(payloads)])
    schema = catalogue.snapshot()["types"][0]["schema"]
    assert schema["properties"] == {
        "n": {"type": ["integer", "null"]},
        "late": {"type": "array", "items": {"type": "number"}},
    }


def test_seed_learns_first_and_last_seen_from_the_stored_events() -> None:
    catalogue = Catalogue(Metrics())
    catalogue.seed(
        [
            event("a", {"x": 1}, seq=1, timestamp="2026-01-01T00:00:01.000000Z"),
            event("b", {}, seq=2, timestamp="2026-01-01T00:00:02.000000Z"),
            event("a", {"x": 2}, seq=3, timestamp="2026-01-01T00:00:03.000000Z"),
        ]
    )
    entry = catalogue.snapshot()["types"][0]
    assert (entry["first_seen"], entry["last_seen"], entry["count"]) == (
        "2026-01-01T00:00:01.000000Z",
        "2026-01-01T00:00:03.000000Z",
        2,
    )


def test_the_snapshot_is_the_same_whatever_order_shapes_arrived_in() -> None:
    payloads: list[dict[str, Any]] = [{"a": 1}, {"b": "x", "a": None}, {"c": [1.5, {"d": True}]}]
    first, second = Catalogue(Metrics()), Catalogue(Metrics())
    first.observe([event("t", p, seq=n) for n, p in enumerate(payloads)])
    second.observe([event("t", p, seq=n) for n, p in enumerate(reversed(payloads))])
    assert first.snapshot()["types"][0]["schema"] == second.snapshot()["types"][0]["schema"]


async def test_the_catalogue_starts_with_what_the_store_retained(make_bus: BusFactory, tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'events.db'}"
    first = await make_bus(store=store)
    await post(first, "kept.event", {"n": 1, "tags": ["a"]})
    await post(first, "kept.event", {"n": 2})
    await first.close()

    second = await make_bus(store=store)
    await post(second, "new.event", {"ok": True})
    entries = by_type(await catalogue(second))
    assert sorted(entries) == ["kept.event", "new.event"]
    assert entries["kept.event"]["count"] == 2  # read from the store once, not twice
    assert entries["kept.event"]["schema"]["required"] == ["n"]
    assert entries["new.event"]["count"] == 1


def nested(levels: int, *, kind: type = list) -> dict[str, Any]:
    """A payload nesting ``levels`` deep (itself level 1), built without recursion."""
    inner: Any = 1
    for _ in range(levels - 1):
        inner = [inner] if kind is list else {"k": inner}
    return {"tree": inner}


def test_the_catalogue_never_raises_and_logs_a_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a 900-deep payload raised RecursionError for each event (a 242 KB traceback
    logged each time) and left the type's schema `{}` marked complete."""
    metrics = Metrics()
    catalogue = Catalogue(metrics)
    catalogue.observe([event("deep.list", {"before": "deep"}, seq=0)], every=True)
    pathological = [
        event("deep.list", nested(900)),
        event("deep.dict", nested(100_000, kind=dict)),
        event("not.json", {"value": object()}),  # nothing a store gives back, but nothing may raise
        event("at.the.limit", nested(MAX_DEPTH, kind=dict)),
    ]
    with caplog.at_level(logging.DEBUG, logger="devbus"):
        for _ in range(50):
            catalogue.observe(pathological, every=True)
            catalogue.seed(pathological)  # what a store held from before the limit
    entries = by_type(catalogue.snapshot())
    assert entries["deep.list"]["schema"]["properties"] == {"before": {"type": "string"}}  # what it had learned
    assert {name: entries[name]["schema_complete"] for name in entries} == {
        "at.the.limit": True,
        "deep.dict": False,
        "deep.list": False,
        "not.json": False,
    }
    assert entries["deep.dict"]["count"] == 100
    text = metrics.render().decode()
    assert 'devbus_catalogue_skipped_total{reason="depth"} 2.0' in text
    assert 'devbus_catalogue_skipped_total{reason="error"} 1.0' in text
    assert [record.levelname for record in caplog.records] == ["WARNING", "WARNING"]
    assert not [record for record in caplog.records if record.exc_info]
    assert sum(len(record.getMessage()) for record in caplog.records) < 1000
    # A schema as deep as the inputs allow is written as TypeScript too.
    typescript = to_typescript(catalogue.snapshot())
    assert typescript.count("k: {") == MAX_DEPTH - 2 and "export interface AtTheLimitData" in typescript
