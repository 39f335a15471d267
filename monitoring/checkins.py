"""Check-ins: the patient (or the sitter) says "I'm OK" or reports flags.

When the active phase starts, the session's check-ins are scheduled from the dose: every
``checkin_every_minutes`` until recovery ends, plus a vitals prompt at each of
``vitals_at_minutes``; another vitals prompt opens at discharge (awaiting sign-off). A clinician can ask for one at any time. A check-in is *pending* until
due, then *open* (``checkin_due``: the patient is asked), then *answered*; still open after
``checkin_grace_minutes`` it is *missed* (``checkin_missed``) and a missed-check-in alarm
triggers — a dead-man's switch. A late answer clears the alarm's condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from monitoring.alarms import Alarms
from monitoring.clock import Clock
from monitoring.events import EventStore, Transaction, run_command
from monitoring.flags import FlagError, Flags, live_session
from monitoring.protocol import Priority, Protocol
from monitoring.scheduler import Wake
from server.models import CheckIn, Event, Phase
from server.models import Session as SessionRow

MAX_FLAGS_PER_ANSWER = 10


def checkin_dict(c: CheckIn) -> dict[str, Any]:
    """The wire form of a check-in."""
    return {
        "checkin_id": c.id,
        "kind": c.kind,
        "status": c.status,
        "due_at": c.due_at.isoformat(),
        "grace_until": c.grace_until.isoformat(),
        "answered_at": c.answered_at.isoformat() if c.answered_at else None,
        "answered_by": c.answered_by,
    }


@dataclass
class CheckIns:
    """Schedules, opens, misses and records check-ins; a scheduler stepper."""

    store: EventStore
    clock: Clock
    alarms: Alarms
    flags: Flags
    wake: Wake | None = None

    def _new(self, row: SessionRow, kind: str, due: datetime, proto: Protocol) -> CheckIn:
        return CheckIn(
            session_id=row.id,
            kind=kind,
            due_at=due,
            grace_until=self.clock.after(due, proto.checkin_grace_minutes),
            status="pending",
        )

    async def on_phase(self, tx: Transaction, row: SessionRow, phase: Phase) -> None:
        """Lifecycle hook: schedule when the active phase starts, cancel when the session ends."""
        if phase is Phase.ACTIVE and row.dosed_at is not None:
            proto = Protocol.from_dict(row.protocol)
            end = proto.active_minutes_from_dose + proto.recovery_minutes
            minutes = proto.checkin_every_minutes
            while minutes < end:
                tx.db.add(
                    self._new(row, "scheduled", self.clock.after(row.dosed_at, minutes), proto)
                )
                minutes += proto.checkin_every_minutes
            for at in proto.vitals_at_minutes:
                tx.db.add(self._new(row, "vitals", self.clock.after(row.dosed_at, at), proto))
            await tx.db.flush()
            if self.wake is not None:
                self.wake.set()
        elif phase is Phase.AWAITING_SIGNOFF:
            # Blood pressure at discharge (CLINICAL.md: before, at +40 min, at discharge).
            proto = Protocol.from_dict(row.protocol)
            now = self.clock.now()
            prompt = self._new(row, "vitals", now, proto)
            prompt.status = "open"
            tx.db.add(prompt)
            await tx.db.flush()
            await tx.append(row.id, "checkin_due", checkin_dict(prompt), actor="clock")
            if self.wake is not None:
                self.wake.set()
        elif phase.terminal:
            pending = (
                await tx.db.execute(
                    select(CheckIn).where(
                        CheckIn.session_id == row.id, CheckIn.status.in_(("pending", "open"))
                    )
                )
            ).scalars()
            for c in pending:
                c.status = "cancelled"

    async def request(self, session_id: str, *, actor: str) -> dict[str, Any]:
        """A clinician asks for a check-in now."""
        async with self.store.transaction() as tx:
            row = await live_session(tx, session_id)
            if Phase(row.phase) in (Phase.LOBBY, Phase.AWAITING_SIGNOFF):
                raise FlagError("wrong_phase", f"no check-ins in phase {row.phase}")
            proto = Protocol.from_dict(row.protocol)
            c = self._new(row, "on_demand", self.clock.now(), proto)
            c.status = "open"
            tx.db.add(c)
            await tx.db.flush()
            await tx.append(session_id, "checkin_due", checkin_dict(c), actor=actor)
            if self.wake is not None:
                self.wake.set()
            return checkin_dict(c)

    async def answer(
        self,
        session_id: str,
        *,
        ok: bool,
        flags: list[str],
        note: str | None,
        actor: str,
        client_id: str | None,
    ) -> tuple[dict[str, Any], bool]:
        """The patient or sitter answers: the newest open (or missed) check-in, else unprompted.

        ``ok=False`` or any flags raise those flags in the same transaction.
        """
        if len(flags) > MAX_FLAGS_PER_ANSWER or not all(isinstance(f, str) for f in flags):
            raise FlagError(
                "bad_request", f"flags is a list of at most {MAX_FLAGS_PER_ANSWER} codes"
            )

        async def body(tx: Transaction) -> Event:
            row = await live_session(tx, session_id)
            proto = Protocol.from_dict(row.protocol)
            unknown = [f for f in flags if proto.flag(f) is None]
            if unknown:
                raise FlagError("unknown_flag", f"this clinic has no flag {unknown[0][:50]!r}")
            target = (
                await tx.db.execute(
                    select(CheckIn)
                    .where(
                        CheckIn.session_id == session_id,
                        CheckIn.kind != "vitals",
                        CheckIn.status.in_(("open", "missed")),
                    )
                    # The newest prompt is the one the patient sees and answers.
                    .order_by(CheckIn.due_at.desc())
                    .limit(1)
                    .with_for_update()
                )
            ).scalar_one_or_none()
            now = self.clock.now()
            was_missed = target is not None and target.status == "missed"
            if target is not None:
                target.status = "answered"
                target.answered_at = now
                target.answered_by = actor
                target.answer = {"ok": ok, "flags": flags, "note": note}
            event = await tx.append(
                session_id,
                "checkin_answered",
                {
                    "checkin_id": target.id if target else None,
                    "kind": target.kind if target else "unprompted",
                    "ok": ok and not flags,
                    "flags": flags,
                    "note": note,
                    "late": was_missed,
                },
                actor=actor,
                client_id=client_id,
            )
            if target is not None and was_missed:
                await self.alarms.condition_cleared(
                    tx,
                    session_id,
                    f"missed_checkin:{target.id}",
                    reason="answered late",
                    actor=actor,
                )
            for code in flags:
                await self.flags.raise_in(tx, row, code, note, actor=actor)
            if not ok and not flags:
                # "Not OK" with nothing more said still needs a person to look, promptly.
                await self.alarms.raise_(
                    tx,
                    row,
                    kind="not_ok",
                    dedup_key="not_ok",
                    priority=Priority.MEDIUM,
                    detail={"note": note, "checkin_id": target.id if target else None},
                    actor=actor,
                )
            return event

        return await run_command(self.store, session_id, client_id, body)

    async def advance_due(self) -> int:
        """Open check-ins that fell due; mark missed those past their grace period.

        Each check-in is handled in its own transaction that locks the session row first
        (the lock order of :meth:`Transaction.lock_session`), then re-reads the check-in: a
        second process waiting on the same session finds it already handled.
        """
        now = self.clock.now()
        due_where = ((CheckIn.status == "pending") & (CheckIn.due_at <= now)) | (
            (CheckIn.status == "open") & (CheckIn.grace_until <= now)
        )
        async with self.store.sessionmaker() as db:
            due = (
                await db.execute(
                    select(CheckIn.id, CheckIn.session_id)
                    .where(due_where)
                    .order_by(CheckIn.due_at)
                    .limit(100)
                )
            ).all()
        fired = 0
        for checkin_id, session_id in due:
            async with self.store.transaction() as tx:
                row = await tx.lock_session(session_id)
                c = (
                    await tx.db.execute(
                        select(CheckIn).where(CheckIn.id == checkin_id, due_where).with_for_update()
                    )
                ).scalar_one_or_none()
                if c is None:
                    continue  # handled meanwhile by another process
                fired += await self._step(tx, c, row, now)
        return fired

    async def _step(
        self, tx: Transaction, c: CheckIn, row: SessionRow | None, now: datetime
    ) -> int:
        if row is None or Phase(row.phase).terminal:
            c.status = "cancelled"
            return 0
        if c.status == "pending":
            c.status = "open"
            await tx.append(c.session_id, "checkin_due", checkin_dict(c), actor="clock")
            # It may be missed in the same pass if the process was down past its grace.
            if c.grace_until > now:
                return 1
        c.status = "missed"
        await tx.append(c.session_id, "checkin_missed", checkin_dict(c), actor="clock")
        proto = Protocol.from_dict(row.protocol)
        await self.alarms.raise_(
            tx,
            row,
            kind="missed_checkin",
            dedup_key=f"missed_checkin:{c.id}",
            priority=proto.missed_checkin_priority,
            detail={"checkin_id": c.id, "checkin_kind": c.kind, "due_at": c.due_at.isoformat()},
            actor="clock",
        )
        return 1

    async def next_deadline(self) -> datetime | None:
        """The next check-in to open or to miss."""
        async with self.store.sessionmaker() as db:
            pending = (
                await db.execute(
                    select(func.min(CheckIn.due_at)).where(CheckIn.status == "pending")
                )
            ).scalar()
            open_ = (
                await db.execute(
                    select(func.min(CheckIn.grace_until)).where(CheckIn.status == "open")
                )
            ).scalar()
        candidates = [d for d in (pending, open_) if d is not None]
        return min(candidates) if candidates else None

    async def last_answer(self, session_id: str) -> dict[str, Any] | None:
        """The most recent answered check-in (for the roster)."""
        async with self.store.sessionmaker() as db:
            c = (
                await db.execute(
                    select(CheckIn)
                    .where(CheckIn.session_id == session_id, CheckIn.status == "answered")
                    .order_by(CheckIn.answered_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        return checkin_dict(c) if c else None
