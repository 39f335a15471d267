"""Alarms and their escalation on SQLite and PostgreSQL, at a compressed time scale.

Each test runs the monitoring services (and their scheduler) like a server process would, on
a real database. Timing is checked against the instants the alarms persisted (``triggered_at``,
``next_step_at``, the events' ``at``), never against the test's own wall clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import monitoring.protocol as protocol_module
from monitoring.alarms import AlarmError
from monitoring.protocol import Priority, Protocol
from server import accounts
from server.db import for_writing
from server.models import Alarm, CheckIn, Phase, Role
from server.models import Session as SessionRow
from tests.monitoring.test_lifecycle import Harness, ready_for_dosing

# 600: a 2-minute escalation step (the default for high priority) lasts 0.2 real seconds.
SCALE = 600.0
ALARM_EVENTS = (
    "alarm_triggered",
    "alarm_escalated",
    "alarm_acknowledged",
    "alarm_retriggered",
    "alarm_resolved",
    "alarm_condition_cleared",
)


# The codes the server raises from vital signs; every catalogue needs them.
REQUIRED_FLAGS = [
    {"code": c, "label": c, "priority": "medium"} for c in protocol_module.REQUIRED_FLAGS
]


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _step(h: Harness, minutes: float) -> timedelta:
    """The real duration of *minutes* protocol minutes on *h*'s clock."""
    start = h.clock.now()
    return h.clock.after(start, minutes) - start


async def _session(h: Harness, protocol: dict[str, Any] | None = None) -> tuple[str, str]:
    """A new session in the lobby of a new clinic (with *protocol*); returns (id, clinician)."""
    tag = uuid.uuid4().hex[:8]
    async with h.store.sessionmaker() as db, db.begin():
        await for_writing(db)
        clinic = await accounts.get_or_create_clinic(db, f"Clinic {tag}")
        if protocol is not None:
            clinic.protocol = Protocol.from_dict(protocol).as_dict()
        doc = await accounts.create_user(
            db,
            clinic=clinic,
            username=f"doc-{tag}",
            role=Role.CLINICIAN,
            display_name="Doc",
            password="long enough password",
        )
        pat = await accounts.create_user(
            db,
            clinic=clinic,
            username=f"pat-{tag}",
            role=Role.PATIENT,
            display_name="Pat",
            password=None,
        )
        ids = (clinic.id, doc.id, pat.id)
    created = await accounts.create_session(
        h.store,
        clinic_id=ids[0],
        patient_id=ids[2],
        clinician_id=ids[1],
        scheduled_start=h.clock.now(),
        actor="test",
    )
    return created["session_id"], f"user:{ids[1]}"


async def _raise(h: Harness, sid: str, code: str) -> dict[str, Any]:
    """The patient raises a flag; returns the alarm behind it (``{}`` for info flags)."""
    await h.m.flags.raise_flag(sid, code, None, actor="patient", client_id=uuid.uuid4().hex)
    async with h.store.sessionmaker() as db:
        alarm = (
            await db.execute(
                select(Alarm)
                .where(Alarm.session_id == sid, Alarm.dedup_key == f"flag:{code}")
                .order_by(Alarm.triggered_at.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    return {"alarm_id": alarm.id, "priority": alarm.priority} if alarm else {}


async def _alarm(h: Harness, alarm_id: str) -> Alarm:
    async with h.store.sessionmaker() as db:
        alarm = await db.get(Alarm, alarm_id)
        assert alarm is not None
        return alarm


async def _events(h: Harness, sid: str) -> list[dict[str, Any]]:
    events = await h.store.since(sid, 0)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


def _of(events: list[dict[str, Any]], alarm_id: str, *types: str) -> list[dict[str, Any]]:
    """The events of one alarm (of *types*, default all alarm events), in order."""
    wanted = types or ALARM_EVENTS
    return [e for e in events if e["type"] in wanted and e["data"].get("alarm_id") == alarm_id]


async def _until(
    h: Harness,
    sid: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 10,
) -> list[dict[str, Any]]:
    """Poll the session's events until *done* holds for them."""
    async with asyncio.timeout(timeout):
        while not done(events := await h.store.since(sid, 0)):
            await asyncio.sleep(0.02)
    return events


def _escalated(alarm_id: str, n: int) -> Callable[[list[dict[str, Any]]], bool]:
    """A condition: *alarm_id* has escalated at least *n* times."""
    return lambda events: len(_of(events, alarm_id, "alarm_escalated")) >= n


async def test_priority_comes_from_the_catalogue_and_low_never_pages(db_url: str) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        sid, _ = await _session(h)
        row = await h.row(sid)
        chest = await _raise(h, sid, "chest_pain")
        confusion = await _raise(h, sid, "confusion")
        nausea = await _raise(h, sid, "nausea")
        assert (chest["priority"], confusion["priority"], nausea["priority"]) == (
            "high",
            "medium",
            "low",
        )
        high = await _alarm(h, chest["alarm_id"])
        assert high.latched and high.status == "triggered" and high.level == 0
        assert high.policy == {
            "step_minutes": 2,
            "ack_minutes": 5,
            "levels": ["clinician", "oncall", "admin"],
        }
        medium = await _alarm(h, confusion["alarm_id"])
        assert not medium.latched and medium.policy is not None
        assert medium.policy["step_minutes"] == 5 and medium.policy["ack_minutes"] == 10
        low = await _alarm(h, nausea["alarm_id"])
        assert not low.latched and low.policy is None and low.next_step_at is None

        # Let the high alarm escalate twice: the scheduler has had every chance to page the
        # low one by then.
        events = await _until(h, sid, _escalated(chest["alarm_id"], 2))
        triggered = {e["data"]["alarm_id"]: e for e in events if e["type"] == "alarm_triggered"}
        assert triggered[chest["alarm_id"]]["data"]["paged"] == ["clinician"]
        assert triggered[confusion["alarm_id"]]["data"]["paged"] == ["clinician"]
        assert triggered[nausea["alarm_id"]]["data"]["paged"] == []
        assert triggered[nausea["alarm_id"]]["data"]["next_step_at"] is None
        assert _of(events, nausea["alarm_id"]) == [triggered[nausea["alarm_id"]]]
        low = await _alarm(h, nausea["alarm_id"])
        assert low.status == "triggered" and low.level == 0 and low.next_step_at is None
        # Shown, though: on the board, after the alarms that page.
        board = await h.m.alarms.open_alarms(row.clinic_id)
        assert [a["priority"] for a in board] == ["high", "medium", "low"]
        assert board[2]["alarm_id"] == nausea["alarm_id"] and board[2]["paging"] is None
        # Acknowledging a low alarm sets no re-trigger deadline either.
        acked = await h.m.alarms.acknowledge(nausea["alarm_id"], actor="test")
        assert acked["status"] == "acknowledged" and acked["next_step_at"] is None
    finally:
        await h.stop()


async def test_info_flag_is_only_logged(db_url: str) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        sid, _ = await _session(
            h,
            {
                "flags": [
                    {"code": "yawning", "label": "Yawning", "priority": "info"},
                    {"code": "chest_pain", "label": "Chest pain", "priority": "high"},
                    *REQUIRED_FLAGS,
                ]
            },
        )
        assert await _raise(h, sid, "yawning") == {}
        events = await _events(h, sid)
        assert [e["type"] for e in events] == ["session_created", "flag_raised", "info_logged"]
        assert events[1]["data"]["priority"] == "info"
        assert events[2]["data"]["kind"] == "flag"
        assert events[2]["data"]["detail"]["code"] == "yawning"
        async with h.store.sessionmaker() as db:
            count = (await db.execute(select(func.count()).where(Alarm.session_id == sid))).scalar()
        assert count == 0
        assert await h.m.alarms.open_alarms((await h.row(sid)).clinic_id) == []
    finally:
        await h.stop()


async def test_unacknowledged_alarm_escalates_level_by_level_then_repeats(db_url: str) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        sid, _ = await _session(h)
        alarm_id = (await _raise(h, sid, "chest_pain"))["alarm_id"]
        events = await _until(h, sid, _escalated(alarm_id, 4))
        step = _step(h, 2)  # the default high-priority step
        trig = _of(events, alarm_id, "alarm_triggered")[0]["data"]
        t0 = _at(trig["triggered_at"])
        assert trig["paged"] == ["clinician"] and trig["level"] == 0
        assert _at(trig["next_step_at"]) == t0 + step
        escalated = _of(events, alarm_id, "alarm_escalated")
        assert [
            (e["data"]["paged"], e["data"]["reason"], e["data"]["level"]) for e in escalated[:4]
        ] == [
            (["oncall"], "not_acknowledged", 1),
            (["admin"], "not_acknowledged", 2),
            (["admin"], "repeat", 2),
            (["admin"], "repeat", 2),
        ]
        due = t0 + step
        for e in escalated:
            # Each step fires no earlier than it was due, and the next is timed from that due
            # time on the policy's grid (t0 + k steps), never from whenever the scheduler
            # noticed. (A late scheduler at the top level skips to the newest slot.)
            assert _at(e["at"]) >= due
            nxt = _at(e["data"]["next_step_at"])
            slots = (nxt - t0) / step
            assert nxt > due and slots == round(slots)
            due = nxt
            assert e["actor"] == "escalation" and e["data"]["status"] == "triggered"
        # Nothing else happened to it.
        assert len(_of(events, alarm_id)) == 1 + len(escalated)
    finally:
        await h.stop()


async def test_acknowledged_alarm_retriggers_after_ack_timeout_until_resolved(db_url: str) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        # Steps of 2 protocol minutes (0.2 s), a re-trigger 3 minutes (0.3 s) after an ack.
        sid, doc = await _session(
            h,
            {
                "escalation": {
                    "high": {"step_minutes": 2, "ack_minutes": 3},
                    "medium": {"step_minutes": 5, "ack_minutes": 10},
                }
            },
        )
        alarm_id = (await _raise(h, sid, "chest_pain"))["alarm_id"]
        acked = await h.m.alarms.acknowledge(alarm_id, actor=doc)
        assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == doc
        assert acked["paging"] is None
        ack_deadline = _at(acked["next_step_at"])
        assert ack_deadline == _at(acked["acknowledged_at"]) + _step(h, 3)

        def retriggered_then_escalated(ev: list[dict[str, Any]]) -> bool:
            again = _of(ev, alarm_id, "alarm_retriggered")
            return bool(again) and any(
                e["seq"] > again[0]["seq"] for e in _of(ev, alarm_id, "alarm_escalated")
            )

        events = await _until(h, sid, retriggered_then_escalated)
        ack_ev = _of(events, alarm_id, "alarm_acknowledged")[0]
        re_ev = _of(events, alarm_id, "alarm_retriggered")[0]
        # While acknowledged nothing paged anybody.
        between = [e for e in _of(events, alarm_id) if ack_ev["seq"] < e["seq"] < re_ev["seq"]]
        assert between == []
        level = re_ev["data"]["level"]
        levels = ["clinician", "oncall", "admin"]
        assert re_ev["data"]["status"] == "triggered"
        assert re_ev["data"]["paged"] == [levels[level]]  # pages again, at the same level
        assert _at(re_ev["at"]) >= ack_deadline
        assert _at(re_ev["data"]["next_step_at"]) == ack_deadline + _step(h, 2)
        # Not acknowledged again: it goes on escalating from where it was.
        after = [e for e in _of(events, alarm_id, "alarm_escalated") if e["seq"] > re_ev["seq"]]
        assert after[0]["data"]["level"] == min(level + 1, 2)
        assert _at(after[0]["data"]["next_step_at"]) == ack_deadline + 2 * _step(h, 2)

        resolved = await h.m.alarms.resolve(alarm_id, actor=doc, note="ambulance called")
        assert resolved["status"] == "resolved" and resolved["next_step_at"] is None
        last_seq = (await h.row(sid)).last_seq
        # Several steps and ack timeouts later: nothing more.
        await asyncio.sleep(_step(h, 8).total_seconds())
        assert (await h.row(sid)).last_seq == last_seq
        final = await _alarm(h, alarm_id)
        assert final.status == "resolved" and final.next_step_at is None
        assert final.resolved_by == doc
        events = await _events(h, sid)
        assert events[-1]["type"] == "alarm_resolved"
        assert events[-1]["data"]["note"] == "ambulance called"
        with pytest.raises(AlarmError) as e:
            await h.m.alarms.acknowledge(alarm_id, actor=doc)
        assert e.value.code == "alarm_resolved"
        with pytest.raises(AlarmError) as e:
            await h.m.alarms.resolve(alarm_id, actor=doc)
        assert e.value.code == "alarm_resolved"
    finally:
        await h.stop()


async def test_high_priority_latches_when_its_condition_clears(db_url: str) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        sid, doc = await _session(h)
        clinic_id = (await h.row(sid)).clinic_id
        high = (await _raise(h, sid, "chest_pain"))["alarm_id"]
        medium = (await _raise(h, sid, "confusion"))["alarm_id"]
        async with h.store.transaction() as tx:
            await h.m.alarms.condition_cleared(
                tx, sid, "flag:chest_pain", reason="pain gone", actor=doc
            )
            await h.m.alarms.condition_cleared(
                tx, sid, "flag:confusion", reason="oriented again", actor=doc
            )
        events = await _events(h, sid)
        cleared = _of(events, high, "alarm_condition_cleared")
        assert len(cleared) == 1 and cleared[0]["data"]["reason"] == "pain gone"
        assert cleared[0]["data"]["status"] == "triggered"
        assert _of(events, high, "alarm_resolved") == []
        resolved = _of(events, medium, "alarm_resolved")
        assert len(resolved) == 1 and resolved[0]["data"]["note"] == "oriented again"
        assert resolved[0]["data"]["next_step_at"] is None

        latched = await _alarm(h, high)
        assert latched.status == "triggered" and latched.next_step_at is not None
        assert (await _alarm(h, medium)).status == "resolved"
        assert [a["alarm_id"] for a in await h.m.alarms.open_alarms(clinic_id)] == [high]

        # The same through the real path: a clinician clears the flag; the alarm stays, and it
        # keeps escalating until a person resolves it.
        flag_id = (await h.m.flags.open_flags(sid))[0]["flag_id"]
        await h.m.flags.clear_flag(sid, flag_id, "settled", actor=doc)
        events = await _until(h, sid, _escalated(high, 1))
        assert len(_of(events, high, "alarm_condition_cleared")) == 2
        assert (await _alarm(h, high)).status == "triggered"
        await h.m.alarms.resolve(high, actor=doc)
        assert await h.m.alarms.open_alarms(clinic_id) == []
    finally:
        await h.stop()


async def test_dedup_while_open_and_upgrade_to_higher_priority(db_url: str) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        sid, doc = await _session(h)
        clinic_id = (await h.row(sid)).clinic_id
        first = (await _raise(h, sid, "nausea"))["alarm_id"]
        assert (await _raise(h, sid, "nausea"))["alarm_id"] == first
        # Racing raises of the same code still make one alarm.
        await asyncio.gather(*(_raise(h, sid, "confusion") for _ in range(4)))
        async with h.store.sessionmaker() as db:
            keys = (
                (await db.execute(select(Alarm.dedup_key).where(Alarm.session_id == sid)))
                .scalars()
                .all()
            )
        assert sorted(keys) == ["flag:confusion", "flag:nausea"]
        events = await _events(h, sid)
        assert [e["type"] for e in events].count("flag_raised") == 6
        assert [e["type"] for e in events].count("alarm_triggered") == 2

        # The same dedup key at a higher priority upgrades the open alarm: it now pages.
        async with h.store.transaction() as tx:
            row = await tx.db.get(SessionRow, sid)
            assert row is not None
            upgraded = await h.m.alarms.raise_(
                tx,
                row,
                kind="flag",
                dedup_key="flag:nausea",
                priority=Priority.HIGH,
                detail={"code": "nausea"},
                actor=doc,
            )
            lower = await h.m.alarms.raise_(
                tx,
                row,
                kind="flag",
                dedup_key="flag:confusion",
                priority=Priority.LOW,
                detail={"code": "confusion"},
                actor=doc,
            )
        assert upgraded is not None and upgraded.id == first
        assert lower is not None and lower.priority == "medium"  # never downgraded
        events = await _until(h, sid, _escalated(first, 2))
        up, nxt = _of(events, first, "alarm_escalated")[:2]
        assert up["data"]["reason"] == "priority_raised" and up["data"]["priority"] == "high"
        assert up["data"]["latched"] and up["data"]["paged"] == ["clinician"]
        # Timed from the upgrade, by the high-priority policy (snapshotted into the alarm).
        upgraded_next = _at(up["data"]["next_step_at"])
        assert _at(up["data"]["triggered_at"]) + _step(h, 2) <= upgraded_next
        assert upgraded_next <= _at(up["at"]) + _step(h, 2)
        assert (await _alarm(h, first)).policy == {
            "step_minutes": 2,
            "ack_minutes": 5,
            "levels": ["clinician", "oncall", "admin"],
        }
        assert nxt["data"]["reason"] == "not_acknowledged" and nxt["data"]["paged"] == ["oncall"]
        assert _at(nxt["data"]["next_step_at"]) == _at(up["data"]["next_step_at"]) + _step(h, 2)
        board = await h.m.alarms.open_alarms(clinic_id)
        assert (board[0]["alarm_id"], board[0]["priority"]) == (first, "high")
        assert len(board) == 2
        # Once resolved, the same flag makes a new alarm.
        await h.m.alarms.resolve(first, actor=doc)
        again = await _raise(h, sid, "nausea")
        assert again["alarm_id"] != first and again["priority"] == "low"
    finally:
        await h.stop()


async def test_two_schedulers_fire_each_step_once(db_url: str) -> None:
    a = Harness(db_url, SCALE)
    b = Harness(db_url, SCALE)
    await a.start()
    await b.start()
    try:
        sids = [(await _session(a))[0] for _ in range(3)]
        # Raised through either process: both schedulers are woken by their own and poll for
        # the other's.
        alarms = {
            sid: (await _raise(a if n % 2 else b, sid, "chest_pain"))["alarm_id"]
            for n, sid in enumerate(sids)
        }
        for sid, alarm_id in alarms.items():
            await _until(a, sid, _escalated(alarm_id, 5))
    finally:
        await a.stop()
        await b.stop()
    step = _step(a, 2)
    published = [
        (e["session_id"], e["seq"])
        for e in a.published + b.published
        if e["type"] == "alarm_escalated"
    ]
    for sid, alarm_id in alarms.items():
        events = await a.store.since(sid, 0)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        t0 = _at(_of(events, alarm_id, "alarm_triggered")[0]["data"]["triggered_at"])
        escalated = _of(events, alarm_id, "alarm_escalated")
        per_level = [(e["data"]["paged"][0], e["data"]["reason"]) for e in escalated]
        assert per_level.count(("oncall", "not_acknowledged")) == 1
        assert per_level.count(("admin", "not_acknowledged")) == 1
        assert per_level[2:] == [("admin", "repeat")] * (len(per_level) - 2)
        # Each step once: step k is the only one timed t0 + (k + 1) steps.
        assert [_at(e["data"]["next_step_at"]) for e in escalated] == [
            t0 + (k + 1) * step for k in range(1, len(escalated) + 1)
        ]
        # Each step was published once, by the process that fired it (a stop may cancel each
        # process between its last commit and its publishing, hence the slack of two).
        mine = [seq for s, seq in published if s == sid]
        assert len(mine) == len(set(mine))
        assert set(mine) <= {e["seq"] for e in escalated}
        assert len(mine) >= len(escalated) - 2


async def test_ending_early_resolves_open_alarms_and_cancels_checkins(db_url: str) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        # Dissolved after 1 protocol minute (0.1 s); check-ins every 6 (0.6 s), missed only
        # after 30 (3 s), so no missed-check-in alarm joins the three raised here.
        sid, doc = await _session(
            h,
            {
                "dosing_minutes": 1,
                "checkin_every_minutes": 6,
                "checkin_grace_minutes": 30,
                "vitals_at_minutes": [7],
            },
        )
        await ready_for_dosing(h, sid)
        await h.lifecycle.act(sid, "start_dosing", actor=doc)
        await h.wait_phase(sid, Phase.ACTIVE)
        await h.m.checkins.request(sid, actor=doc)
        ids = [
            (await _raise(h, sid, code))["alarm_id"]
            for code in ("chest_pain", "confusion", "nausea")
        ]
        await h.m.alarms.acknowledge(ids[1], actor=doc)
        async with h.store.sessionmaker() as db:
            waiting = (
                await db.execute(
                    select(func.count()).where(
                        CheckIn.session_id == sid, CheckIn.status.in_(("pending", "open"))
                    )
                )
            ).scalar()
        assert waiting and waiting > 1

        state = await h.lifecycle.end_early(sid, "patient asked to stop", actor=doc)
        assert state["phase"] == "ended_early"
        events = await _events(h, sid)
        end = next(
            e for e in events if e["type"] == "phase_changed" and e["data"]["to"] == "ended_early"
        )
        # Closed in the same transaction, right after the phase change.
        closed = [e for e in events if e["seq"] > end["seq"]]
        assert sorted(e["data"]["alarm_id"] for e in closed) == sorted(ids)
        assert {e["type"] for e in closed} == {"alarm_resolved"}
        assert {e["data"]["note"] for e in closed} == {"session ended_early"}
        assert {e["actor"] for e in closed} == {"system"}
        for alarm_id in ids:
            alarm = await _alarm(h, alarm_id)
            assert alarm.status == "resolved" and alarm.next_step_at is None
        assert await h.m.alarms.open_alarms((await h.row(sid)).clinic_id) == []
        async with h.store.sessionmaker() as db:
            statuses = (
                (await db.execute(select(CheckIn.status).where(CheckIn.session_id == sid)))
                .scalars()
                .all()
            )
        assert statuses and set(statuses) <= {"cancelled", "answered", "missed"}
        assert statuses.count("cancelled") >= waiting

        # Well past the next check-in, escalation step and ack timeout: nothing fires.
        last_seq = (await h.row(sid)).last_seq
        await asyncio.sleep(_step(h, 12).total_seconds())
        assert (await h.row(sid)).last_seq == last_seq
    finally:
        await h.stop()


async def test_after_an_outage_the_top_level_is_paged_once_not_once_per_missed_step(
    db_url: str,
) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        sid, _ = await _session(h)
        alarm_id = (await _raise(h, sid, "chest_pain"))["alarm_id"]
        await h.runner.stop()  # the process is down ...
        await asyncio.sleep(12 * _step(h, 2).total_seconds())  # ... for twelve steps
        h.runner.start()
        events = await _until(h, sid, _escalated(alarm_id, 3))
        await asyncio.sleep(0.05)
        events = await h.store.since(sid, 0)
        escalated = _of(events, alarm_id, "alarm_escalated")
        # Each level once (the escalation is overdue, so it runs through at once) ...
        assert [e["data"]["paged"] for e in escalated[:2]] == [["oncall"], ["admin"]]
        # ... then one page for the newest missed slot, not ten for the ten missed.
        repeats_at_restart = [
            e for e in escalated[2:] if _at(e["at"]) - _at(escalated[1]["at"]) < _step(h, 1)
        ]
        assert len(repeats_at_restart) == 1
        step = _step(h, 2)
        t0 = _at(_of(events, alarm_id, "alarm_triggered")[0]["data"]["triggered_at"])
        slots = (_at(escalated[2]["data"]["next_step_at"]) - t0) / step
        assert slots == round(slots) and slots >= 12
    finally:
        await h.stop()


async def test_a_flag_raised_again_while_acknowledged_pages_again(db_url: str) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        sid, _ = await _session(h)
        alarm_id = (await _raise(h, sid, "confusion"))["alarm_id"]
        await h.m.alarms.acknowledge(alarm_id, actor="user:1")
        assert (await _raise(h, sid, "confusion"))["alarm_id"] == alarm_id
        events = await h.store.since(sid, 0)
        retriggered = _of(events, alarm_id, "alarm_retriggered")
        assert [e["data"]["reason"] for e in retriggered] == ["raised_again"]
        alarm = await _alarm(h, alarm_id)
        assert alarm.status == "triggered" and alarm.acknowledged_by is None
    finally:
        await h.stop()


async def test_the_emergency_button_pressed_again_after_an_ack_pages_everyone_again(
    db_url: str,
) -> None:
    h = Harness(db_url, SCALE)
    await h.start()
    try:
        sid, doc = await _session(h)
        first, _ = await h.m.emergencies.press(sid, "fell", actor="patient", client_id="e1")
        events = await h.store.since(sid, 0)
        alarm = _of(events, _alarm_id_of(events, "emergency"), "alarm_triggered")[0]["data"]
        assert alarm["paged"] == ["clinician", "oncall", "admin"] and alarm["latched"]
        await h.m.alarms.acknowledge(alarm["alarm_id"], actor=doc)
        await h.m.emergencies.press(sid, "not breathing well", actor="sitter", client_id="e2")
        events = await h.store.since(sid, 0)
        again = _of(events, alarm["alarm_id"], "alarm_retriggered")
        assert [e["data"]["paged"] for e in again] == [["clinician", "oncall", "admin"]]
        assert again[0]["data"]["detail"]["note"] == "not breathing well"
        assert first["type"] == "emergency"
    finally:
        await h.stop()


def _alarm_id_of(events: list[dict[str, Any]], kind: str) -> str:
    return next(
        e["data"]["alarm_id"]
        for e in events
        if e["type"] == "alarm_triggered" and e["data"]["kind"] == kind
    )
