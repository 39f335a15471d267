"""/monitor over a real server: follow from a cursor, live events, state pushes, actions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monitoring import namespace as monitor_ns
from tests.conftest import World, prepare_for_dosing
from tests.monitor_client import MonitorClient

Follower = MonitorClient


async def _until(predicate: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_everyone_in_the_session_sees_each_transition_once_in_order(world: World) -> None:
    s1 = world.sessions["s1"]
    clinician = await Follower(world, "clin_a").connect()
    patient = await Follower(world, "pat1").connect()
    oncall = await Follower(world, "oncall").connect()
    try:
        for f in (clinician, patient, oncall):
            reply = await f.call("follow", {"session_id": s1})
            assert reply["ok"] and reply["state"]["phase"] == "lobby"
            assert [e["seq"] for e in reply["events"]] == [1]
        assert (await clinician.call("act", {"session_id": s1, "action": "admit"}))["state"][
            "phase"
        ] == "pre_check"
        await prepare_for_dosing(world.app, s1)
        assert (await oncall.call("act", {"session_id": s1, "action": "start_dosing"}))["ok"]
        for f in (clinician, patient, oncall):
            await _until(
                lambda f=f: len(f.states) == 2 and f.events[-1]["data"].get("to") == "dosing"
            )
            moves = [e["data"]["to"] for e in f.events if e["type"] == "phase_changed"]
            assert moves == ["pre_check", "dosing"]
            seqs = [e["seq"] for e in f.events]
            assert seqs == list(range(2, 2 + len(seqs)))
            assert f.states[-1]["phase"] == "dosing" and f.states[-1]["phase_deadline"]
        # Another session's events do not leak in.
        await clinician.call("act", {"session_id": world.sessions["s2"], "action": "admit"})
        await asyncio.sleep(0.3)
        assert all(e["session_id"] == s1 for e in patient.events)
    finally:
        for f in (clinician, patient, oncall):
            await f.close()


async def test_resume_from_a_cursor_receives_exactly_the_missed_events(
    world_factory: Any, db_url: str, tmp_path: Any
) -> None:
    from tests.conftest import make_settings

    world = await world_factory(make_settings(db_url, tmp_path))
    s1 = world.sessions["s1"]
    f = await Follower(world, "oncall").connect()
    reply = await f.call("follow", {"session_id": s1})
    cursor = reply["events"][-1]["seq"]
    await f.close()
    # While it is away, things happen.
    doc = await Follower(world, "clin_a").connect()
    await doc.call("act", {"session_id": s1, "action": "admit"})
    await doc.call("act", {"session_id": s1, "action": "end", "reason": "patient unwell"})
    await doc.close()
    f2 = await Follower(world, "oncall").connect()
    try:
        reply = await f2.call("follow", {"session_id": s1, "after_seq": cursor})
        assert [e["seq"] for e in reply["events"]] == [2, 3]
        assert [e["data"]["to"] for e in reply["events"]] == ["pre_check", "ended_early"]
        assert reply["truncated"] is False and reply["state"]["last_seq"] == 3
    finally:
        await f2.close()


async def test_a_cursor_too_old_gets_a_snapshot(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor_ns, "REPLAY_LIMIT", 1)
    s1 = world.sessions["s1"]
    doc = await Follower(world, "clin_a").connect()
    try:
        await doc.call("act", {"session_id": s1, "action": "admit"})
        await doc.call("act", {"session_id": s1, "action": "end", "reason": "no sitter"})
        reply = await doc.call("follow", {"session_id": s1, "after_seq": 0})
        assert reply["truncated"] is True and reply["events"] == []
        assert reply["state"]["last_seq"] == 3 and reply["state"]["phase"] == "ended_early"
        reply = await doc.call("follow", {"session_id": s1, "after_seq": 2})
        assert reply["truncated"] is False and [e["seq"] for e in reply["events"]] == [3]
    finally:
        await doc.close()


async def test_monitor_refuses_bad_input_and_the_wrong_people(world: World) -> None:
    s1, s2 = world.sessions["s1"], world.sessions["s2"]
    pat = await Follower(world, "pat1").connect()
    doc = await Follower(world, "clin_b").connect()
    try:
        cases = [
            (pat, "follow", {"session_id": s2}, "forbidden"),
            (pat, "act", {"session_id": s1, "action": "admit"}, "forbidden"),
            (doc, "follow", {"session_id": s1}, "forbidden"),
            (pat, "follow", {"session_id": s1, "after_seq": -1}, "bad_request"),
            (pat, "follow", {"session_id": s1, "after_seq": "3"}, "bad_request"),
            (pat, "follow", {"session_id": s1, "after_seq": True}, "bad_request"),
            (pat, "act", {"session_id": s1, "action": "teleport"}, "bad_request"),
            (pat, "subscribe_everything", {}, "unknown_event"),
        ]
        for client, event, data, code in cases:
            reply = await client.call(event, data)
            assert reply["ok"] is False and reply["error"]["code"] == code, (event, data)
        # The sitter follows but may not move the clock.
        sitter_token = await world.invite("s1", "sitter")
        world.tokens["sitter"] = sitter_token
        sitter = await Follower(world, "sitter").connect()
        try:
            assert (await sitter.call("follow", {"session_id": s1}))["ok"]
            reply = await sitter.call("act", {"session_id": s1, "action": "admit"})
            assert reply["error"]["code"] == "forbidden"
        finally:
            await sitter.close()
    finally:
        await pat.close()
        await doc.close()


async def test_two_nodes_on_redis_deliver_each_event_once(
    world_factory: Any, pg_url: str, redis_url: str, tmp_path: Any
) -> None:
    """Scale-out: a follower on node B sees (once) what a clinician does on node A."""
    from tests.conftest import make_settings

    a = await world_factory(make_settings(pg_url, tmp_path, redis_url=redis_url))
    b = await world_factory(make_settings(pg_url, tmp_path, redis_url=redis_url), do_seed=False)
    b.tokens, b.sessions = a.tokens, a.sessions
    s1 = a.sessions["s1"]
    on_b = await Follower(b, "oncall").connect()
    on_a = await Follower(a, "clin_a").connect()
    try:
        await on_b.call("follow", {"session_id": s1})
        await on_a.call("follow", {"session_id": s1})
        await on_a.call("act", {"session_id": s1, "action": "admit"})
        await _until(lambda: len(on_b.events) >= 1 and len(on_a.events) >= 1)
        await asyncio.sleep(0.5)  # a duplicate would have arrived by now
        assert [e["seq"] for e in on_b.events] == [2]
        assert [e["seq"] for e in on_a.events] == [2]
    finally:
        await on_b.close()
        await on_a.close()
