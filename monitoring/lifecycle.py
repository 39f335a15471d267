"""The session clock: phases, who or what moves them, and the persisted deadlines.

lobby → pre_check (clinician admits) → dosing (clinician starts dosing; the tablet dissolves)
→ active (clock: dissolved; lasts until 60 min after the dose) → recovery (clock: hour over)
→ awaiting_signoff (clock: recovery over) → completed (clinician signs off); ended_early with
a reason from any non-terminal phase. Every transition is one ``phase_changed`` event written
in the same transaction as the new phase. ``phase_deadline`` is when the clock itself moves the
session on; :class:`monitoring.scheduler.Scheduler` fires due deadlines, on startup too, so a
restarted process resumes every session where it was.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from monitoring.clock import Clock
from monitoring.events import EventStore, Transaction
from monitoring.protocol import Protocol
from monitoring.scheduler import Wake
from monitoring.vitals import dosing_blockers, latest_precheck_vitals
from server.models import Alarm, Flag, Phase
from server.models import Session as SessionRow

# Called in the transaction that enters a phase (check-ins are scheduled, alarms closed…).
PhaseHook = Callable[[Transaction, SessionRow, Phase], Awaitable[None]]

log = logging.getLogger(__name__)

MAX_END_REASON_CHARS = 500

# Human actions: name → (phase it requires, phase it leads to).
ACTIONS: dict[str, tuple[Phase, Phase]] = {
    "admit": (Phase.LOBBY, Phase.PRE_CHECK),
    "start_dosing": (Phase.PRE_CHECK, Phase.DOSING),
    "sign_off": (Phase.AWAITING_SIGNOFF, Phase.COMPLETED),
}
# Ending early is an action too, one that needs a reason.
END_ACTION = "end"
# What the clock does when a phase's deadline passes, and why (the event's reason).
CLOCK_STEPS: dict[Phase, tuple[Phase, str]] = {
    Phase.DOSING: (Phase.ACTIVE, "dissolved"),
    Phase.ACTIVE: (Phase.RECOVERY, "hour_over"),
    Phase.RECOVERY: (Phase.AWAITING_SIGNOFF, "recovery_over"),
}
# Column stamped when a phase is entered (the session record's times).
ENTERED_AT: dict[Phase, str] = {
    Phase.PRE_CHECK: "admitted_at",
    Phase.DOSING: "dosed_at",
    Phase.ACTIVE: "active_at",
    Phase.RECOVERY: "recovery_at",
    Phase.AWAITING_SIGNOFF: "awaiting_signoff_at",
    Phase.COMPLETED: "completed_at",
    Phase.ENDED_EARLY: "ended_at",
}


class TransitionError(Exception):
    """An action that does not apply to the session's current phase."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def session_state(row: SessionRow, clock: Clock) -> dict[str, Any]:
    """The clock's view of a session, as sent to clients (docs/protocol.md, "Session state")."""
    minutes_since_dose = clock.protocol_minutes(row.dosed_at) if row.dosed_at else None
    end = row.completed_at or row.ended_at
    if minutes_since_dose is not None and end is not None:
        minutes_since_dose = clock.protocol_minutes(row.dosed_at, end)  # type: ignore[arg-type]
    return {
        "session_id": row.id,
        "phase": row.phase,
        "phase_started_at": _iso(row.phase_started_at),
        "phase_deadline": _iso(row.phase_deadline),
        "scheduled_start": _iso(row.scheduled_start),
        "dosed_at": _iso(row.dosed_at),
        "minutes_since_dose": minutes_since_dose,
        "time_scale": clock.scale,
        "ended_reason": row.ended_reason,
        "last_seq": row.last_seq,
        "server_time": clock.now().isoformat(),
    }


@dataclass
class Lifecycle:
    """Moves sessions between phases; every move is an event."""

    store: EventStore
    clock: Clock
    wake: Wake | None = None
    hooks: list[PhaseHook] = field(default_factory=list)

    def _deadline(self, row: SessionRow, phase: Phase, now: datetime) -> datetime | None:
        proto = Protocol.from_dict(row.protocol)
        if phase is Phase.DOSING:
            return self.clock.after(now, proto.dosing_minutes)
        if phase is Phase.ACTIVE:
            assert row.dosed_at is not None
            return self.clock.after(row.dosed_at, proto.active_minutes_from_dose)
        if phase is Phase.RECOVERY:
            return self.clock.after(now, proto.recovery_minutes)
        return None

    async def _enter(
        self,
        tx: Transaction,
        row: SessionRow,
        to: Phase,
        *,
        reason: str,
        actor: str | None,
        at: datetime,
    ) -> None:
        frm = row.phase
        setattr(row, ENTERED_AT[to], at)
        row.phase = to.value
        row.phase_started_at = at
        row.phase_deadline = self._deadline(row, to, at)
        await tx.append(
            row.id,
            "phase_changed",
            {
                "from": frm,
                "to": to.value,
                "reason": reason,
                "phase_started_at": at.isoformat(),
                "phase_deadline": _iso(row.phase_deadline),
            },
            actor=actor,
        )
        if row.phase_deadline is not None and self.wake is not None:
            self.wake.set(row.phase_deadline)
        for hook in self.hooks:
            await hook(tx, row, to)

    async def _locked(self, tx: Transaction, session_id: str) -> SessionRow:
        row = (
            await tx.db.execute(
                select(SessionRow).where(SessionRow.id == session_id).with_for_update()
            )
        ).scalar_one_or_none()
        if row is None:
            raise TransitionError("unknown_session", f"no session {session_id}")
        return row

    async def act(
        self, session_id: str, action: str, *, actor: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Apply a clinician's *action* (``admit``, ``start_dosing``, ``sign_off``).

        ``start_dosing`` is refused while the pre-check blocks it (checklist incomplete, vital
        signs out of range) unless *reason* overrides, which is recorded. ``sign_off`` is
        refused while a high-priority flag is open.
        """
        if action not in ACTIONS:
            raise TransitionError("unknown_action", f"unknown action {action!r}")
        needs, to = ACTIONS[action]
        async with self.store.transaction() as tx:
            row = await self._locked(tx, session_id)
            if row.phase != needs.value:
                raise TransitionError(
                    "wrong_phase", f"{action} needs phase {needs.value}, session is {row.phase}"
                )
            now = self.clock.now()
            if to is Phase.DOSING:
                await self._gate_dosing(tx, row, reason, actor)
            if to is Phase.COMPLETED:
                await self._gate_sign_off(tx, row)
                row.signed_off_by = (
                    int(actor.split(":", 1)[1]) if actor.startswith("user:") else None
                )
            await self._enter(tx, row, to, reason=action, actor=actor, at=now)
            state = session_state(row, self.clock)
        return state

    @staticmethod
    def check_action(action: str) -> None:
        """Raise ``bad_request`` for a name that is not a clock action (before authorising)."""
        if action not in ACTIONS and action != END_ACTION:
            raise TransitionError("bad_request", f"unknown action {action[:40]!r}")

    async def perform(
        self, session_id: str, action: str, reason: str | None, *, actor: str
    ) -> dict[str, Any]:
        """Any human clock action by name: ``admit``, ``start_dosing``, ``sign_off``, ``end``."""
        self.check_action(action)
        if action == END_ACTION:
            return await self.end_early(session_id, reason or "", actor=actor)
        return await self.act(session_id, action, actor=actor, reason=reason)

    async def _gate_dosing(
        self, tx: Transaction, row: SessionRow, reason: str | None, actor: str
    ) -> None:
        blockers = dosing_blockers(row, await latest_precheck_vitals(tx, row.id))
        if not blockers:
            return
        reason = (reason or "").strip()
        if not reason:
            raise TransitionError(
                "precheck_blocked",
                "dosing is blocked until the pre-check passes: "
                + ", ".join(blockers)
                + " (a clinician may override with a reason)",
            )
        if len(reason) > MAX_END_REASON_CHARS:
            raise TransitionError("reason_too_long", f"at most {MAX_END_REASON_CHARS} characters")
        row.dosing_override = reason
        await tx.append(
            row.id, "dosing_override", {"blockers": blockers, "reason": reason}, actor=actor
        )

    async def _gate_sign_off(self, tx: Transaction, row: SessionRow) -> None:
        high = (
            (
                await tx.db.execute(
                    select(Flag.code).where(
                        Flag.session_id == row.id,
                        Flag.cleared_at.is_(None),
                        Flag.priority == "high",
                    )
                )
            )
            .scalars()
            .all()
        )
        if high:
            raise TransitionError(
                "open_high_flags", f"clear the open high-priority flags first: {', '.join(high)}"
            )
        alarms = (
            (
                await tx.db.execute(
                    select(Alarm.kind).where(
                        Alarm.session_id == row.id,
                        Alarm.status.in_(("triggered", "acknowledged")),
                        Alarm.priority == "high",
                    )
                )
            )
            .scalars()
            .all()
        )
        if alarms:
            raise TransitionError(
                "open_high_alarms",
                f"resolve the open high-priority alarms first: {', '.join(alarms)}",
            )

    async def end_early(self, session_id: str, reason: str, *, actor: str) -> dict[str, Any]:
        """End a session that has not finished, recording why."""
        reason = reason.strip()
        if not reason:
            raise TransitionError("reason_required", "ending a session early needs a reason")
        if len(reason) > MAX_END_REASON_CHARS:
            raise TransitionError("reason_too_long", f"at most {MAX_END_REASON_CHARS} characters")
        async with self.store.transaction() as tx:
            row = await self._locked(tx, session_id)
            if Phase(row.phase).terminal:
                raise TransitionError("wrong_phase", f"session already {row.phase}")
            row.ended_reason = reason
            await self._enter(
                tx, row, Phase.ENDED_EARLY, reason=reason, actor=actor, at=self.clock.now()
            )
            state = session_state(row, self.clock)
        return state

    async def advance_due(self) -> int:
        """Fire every deadline that has passed; returns how many transitions were made.

        With several processes on one PostgreSQL, ``FOR UPDATE SKIP LOCKED`` makes exactly one
        of them take each due session; the phase is re-checked under the lock, so a deadline
        already fired by another process is not fired twice.
        """
        fired = 0
        now = self.clock.now()
        async with self.store.transaction() as tx:
            rows = (
                (
                    await tx.db.execute(
                        select(SessionRow)
                        .where(
                            SessionRow.phase_deadline.is_not(None), SessionRow.phase_deadline <= now
                        )
                        .order_by(SessionRow.phase_deadline)
                        .limit(100)
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            for row in rows:
                step = CLOCK_STEPS.get(Phase(row.phase))
                if step is None or row.phase_deadline is None:
                    row.phase_deadline = None
                    continue
                to, reason = step
                # The transition happens at the deadline, not when we noticed it: a process
                # that was down for a while still records the clinically true times.
                await self._enter(tx, row, to, reason=reason, actor="clock", at=row.phase_deadline)
                fired += 1
        return fired

    async def next_deadline(self) -> datetime | None:
        """The earliest pending deadline of any session."""
        async with self.store.sessionmaker() as db:
            return (await db.execute(select(func.min(SessionRow.phase_deadline)))).scalar()
