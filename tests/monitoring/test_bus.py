"""The event bus on its in-memory and its real Redis implementation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monitoring.bus import EventBus, MemoryBus, RedisBus


@pytest.fixture(params=["memory", "redis"])
async def bus_pair(request: pytest.FixtureRequest) -> Any:
    """Two buses as two processes would have them (for memory: one shared process)."""
    if request.param == "memory":
        bus = MemoryBus()
        await bus.start()
        yield bus, bus
        await bus.stop()
        return
    url = request.getfixturevalue("redis_url")
    channel = f"vigil:test:{id(request)}"
    a, b = RedisBus(url, channel), RedisBus(url, channel)
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def _collect(bus: EventBus) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def cb(ev: dict[str, Any]) -> None:
        got.append(ev)

    bus.subscribe(cb)
    return got


async def test_events_reach_every_subscriber_in_order(bus_pair: tuple[EventBus, EventBus]) -> None:
    a, b = bus_pair
    got_a = await _collect(a)
    got_b = await _collect(b)
    for seq in range(1, 51):
        await a.publish({"session_id": "s", "seq": seq, "type": "t", "data": {}})
    async with asyncio.timeout(5):
        while len(got_a) < 50 or len(got_b) < 50:
            await asyncio.sleep(0.01)
    assert [e["seq"] for e in got_a] == list(range(1, 51))
    assert [e["seq"] for e in got_b] == list(range(1, 51))
    await asyncio.sleep(0.3)  # nothing more comes: each event once, the publisher's included
    assert len(got_a) == len(got_b) == 50


async def test_the_publishing_process_delivers_before_publish_returns(
    bus_pair: tuple[EventBus, EventBus],
) -> None:
    """Its own followers do not wait for a round trip through Redis (or anything else)."""
    a, _ = bus_pair
    got = await _collect(a)
    await a.publish({"session_id": "s", "seq": 1, "type": "flag_raised", "data": {"x": 1}})
    assert got == [{"session_id": "s", "seq": 1, "type": "flag_raised", "data": {"x": 1}}]


async def test_a_foreign_or_garbled_message_is_dropped_not_fatal(redis_url: str) -> None:
    """Anything else on the channel is logged and skipped; the bus keeps delivering."""
    import redis.asyncio as aioredis

    channel = "vigil:test:garbled"
    bus = RedisBus(redis_url, channel)
    await bus.start()
    got = await _collect(bus)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        for junk in ("not json", '{"event": {"seq": 1}}', '{"origin": "x"}'):
            await raw.publish(channel, junk)
        await raw.publish(channel, '{"origin": "other", "event": {"seq": 2}}')
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        assert got == [{"seq": 2}]
    finally:
        await raw.aclose()
        await bus.stop()


async def test_a_failing_subscriber_does_not_starve_the_others(
    bus_pair: tuple[EventBus, EventBus],
) -> None:
    a, b = bus_pair

    async def broken(ev: dict[str, Any]) -> None:
        raise RuntimeError("subscriber bug")

    b.subscribe(broken)
    got = await _collect(b)
    await a.publish({"session_id": "s", "seq": 1})
    async with asyncio.timeout(5):
        while not got:
            await asyncio.sleep(0.01)
    assert got == [{"session_id": "s", "seq": 1}]


async def test_unsubscribe(bus_pair: tuple[EventBus, EventBus]) -> None:
    a, b = bus_pair
    got: list[Any] = []

    async def cb(ev: dict[str, Any]) -> None:
        got.append(ev)

    unsubscribe = b.subscribe(cb)
    unsubscribe()
    unsubscribe()  # idempotent
    sentinel = await _collect(b)
    await a.publish({"seq": 1})
    async with asyncio.timeout(5):
        while not sentinel:
            await asyncio.sleep(0.01)
    assert got == []
