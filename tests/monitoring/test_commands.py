"""Patients', sitters' and clinicians' commands on /monitor, on SQLite and PostgreSQL.

Real server, real Socket.IO clients, real database; time compressed where the clock matters.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from server.keys import MONITORING, SESSIONMAKER
from server.models import Alarm, CheckIn, Event, Flag, Vitals
from tests.conftest import World, make_settings, prepare_for_dosing
from tests.monitor_client import MonitorClient

Client = MonitorClient


@pytest.fixture
async def mworld(world_factory: Any, db_url: str, tmp_path: Path) -> World:
    """A seeded server on SQLite or PostgreSQL; 600: a protocol minute is 0.1 s."""
    return await world_factory(make_settings(db_url, tmp_path, time_scale=600))


async def _count(world: World, model: Any, **where: Any) -> int:
    async with world.app[SESSIONMAKER]() as db:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return int((await db.execute(query)).scalar() or 0)


async def _until(predicate: Any, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_a_flag_raised_twice_with_one_client_id_is_stored_once(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    async with Client(mworld, mworld.tokens["pat1"]) as pat:
        first = await pat.ok("raise_flag", {"session_id": s1, "code": "nausea", "client_id": "c-1"})
        again = await pat.ok("raise_flag", {"session_id": s1, "code": "nausea", "client_id": "c-1"})
        assert first["duplicate"] is False and again["duplicate"] is True
        assert again["event"]["seq"] == first["event"]["seq"]
        # Two copies racing each other (a retry sent before the first ack came back).
        racing = await asyncio.gather(
            pat.call("raise_flag", {"session_id": s1, "code": "dizziness", "client_id": "c-2"}),
            pat.call("raise_flag", {"session_id": s1, "code": "dizziness", "client_id": "c-2"}),
        )
        assert all(r["ok"] for r in racing)
        assert sorted(r["duplicate"] for r in racing) == [False, True]
    assert await _count(mworld, Flag, session_id=s1) == 2
    assert await _count(mworld, Event, session_id=s1, type="flag_raised") == 2
    assert await _count(mworld, Alarm, session_id=s1) == 2  # one per code


async def test_bad_commands_are_refused_and_store_nothing(mworld: World) -> None:
    s1, s2 = mworld.sessions["s1"], mworld.sessions["s2"]
    guide_token = await mworld.invite("s1", "guide")
    before = await _count(mworld, Event)
    async with (
        Client(mworld, mworld.tokens["pat1"]) as pat,
        Client(mworld, guide_token) as guide,
        Client(mworld, mworld.tokens["admin"]) as admin,
    ):
        cases: list[tuple[Client, str, Any, str]] = [
            (
                pat,
                "raise_flag",
                {"session_id": s1, "code": "werewolf", "client_id": "x1"},
                "unknown_flag",
            ),
            (pat, "raise_flag", {"session_id": s1, "code": "nausea"}, "bad_request"),
            (pat, "raise_flag", {"session_id": s1, "code": 7, "client_id": "x2"}, "bad_request"),
            (
                pat,
                "raise_flag",
                {"session_id": s1, "code": "nausea", "client_id": ""},
                "bad_request",
            ),
            (
                pat,
                "raise_flag",
                {"session_id": s2, "code": "nausea", "client_id": "x3"},
                "forbidden",
            ),
            (
                guide,
                "raise_flag",
                {"session_id": s1, "code": "nausea", "client_id": "x4"},
                "forbidden",
            ),
            (
                admin,
                "raise_flag",
                {"session_id": s1, "code": "nausea", "client_id": "x5"},
                "forbidden",
            ),
            (
                pat,
                "answer_checkin",
                {"session_id": s1, "ok": "yes", "client_id": "x6"},
                "bad_request",
            ),
            (
                pat,
                "answer_checkin",
                {"session_id": s1, "ok": False, "flags": ["nope"], "client_id": "x7"},
                "unknown_flag",
            ),
            (
                pat,
                "record_vitals",
                {"session_id": s1, "systolic": 999, "diastolic": 80, "client_id": "x8"},
                "bad_vitals",
            ),
            (
                pat,
                "record_vitals",
                {"session_id": s1, "systolic": 120, "diastolic": 130, "client_id": "x9"},
                "bad_vitals",
            ),
            (
                pat,
                "record_vitals",
                {"session_id": s1, "systolic": 120.5, "diastolic": 80, "client_id": "x10"},
                "bad_request",
            ),
            (pat, "precheck", {"session_id": s1, "answers": {"pet_name": "Rex"}}, "bad_request"),
            (pat, "precheck", {"session_id": s1, "answers": {"fasting": "yes"}}, "bad_request"),
            (pat, "clear_flag", {"session_id": s1, "flag_id": "f"}, "forbidden"),
            (pat, "request_checkin", {"session_id": s1}, "forbidden"),
            (pat, "ack_alarm", {"alarm_id": "no-such-alarm"}, "unknown_alarm"),
            (guide, "journal", {"session_id": s1, "text": "hi", "client_id": "x11"}, "forbidden"),
            (pat, "note", {"session_id": s1, "text": "hi"}, "forbidden"),
            (pat, "watch_board", {}, "forbidden"),
            (pat, "emergency", {"session_id": s2, "client_id": "x12"}, "forbidden"),
        ]
        for client, event, data, code in cases:
            reply = await client.call(event, data)
            assert reply["ok"] is False and reply["error"]["code"] == code, (event, data, reply)
    assert await _count(mworld, Event) == before
    assert await _count(mworld, Flag) == 0
    assert await _count(mworld, Vitals) == 0


async def test_vitals_gate_dosing_and_raise_flags(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    async with (
        Client(mworld, mworld.tokens["pat1"]) as pat,
        Client(mworld, mworld.tokens["clin_a"]) as doc,
    ):
        await doc.ok("act", {"session_id": s1, "action": "admit"})
        await prepare_for_dosing(mworld.app, s1)
        # A high reading at pre-check: a medium flag, and dosing is blocked...
        await pat.ok(
            "record_vitals",
            {
                "session_id": s1,
                "systolic": 170,
                "diastolic": 95,
                "heart_rate": 80,
                "client_id": "v2",
            },
        )
        reply = await doc.call("act", {"session_id": s1, "action": "start_dosing"})
        assert reply["error"]["code"] == "precheck_blocked"
        assert "blood_pressure_high" in reply["error"]["message"]
        # ... unless the clinician overrides with a reason, which is recorded.
        reply = await doc.ok(
            "act",
            {"session_id": s1, "action": "start_dosing", "reason": "white-coat; repeat 150/88"},
        )
        assert reply["state"]["phase"] == "dosing"
        # Critical once → high.
        await pat.ok(
            "record_vitals",
            {"session_id": s1, "systolic": 205, "diastolic": 100, "client_id": "v3"},
        )
    async with mworld.app[SESSIONMAKER]() as db:
        codes = sorted(
            tuple(r)
            for r in (
                await db.execute(select(Flag.code, Flag.priority).where(Flag.session_id == s1))
            ).all()
        )
        override = (
            await db.execute(
                select(Event).where(Event.session_id == s1, Event.type == "dosing_override")
            )
        ).scalar_one()
    assert codes == [("bp_above_threshold", "medium"), ("bp_severe", "high")]
    assert override.payload["blockers"] == ["blood_pressure_high"]


async def test_severe_twice_within_five_minutes_is_high(
    world_factory: Any, db_url: str, tmp_path: Path
) -> None:
    # Real time here: "within 5 minutes" must not depend on how fast the machine is.
    mworld = await world_factory(make_settings(db_url, tmp_path, time_scale=1))
    s1 = mworld.sessions["s1"]
    async with Client(mworld, mworld.tokens["pat1"]) as pat:
        await pat.ok(
            "record_vitals", {"session_id": s1, "systolic": 185, "diastolic": 100, "client_id": "a"}
        )
        async with mworld.app[SESSIONMAKER]() as db:
            first = (
                (await db.execute(select(Flag.code).where(Flag.session_id == s1))).scalars().all()
            )
        assert first == ["bp_above_threshold"]
        await pat.ok(
            "record_vitals", {"session_id": s1, "systolic": 186, "diastolic": 100, "client_id": "b"}
        )
    async with mworld.app[SESSIONMAKER]() as db:
        codes = sorted(
            (await db.execute(select(Flag.code).where(Flag.session_id == s1))).scalars().all()
        )
    # The second severe reading within 5 minutes is the high flag (and only that one).
    assert codes == ["bp_above_threshold", "bp_severe"]


async def test_checkins_are_scheduled_answered_missed_and_cleared(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    m = mworld.app[MONITORING]
    async with (
        Client(mworld, mworld.tokens["pat1"]) as pat,
        Client(mworld, mworld.tokens["clin_a"]) as doc,
    ):
        await doc.ok("follow", {"session_id": s1})
        await doc.ok("act", {"session_id": s1, "action": "admit"})
        await prepare_for_dosing(mworld.app, s1)
        await doc.ok("act", {"session_id": s1, "action": "start_dosing"})

        def types() -> list[str]:
            return [e["type"] for e in doc.events]

        async def first_due() -> bool:
            return "checkin_due" in types()

        # Dose + 15 protocol minutes = 1.5 s: the first check-in is asked for.
        await _until(first_due)
        await pat.ok("answer_checkin", {"session_id": s1, "ok": True, "client_id": "a1"})
        answered = [e for e in doc.events if e["type"] == "checkin_answered"]
        async with asyncio.timeout(5):
            while not answered:
                await asyncio.sleep(0.05)
                answered = [e for e in doc.events if e["type"] == "checkin_answered"]
        assert answered[0]["data"]["ok"] is True and answered[0]["data"]["kind"] == "scheduled"

        # The next one (dose + 30) goes unanswered past its grace (2 min = 0.2 s): missed.
        async def missed() -> bool:
            return "checkin_missed" in types()

        await _until(missed)
        alarm = next(e for e in doc.events if e["type"] == "alarm_triggered")
        assert alarm["data"]["kind"] == "missed_checkin" and alarm["data"]["priority"] == "medium"
        # Answering late clears it (medium alarms do not latch).
        await pat.ok(
            "answer_checkin",
            {"session_id": s1, "ok": False, "flags": ["dizziness"], "client_id": "a2"},
        )

        async def resolved() -> bool:
            return any(
                e["type"] == "alarm_resolved" and e["data"]["alarm_id"] == alarm["data"]["alarm_id"]
                for e in doc.events
            )

        await _until(resolved)
        assert "flag_raised" in types()
        # A clinician may ask at any time.
        asked = await doc.ok("request_checkin", {"session_id": s1})
        assert asked["checkin"]["kind"] == "on_demand" and asked["checkin"]["status"] == "open"
        await doc.ok("act", {"session_id": s1, "action": "end", "reason": "test over"})
    async with mworld.app[SESSIONMAKER]() as db:
        statuses = (
            (await db.execute(select(CheckIn.status).where(CheckIn.session_id == s1)))
            .scalars()
            .all()
        )
    assert "pending" not in statuses and "open" not in statuses
    assert await m.alarms.open_alarms(1, [s1]) == []


async def test_flags_are_cleared_by_clinicians_only_and_their_alarm_follows(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    async with (
        Client(mworld, mworld.tokens["pat1"]) as pat,
        Client(mworld, mworld.tokens["clin_a"]) as doc,
    ):
        raised = await pat.ok(
            "raise_flag",
            {"session_id": s1, "code": "anxiety_panic", "note": "heart racing", "client_id": "f1"},
        )
        flag_id = raised["event"]["data"]["flag_id"]
        assert raised["event"]["data"]["priority"] == "medium"
        cleared = await doc.ok(
            "clear_flag", {"session_id": s1, "flag_id": flag_id, "note": "talked down"}
        )
        assert cleared["flag"]["cleared_by"] == f"user:{mworld.users['clin_a']}"
        again = await doc.call("clear_flag", {"session_id": s1, "flag_id": flag_id})
        assert again["error"]["code"] == "flag_cleared"
        # The medium alarm resolved itself with the flag.
        async with mworld.app[SESSIONMAKER]() as db:
            status = (
                await db.execute(select(Alarm.status).where(Alarm.session_id == s1))
            ).scalar_one()
        assert status == "resolved"
        # A high flag's alarm latches: clearing the flag does not resolve it.
        high = await pat.ok(
            "raise_flag", {"session_id": s1, "code": "chest_pain", "client_id": "f2"}
        )
        await doc.ok("clear_flag", {"session_id": s1, "flag_id": high["event"]["data"]["flag_id"]})
        async with mworld.app[SESSIONMAKER]() as db:
            open_high = (
                await db.execute(
                    select(Alarm).where(Alarm.session_id == s1, Alarm.priority == "high")
                )
            ).scalar_one()
        assert open_high.status == "triggered" and open_high.latched
        resolved = await doc.ok("resolve_alarm", {"alarm_id": open_high.id, "note": "ECG fine"})
        assert resolved["alarm"]["status"] == "resolved"


async def test_journal_and_notes(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    async with (
        Client(mworld, mworld.tokens["pat1"]) as pat,
        Client(mworld, mworld.tokens["clin_a"]) as doc,
    ):
        j = await pat.ok("journal", {"session_id": s1, "text": "I saw colours.", "client_id": "j1"})
        n = await doc.ok("note", {"session_id": s1, "text": "Calm throughout."})
        assert j["event"]["type"] == "journal_entry" and n["event"]["type"] == "note_added"
        reply = await pat.call("journal", {"session_id": s1, "text": "   ", "client_id": "j2"})
        assert reply["error"]["code"] == "bad_request"


async def test_one_client_id_for_two_different_commands_stores_both(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    async with Client(mworld, mworld.tokens["pat1"]) as pat:
        flag = await pat.ok("raise_flag", {"session_id": s1, "code": "nausea", "client_id": "1"})
        entry = await pat.ok("journal", {"session_id": s1, "text": "Felt sick.", "client_id": "1"})
        assert flag["duplicate"] is False and entry["duplicate"] is False
        assert entry["event"]["type"] == "journal_entry"


async def test_followers_who_are_not_staff_get_alarms_and_notes_redacted(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    sitter_token = await mworld.invite("s1", "sitter")
    async with (
        Client(mworld, mworld.tokens["pat1"]) as pat,
        Client(mworld, sitter_token) as sitter,
        Client(mworld, mworld.tokens["clin_a"]) as doc,
    ):
        for c in (pat, sitter, doc):
            await c.ok("follow", {"session_id": s1})
        await pat.ok("raise_flag", {"session_id": s1, "code": "confusion", "client_id": "f"})
        await doc.ok("note", {"session_id": s1, "text": "Patient disoriented; calling sitter."})

        async def all_seen() -> bool:
            return all(len(c.events) >= 3 for c in (pat, sitter, doc))

        await _until(all_seen)
        for c in (pat, sitter):
            by_type = {e["type"]: e for e in c.events}
            assert by_type["flag_raised"]["data"]["code"] == "confusion"  # their own report
            assert (
                by_type["alarm_triggered"]["data"] == {} and by_type["alarm_triggered"]["redacted"]
            )
            assert by_type["note_added"]["data"] == {}
            # Still gapless: the cursor logic works the same for everyone.
            assert [e["seq"] for e in c.events] == [2, 3, 4]
        assert {e["type"]: e for e in doc.events}["note_added"]["data"]["text"].startswith(
            "Patient"
        )
        replay = await pat.ok("follow", {"session_id": s1, "after_seq": 0})
        assert all(e["data"] == {} for e in replay["events"] if e["type"] == "note_added")
    status, body = await _http(mworld, f"/api/sessions/{s1}/events", mworld.tokens["pat1"])
    assert status == 200 and any(e.get("redacted") for e in body["events"])


async def test_the_medical_director_can_answer_an_alarm(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    async with (
        Client(mworld, mworld.tokens["pat1"]) as pat,
        Client(mworld, mworld.tokens["admin"]) as director,
    ):
        await pat.ok("raise_flag", {"session_id": s1, "code": "chest_pain", "client_id": "c"})
        board = await director.ok("watch_board", {})
        alarm_id = board["alarms"][0]["alarm_id"]
        assert (await director.ok("ack_alarm", {"alarm_id": alarm_id}))["alarm"][
            "status"
        ] == "acknowledged"
        assert (await director.ok("resolve_alarm", {"alarm_id": alarm_id}))["alarm"][
            "status"
        ] == "resolved"
        # Answering alarms is not moving the clock.
        reply = await director.call("act", {"session_id": s1, "action": "admit"})
        assert reply["error"]["code"] == "forbidden"


async def test_not_ok_without_details_still_raises_an_alarm(mworld: World) -> None:
    s1 = mworld.sessions["s1"]
    async with Client(mworld, mworld.tokens["pat1"]) as pat:
        await pat.ok(
            "answer_checkin", {"session_id": s1, "ok": False, "note": "weird", "client_id": "n"}
        )
    async with mworld.app[SESSIONMAKER]() as db:
        alarm = (await db.execute(select(Alarm).where(Alarm.session_id == s1))).scalar_one()
    assert alarm.kind == "not_ok" and alarm.priority == "medium"


async def _http(world: World, path: str, token: str) -> tuple[int, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(world.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json()
