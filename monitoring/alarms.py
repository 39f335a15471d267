"""Alarms and their escalation (DESIGN invariant 5: alarms latch).

An alarm is *triggered* → *acknowledged* → *resolved*. While triggered it pages one level after
another of its escalation policy (assigned clinician → on-call → medical director), waiting
the policy's ``step_minutes`` at each; at the last level it pages that level again every step
until someone acknowledges. An acknowledgement stops the paging; if nobody resolves the alarm
within ``ack_minutes`` it triggers again. High-priority alarms latch: only a person resolves
them, even when their condition goes away. Low priority is shown but never pages; info is only
logged.

The escalation policy is *snapshotted* into the alarm when it triggers, so editing a clinic's
protocol never changes an alarm already running. ``next_step_at`` is the alarm's only
deadline; the scheduler fires it, and with several processes ``FOR UPDATE SKIP LOCKED`` makes
exactly one of them fire each step.

Every change is an event on the session's stream (``alarm_triggered``, ``alarm_escalated``,
``alarm_acknowledged``, ``alarm_retriggered``, ``alarm_resolved``, ``alarm_condition_cleared``)
and reaches the clinic's on-call board.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from monitoring.clock import Clock
from monitoring.events import EventStore, Transaction
from monitoring.protocol import Escalation, Level, Priority, Protocol
from monitoring.scheduler import Wake
from server.models import Alarm
from server.models import Session as SessionRow

log = logging.getLogger(__name__)

OPEN = ("triggered", "acknowledged")


class AlarmError(Exception):
    """A refused alarm operation (unknown alarm, already resolved…)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def alarm_dict(alarm: Alarm) -> dict[str, Any]:
    """The wire form of an alarm (board, roster, events)."""
    levels = (alarm.policy or {}).get("levels", [])
    return {
        "alarm_id": alarm.id,
        "session_id": alarm.session_id,
        "clinic_id": alarm.clinic_id,
        "kind": alarm.kind,
        "priority": alarm.priority,
        "status": alarm.status,
        "level": alarm.level,
        "paging": levels[alarm.level] if alarm.status == "triggered" and levels else None,
        "latched": alarm.latched,
        "dedup_key": alarm.dedup_key,
        "detail": alarm.detail,
        "triggered_at": alarm.triggered_at.isoformat(),
        "acknowledged_at": alarm.acknowledged_at.isoformat() if alarm.acknowledged_at else None,
        "acknowledged_by": alarm.acknowledged_by,
        "resolved_at": alarm.resolved_at.isoformat() if alarm.resolved_at else None,
        "resolved_by": alarm.resolved_by,
        "next_step_at": alarm.next_step_at.isoformat() if alarm.next_step_at else None,
    }


def _policy(escalation: Escalation | None) -> dict[str, Any] | None:
    if escalation is None:
        return None
    return {
        "step_minutes": escalation.step_minutes,
        "ack_minutes": escalation.ack_minutes,
        "levels": [lv.value for lv in escalation.levels],
    }


@dataclass
class Alarms:
    """Raises, acknowledges, resolves and escalates alarms; a scheduler stepper."""

    store: EventStore
    clock: Clock
    wake: Wake | None = None

    async def _open(self, tx: Transaction, session_id: str, dedup_key: str) -> Alarm | None:
        return (
            await tx.db.execute(
                select(Alarm)
                .where(
                    Alarm.session_id == session_id,
                    Alarm.dedup_key == dedup_key,
                    Alarm.status.in_(OPEN),
                )
                .with_for_update()
            )
        ).scalar_one_or_none()

    async def raise_(
        self,
        tx: Transaction,
        session: SessionRow,
        *,
        kind: str,
        dedup_key: str,
        priority: Priority,
        detail: dict[str, Any],
        actor: str,
        page_all: bool = False,
    ) -> Alarm | None:
        """Trigger an alarm inside the caller's transaction (with the fact that caused it).

        While an alarm with the same *dedup_key* is open on the session, a new one is not
        made: the open one is returned (its priority raised if this one is higher). Info
        priority only logs an event. *page_all* (the emergency button) pages every level at
        once instead of one after another.
        """
        now = self.clock.now()
        await tx.lock_session(session.id)  # lock order: the session before its alarms
        if priority is Priority.INFO:
            await tx.append(
                session.id, "info_logged", {"kind": kind, "detail": detail}, actor=actor
            )
            return None
        existing = await self._open(tx, session.id, dedup_key)
        if existing is not None:
            if Priority(priority).rank < Priority(existing.priority).rank:
                await self._upgrade(tx, existing, priority, session, now, actor)
            elif existing.status == "acknowledged" and existing.policy:
                # Reported again while someone was on it: page again (everyone, for the
                # emergency button), and keep what the new report said.
                self._retrigger(existing)
                levels = existing.policy["levels"]
                if page_all:
                    existing.level = len(levels) - 1
                existing.detail = {**(existing.detail or {}), **detail}
                existing.next_step_at = self.clock.after(now, existing.policy["step_minutes"])
                paged = levels if page_all else [levels[existing.level]]
                await tx.append(
                    session.id,
                    "alarm_retriggered",
                    {**alarm_dict(existing), "reason": "raised_again", "paged": paged},
                    actor=actor,
                )
                self._nudge(existing)
            return existing
        escalation = Protocol.from_dict(session.protocol).escalation_for(priority)
        levels = list(escalation.levels) if escalation else []
        alarm = Alarm(
            session_id=session.id,
            clinic_id=session.clinic_id,
            kind=kind,
            dedup_key=dedup_key,
            priority=priority.value,
            status="triggered",
            level=len(levels) - 1 if (page_all and levels) else 0,
            latched=priority is Priority.HIGH,
            policy=_policy(escalation),
            detail=detail,
            triggered_at=now,
            next_step_at=self.clock.after(now, escalation.step_minutes) if escalation else None,
        )
        tx.db.add(alarm)
        await tx.db.flush()
        paged = (levels if page_all else levels[:1]) if levels else []
        await tx.append(
            session.id,
            "alarm_triggered",
            {**alarm_dict(alarm), "paged": [lv.value for lv in paged]},
            actor=actor,
        )
        self._nudge(alarm)
        return alarm

    async def _upgrade(
        self,
        tx: Transaction,
        alarm: Alarm,
        priority: Priority,
        session: SessionRow,
        now: datetime,
        actor: str,
    ) -> None:
        escalation = Protocol.from_dict(session.protocol).escalation_for(priority)
        alarm.priority = priority.value
        alarm.policy = _policy(escalation)
        alarm.latched = alarm.latched or priority is Priority.HIGH
        self._retrigger(alarm)
        alarm.next_step_at = self.clock.after(now, escalation.step_minutes) if escalation else None
        levels = alarm.policy["levels"] if alarm.policy else []
        alarm.level = min(alarm.level, max(len(levels) - 1, 0))
        await tx.append(
            alarm.session_id,
            "alarm_escalated",
            {
                **alarm_dict(alarm),
                "reason": "priority_raised",
                "paged": levels[alarm.level : alarm.level + 1],
            },
            actor=actor,
        )
        self._nudge(alarm)

    @staticmethod
    def _retrigger(alarm: Alarm) -> None:
        # The acknowledgement no longer holds; its history stays in the event stream.
        alarm.status = "triggered"
        alarm.acknowledged_at = None
        alarm.acknowledged_by = None

    def _nudge(self, alarm: Alarm) -> None:
        if alarm.next_step_at is not None and self.wake is not None:
            self.wake.set(alarm.next_step_at)

    async def _locked(self, tx: Transaction, alarm_id: str) -> Alarm:
        session_id = (
            await tx.db.execute(select(Alarm.session_id).where(Alarm.id == alarm_id))
        ).scalar_one_or_none()
        if session_id is None:
            raise AlarmError("unknown_alarm", "no such alarm")
        await tx.lock_session(session_id)  # lock order: the session before its alarms
        alarm = (
            await tx.db.execute(select(Alarm).where(Alarm.id == alarm_id).with_for_update())
        ).scalar_one()
        return alarm

    async def session_of(self, alarm_id: str) -> str:
        """The session an alarm belongs to (for authorisation before acting on it)."""
        async with self.store.sessionmaker() as db:
            alarm = await db.get(Alarm, alarm_id)
        if alarm is None:
            raise AlarmError("unknown_alarm", "no such alarm")
        return alarm.session_id

    async def acknowledge(self, alarm_id: str, *, actor: str) -> dict[str, Any]:
        """Stop the paging; the alarm triggers again if not resolved within ``ack_minutes``."""
        async with self.store.transaction() as tx:
            alarm = await self._locked(tx, alarm_id)
            if alarm.status == "resolved":
                raise AlarmError("alarm_resolved", "the alarm is already resolved")
            now = self.clock.now()
            alarm.status = "acknowledged"
            alarm.acknowledged_at = now
            alarm.acknowledged_by = actor
            ack_minutes = (alarm.policy or {}).get("ack_minutes")
            alarm.next_step_at = self.clock.after(now, ack_minutes) if ack_minutes else None
            await tx.append(alarm.session_id, "alarm_acknowledged", alarm_dict(alarm), actor=actor)
            self._nudge(alarm)
            return alarm_dict(alarm)

    async def resolve(
        self, alarm_id: str, *, actor: str, note: str | None = None
    ) -> dict[str, Any]:
        """A person resolves the alarm: it is over."""
        async with self.store.transaction() as tx:
            alarm = await self._locked(tx, alarm_id)
            if alarm.status == "resolved":
                raise AlarmError("alarm_resolved", "the alarm is already resolved")
            self._close(alarm, actor)
            await tx.append(
                alarm.session_id, "alarm_resolved", {**alarm_dict(alarm), "note": note}, actor=actor
            )
            return alarm_dict(alarm)

    def _close(self, alarm: Alarm, actor: str) -> None:
        alarm.status = "resolved"
        alarm.resolved_at = self.clock.now()
        alarm.resolved_by = actor
        alarm.next_step_at = None

    async def condition_cleared(
        self, tx: Transaction, session_id: str, dedup_key: str, *, reason: str, actor: str
    ) -> None:
        """The condition behind an open alarm went away (video is back, the patient answered).

        A latched alarm stays until a person resolves it; the clearing is still recorded so
        whoever resolves it knows. Anything else resolves itself.
        """
        await tx.lock_session(session_id)
        alarm = await self._open(tx, session_id, dedup_key)
        if alarm is None:
            return
        if alarm.latched:
            await tx.append(
                session_id,
                "alarm_condition_cleared",
                {**alarm_dict(alarm), "reason": reason},
                actor=actor,
            )
            return
        self._close(alarm, actor)
        await tx.append(
            session_id, "alarm_resolved", {**alarm_dict(alarm), "note": reason}, actor=actor
        )

    async def resolve_all(
        self, tx: Transaction, session_id: str, *, reason: str, actor: str
    ) -> None:
        """Close every open alarm of a session that has ended (nobody can act on it any more)."""
        await tx.lock_session(session_id)
        alarms = (
            await tx.db.execute(
                select(Alarm)
                .where(Alarm.session_id == session_id, Alarm.status.in_(OPEN))
                .with_for_update()
            )
        ).scalars()
        for alarm in alarms:
            self._close(alarm, actor)
            await tx.append(
                session_id, "alarm_resolved", {**alarm_dict(alarm), "note": reason}, actor=actor
            )

    async def advance_due(self) -> int:
        """Escalate unacknowledged alarms and re-trigger stale acknowledgements.

        Each alarm is stepped in its own transaction that locks the session row first (the
        lock order of :meth:`Transaction.lock_session`), then re-reads the alarm: a second
        process that waited on the same session finds the step already taken.
        """
        now = self.clock.now()
        due_where = (Alarm.next_step_at.is_not(None)) & (Alarm.next_step_at <= now)
        async with self.store.sessionmaker() as db:
            due_ids = (
                await db.execute(
                    select(Alarm.id, Alarm.session_id)
                    .where(due_where)
                    .order_by(Alarm.next_step_at)
                    .limit(100)
                )
            ).all()
        fired = 0
        for alarm_id, session_id in due_ids:
            async with self.store.transaction() as tx:
                await tx.lock_session(session_id)
                alarm = (
                    await tx.db.execute(
                        select(Alarm).where(Alarm.id == alarm_id, due_where).with_for_update()
                    )
                ).scalar_one_or_none()
                if alarm is None:
                    continue  # stepped meanwhile by another process
                policy = alarm.policy or {}
                levels: list[str] = policy.get("levels", [])
                step = policy.get("step_minutes")
                if not levels or step is None or alarm.status not in OPEN:
                    alarm.next_step_at = None
                    continue
                # Steps are timed from when they were due, not from when a (restarted)
                # process noticed, so a backlog replays on the policy's own rhythm.
                at = alarm.next_step_at or now
                if alarm.status == "acknowledged":
                    self._retrigger(alarm)
                    alarm.next_step_at = self.clock.after(at, step)
                    await tx.append(
                        alarm.session_id,
                        "alarm_retriggered",
                        {
                            **alarm_dict(alarm),
                            "reason": "ack_timeout",
                            "paged": [levels[alarm.level]],
                        },
                        actor="escalation",
                    )
                else:
                    repeat = alarm.level >= len(levels) - 1
                    if repeat:
                        # Already paging the top level: after an outage, page it once for
                        # the newest missed slot, not once per slot missed.
                        while self.clock.after(at, step) <= now:
                            at = self.clock.after(at, step)
                    alarm.level = min(alarm.level + 1, len(levels) - 1)
                    alarm.next_step_at = self.clock.after(at, step)
                    await tx.append(
                        alarm.session_id,
                        "alarm_escalated",
                        {
                            **alarm_dict(alarm),
                            "reason": "repeat" if repeat else "not_acknowledged",
                            "paged": [levels[alarm.level]],
                        },
                        actor="escalation",
                    )
                fired += 1
        return fired

    async def next_deadline(self) -> datetime | None:
        """The earliest pending escalation or re-trigger."""
        async with self.store.sessionmaker() as db:
            return (await db.execute(select(func.min(Alarm.next_step_at)))).scalar()

    async def open_alarms(
        self, clinic_id: int, session_ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Open alarms of a clinic (optionally of some sessions): priority, then oldest first."""
        query = select(Alarm).where(Alarm.clinic_id == clinic_id, Alarm.status.in_(OPEN))
        if session_ids is not None:
            query = query.where(Alarm.session_id.in_(session_ids))
        async with self.store.sessionmaker() as db:
            alarms = (await db.execute(query)).scalars().all()
        alarms = sorted(alarms, key=lambda a: (Priority(a.priority).rank, a.triggered_at))
        return [alarm_dict(a) for a in alarms]


def level_of(alarm: dict[str, Any]) -> Level | None:
    """Who the alarm currently pages, if anyone."""
    return Level(alarm["paging"]) if alarm.get("paging") else None
