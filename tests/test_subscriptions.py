"""An egress listener's subscriptions: ZeroMQ prefix matching, bounded in count and bytes."""

from __future__ import annotations

import pytest

from devbus.bus.outputs.egress.subscriptions import (
    ENTRY_COST,
    MAX_BYTES,
    MAX_SUBSCRIPTIONS,
    Subscriptions,
    TooManySubscriptions,
)


def subscribed(*prefixes: bytes) -> Subscriptions:
    subscriptions = Subscriptions()
    for prefix in prefixes:
        subscriptions.add(prefix)
    return subscriptions


@pytest.mark.parametrize(
    ("prefixes", "head", "matches"),
    [
        ((), b"agent.created", False),
        ((b"",), b"agent.created", True),
        ((b"agent.",), b"agent.created", True),
        ((b"agent.",), b"agent", False),
        ((b"agent.created",), b"agent.created", True),
        ((b"agent.created.x",), b"agent.created", False),
        ((b"rental.", b"agent.c"), b"agent.created", True),
        ((b"rental.", b"agent.d"), b"agent.created", False),
        ((b"\xc3",), "é.x".encode(), True),  # bytes, as libzmq compares them: half a character is a prefix
    ],
    ids=[
        "none",
        "everything",
        "prefix",
        "longer-than-type",
        "whole-type",
        "past-its-end",
        "one-of-two",
        "neither",
        "bytes",
    ],
)
def test_an_event_matches_when_a_subscription_is_a_prefix_of_its_type(
    prefixes: tuple[bytes, ...], head: bytes, matches: bool
) -> None:
    assert subscribed(*prefixes).match(head) is matches


def test_a_cancelled_subscription_matches_no_more_and_a_repeated_one_counts_once() -> None:
    subscriptions = subscribed(b"agent.", b"agent.", b"rental.")
    assert len(subscriptions) == 2 and subscriptions.size == len(b"agent.rental.")
    assert subscriptions.remove(b"agent.")
    assert not subscriptions.remove(b"agent.")
    assert not subscriptions.match(b"agent.created")
    assert subscriptions.match(b"rental.created")
    assert subscriptions.cost == len(b"rental.") + ENTRY_COST


def test_matching_among_many_subscriptions_of_one_length_looks_up_one_prefix() -> None:
    subscriptions = subscribed(*(b"n%05d" % n for n in range(10_000)), b"agent.")
    assert subscriptions.match(b"agent.created")
    assert subscriptions.match(b"n04242.tail")
    assert not subscriptions.match(b"n4242")


def test_past_the_count_a_subscription_is_refused_and_changes_nothing() -> None:
    subscriptions = subscribed(*(b"%06d" % n for n in range(MAX_SUBSCRIPTIONS)))
    with pytest.raises(TooManySubscriptions, match=f"{MAX_SUBSCRIPTIONS} prefixes"):
        subscriptions.add(b"agent.")
    assert len(subscriptions) == MAX_SUBSCRIPTIONS
    assert not subscriptions.match(b"agent.created")
    assert not subscriptions.add(b"000001")  # one it has is no new subscription, whatever the bound


def test_past_the_bytes_a_subscription_is_refused() -> None:
    size = 4096
    subscriptions = subscribed(*(b"%04d" % n + b"x" * (size - 4) for n in range(MAX_BYTES // size)))
    assert subscriptions.size == MAX_BYTES
    with pytest.raises(TooManySubscriptions, match="KiB in all"):
        subscriptions.add(b"a")
    assert subscriptions.cost == MAX_BYTES + len(subscriptions) * ENTRY_COST
