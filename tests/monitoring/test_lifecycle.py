"""The session clock on SQLite and PostgreSQL, at a compressed time scale."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitoring.bus import MemoryBus
from monitoring.clock import Clock
from monitoring.events import EventStore
from monitoring.lifecycle import TransitionError
from monitoring.service import Monitoring
from server import accounts
from server.db import for_writing, make_engine, make_sessionmaker, migrate
from server.models import Phase, Role
from server.models import Session as SessionRow

# 3600: one protocol hour per real second; dosing (10 min) lasts 1/6 s.
FAST = 3600.0


class Harness:
    """An event store, lifecycle and clock runner on one database, like one server process."""

    def __init__(self, url: str, scale: float) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.bus = MemoryBus()
        self.clock = Clock(scale)
        self.store = EventStore(make_sessionmaker(self.engine), self.bus, self.clock)
        self.m = Monitoring.build(self.store, self.clock)
        self.lifecycle = self.m.lifecycle
        self.runner = self.m.scheduler
        self.published: list[dict[str, Any]] = []
        self.bus.subscribe(self._seen)

    async def _seen(self, event: dict[str, Any]) -> None:
        self.published.append(event)

    async def start(self) -> None:
        await migrate(self.engine)
        await self.bus.start()
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.bus.stop()
        await self.engine.dispose()

    async def row(self, session_id: str) -> SessionRow:
        async with self.store.sessionmaker() as db:
            row = await db.get(SessionRow, session_id)
            assert row is not None
            return row

    async def wait_phase(self, session_id: str, phase: Phase, timeout: float = 15) -> SessionRow:
        async with asyncio.timeout(timeout):
            while (row := await self.row(session_id)).phase != phase.value:
                await asyncio.sleep(0.02)
        return row


async def ready_for_dosing(h: Harness, sid: str) -> None:
    """Admit and pass the pre-check: checklist complete, blood pressure fine."""
    from server.demo import demo_precheck

    await h.lifecycle.act(sid, "admit", actor="test")
    await h.m.vitals.submit_precheck(sid, demo_precheck("Pat"), actor="test")
    await h.m.vitals.record(sid, 120, 80, 70, actor="test", client_id=f"v-{sid}")


async def _new_session(h: Harness) -> tuple[str, str]:
    async with h.store.sessionmaker() as db, db.begin():
        await for_writing(db)
        clinic = await accounts.get_or_create_clinic(db, "C")
        clin = await accounts.create_user(
            db,
            clinic=clinic,
            username="doc",
            role=Role.CLINICIAN,
            display_name="Doc",
            password="long enough password",
        )
        pat = await accounts.create_user(
            db, clinic=clinic, username="pat", role=Role.PATIENT, display_name="Pat", password=None
        )
        ids = (clinic.id, clin.id, pat.id)
    created = await accounts.create_session(
        h.store,
        clinic_id=ids[0],
        patient_id=ids[2],
        clinician_id=ids[1],
        scheduled_start=h.clock.now(),
        actor="test",
    )
    return created["session_id"], f"user:{ids[1]}"


async def test_full_clock_at_compressed_scale(db_url: str) -> None:
    h = Harness(db_url, FAST)
    await h.start()
    try:
        sid, doc = await _new_session(h)
        with pytest.raises(TransitionError) as e:
            await h.lifecycle.act(sid, "start_dosing", actor=doc)
        assert e.value.code == "wrong_phase"
        await h.lifecycle.act(sid, "admit", actor=doc)
        with pytest.raises(TransitionError) as e:
            await h.lifecycle.act(sid, "start_dosing", actor=doc)
        assert e.value.code == "precheck_blocked"
        from server.demo import demo_precheck

        await h.m.vitals.submit_precheck(sid, demo_precheck("Pat"), actor=doc)
        await h.m.vitals.record(sid, 120, 80, 70, actor="pat", client_id="v1")
        state = await h.lifecycle.act(sid, "start_dosing", actor=doc)
        assert state["phase"] == "dosing" and state["phase_deadline"] is not None
        row = await h.wait_phase(sid, Phase.AWAITING_SIGNOFF)
        # Clinically true times: dissolved 10 min after the dose, active ends 60 min after
        # the dose, recovery 15 min later (all in protocol minutes).
        assert row.dosed_at and row.active_at and row.recovery_at and row.awaiting_signoff_at
        assert h.clock.protocol_minutes(row.dosed_at, row.active_at) == pytest.approx(10, abs=0.01)
        assert h.clock.protocol_minutes(row.dosed_at, row.recovery_at) == pytest.approx(
            60, abs=0.01
        )
        assert h.clock.protocol_minutes(row.recovery_at, row.awaiting_signoff_at) == pytest.approx(
            15, abs=0.01
        )
        assert row.phase_deadline is None  # a human must sign off
        state = await h.lifecycle.act(sid, "sign_off", actor=doc)
        assert state["phase"] == "completed"
        events = await h.store.since(sid, 0)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        transitions = [
            (e["data"]["from"], e["data"]["to"], e["actor"])
            for e in events
            if e["type"] == "phase_changed"
        ]
        assert transitions == [
            ("lobby", "pre_check", doc),
            ("pre_check", "dosing", doc),
            ("dosing", "active", "clock"),
            ("active", "recovery", "clock"),
            ("recovery", "awaiting_signoff", "clock"),
            ("awaiting_signoff", "completed", doc),
        ]
        # Every committed event was published, in order.
        assert [e["seq"] for e in h.published if e["session_id"] == sid] == [
            e["seq"] for e in events
        ]
        with pytest.raises(TransitionError):
            await h.lifecycle.end_early(sid, "too late", actor=doc)
    finally:
        await h.stop()


async def test_end_early_needs_a_reason_and_stops_the_clock(db_url: str) -> None:
    h = Harness(db_url, 60)
    await h.start()
    try:
        sid, doc = await _new_session(h)
        await ready_for_dosing(h, sid)
        await h.lifecycle.act(sid, "start_dosing", actor=doc)
        with pytest.raises(TransitionError) as e:
            await h.lifecycle.end_early(sid, "   ", actor=doc)
        assert e.value.code == "reason_required"
        state = await h.lifecycle.end_early(sid, "patient felt unwell", actor=doc)
        assert state["phase"] == "ended_early" and state["ended_reason"] == "patient felt unwell"
        row = await h.row(sid)
        assert row.phase_deadline is None and row.ended_at is not None
    finally:
        await h.stop()


async def test_restart_in_the_middle_of_a_phase_resumes_from_the_database(db_url: str) -> None:
    # Scale 600: dosing (10 protocol minutes) lasts one real second.
    first = Harness(db_url, 600)
    await first.start()
    sid, doc = await _new_session(first)
    await ready_for_dosing(first, sid)
    await first.lifecycle.act(sid, "start_dosing", actor=doc)
    deadline = (await first.row(sid)).phase_deadline
    await first.stop()  # the process is gone; nothing in memory survives

    await asyncio.sleep(0.3)
    second = Harness(db_url, 600)  # a new process: only the database remembers
    await second.start()
    try:
        row = await second.wait_phase(sid, Phase.ACTIVE)
        # It moved at the persisted deadline, not at restart time + a fresh 10 minutes.
        assert row.active_at == deadline
        assert row.phase_deadline == second.clock.after(row.dosed_at, 60)  # type: ignore[arg-type]
    finally:
        await second.stop()


async def test_overdue_deadlines_fire_in_order_after_a_long_outage(db_url: str) -> None:
    h = Harness(db_url, 3600)
    await migrate(h.engine)
    sid, doc = await _new_session(h)
    await ready_for_dosing(h, sid)
    await h.lifecycle.act(sid, "start_dosing", actor=doc)
    # The process was down for the whole session: no runner yet.
    await asyncio.sleep(1.5)
    await h.start()
    try:
        row = await h.wait_phase(sid, Phase.AWAITING_SIGNOFF)
        assert row.dosed_at < row.active_at < row.recovery_at < row.awaiting_signoff_at  # type: ignore[operator]
    finally:
        await h.stop()


async def test_two_processes_fire_each_deadline_once(db_url: str, tmp_path: Path) -> None:
    a = Harness(db_url, 3600)
    b = Harness(db_url, 3600)
    await a.start()
    await b.start()
    try:
        sids = []
        sid, doc = await _new_session(a)
        sids.append(sid)
        await ready_for_dosing(a, sid)
        await a.lifecycle.act(sid, "start_dosing", actor=doc)
        await a.wait_phase(sid, Phase.AWAITING_SIGNOFF)
        events = await a.store.since(sid, 0)
        types = [(e["type"], e["data"].get("to")) for e in events]
        assert types.count(("phase_changed", "active")) == 1
        assert types.count(("phase_changed", "recovery")) == 1
        assert types.count(("phase_changed", "awaiting_signoff")) == 1
    finally:
        await a.stop()
        await b.stop()


def test_clock_scale_arithmetic() -> None:
    clock = Clock(60)
    start = clock.now()
    assert clock.after(start, 60) - start == timedelta(minutes=1)
    assert clock.protocol_minutes(start, start + timedelta(seconds=30)) == pytest.approx(30)
    with pytest.raises(ValueError):
        Clock(0)
