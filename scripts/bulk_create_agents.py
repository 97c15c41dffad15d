#!/usr/bin/env python3
"""Seed N agent records and tell every open page about them through devbus.

This is what a seeding script in your own project would do: write the records,
emit one `agent.created` per record (flagged `"bulk": true`, so a page can skip
per-record toasts), then one `agents.bulk_created` `{"count", "agent_ids"}`.

    devbus run &
    python scripts/bulk_create_agents.py --count 100
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sqlite3
import sys
import time
import uuid
from pathlib import Path

try:
    import devbus
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import devbus

NAMES = ("Ada", "Brook", "Cyd", "Dara", "Eli", "Fen", "Gus", "Hal", "Ivo", "Jun")


def create_agents(db: sqlite3.Connection, count: int) -> list[dict[str, str]]:
    """Insert ``count`` agent rows and return them."""
    db.execute("CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL)")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    agents = [
        {"id": str(uuid.uuid4()), "name": f"{NAMES[n % len(NAMES)]}-{n + 1}", "created_at": now} for n in range(count)
    ]
    with db:
        db.executemany("INSERT INTO agents VALUES (:id, :name, :created_at)", agents)
    return agents


def main(argv: list[str] | None = None) -> int:
    """Create the agents, then announce them on the bus."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="agents to create (default 100)")
    parser.add_argument("--db", default=":memory:", help="SQLite file to write the agents to (default: in memory)")
    parser.add_argument("--ingest", default=None, help="the bus's ZeroMQ ingest (default: DEVBUS_INGEST or :8766)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to find the bus (default 5)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    agents = create_agents(sqlite3.connect(args.db), args.count)
    # The publisher never fails the work for want of a bus: it holds the events, and at
    # close says in one warning what it could not deliver.
    with devbus.Publisher(ingest=args.ingest, source="seed", timeout=args.timeout) as bus:
        # A bus started beside the script (`devbus run &` just before it) needs a moment to
        # listen: give it --timeout. Without one, the events are held and reported at close.
        with contextlib.suppress(devbus.BusUnavailable):
            bus.wait_for_bus()
        for agent in agents:
            bus.emit("agent.created", {**agent, "bulk": True})
        bus.emit("agents.bulk_created", {"count": len(agents), "agent_ids": [a["id"] for a in agents]})
    if bus.undelivered or bus.dropped:
        return 1
    print(f"created {len(agents)} agents and announced them on {bus.address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
