"""The session clock: phases, who or what moves them, and the persisted deadlines.

lobby → pre_check (clinician admits) → dosing (clinician starts dosing; the tablet dissolves)
→ active (clock: dissolved; lasts until 60 min after the dose) → recovery (clock: hour over)
→ awaiting_signoff (clock: recovery over) → completed (clinician signs off); ended_early with
a reason from any non-terminal phase. Every transition is one ``phase_changed`` event written
in the same transaction as the new phase. ``phase_deadline`` is when the clock itself moves the
session on; :class:`ClockRunner` fires due deadlines, on startup too, so a restarted process
resumes every session where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from monitoring.clock import Clock
from monitoring.events import EventStore, Transaction
from monitoring.protocol import Protocol
from server.models import Phase
from server.models import Session as SessionRow

log = logging.getLogger(__name__)

# How often the runner looks for deadlines set by *other* processes; its own are woken at once.
CLOCK_POLL_SECS = 1.0
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
    wake: asyncio.Event | None = None

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
            self.wake.set()

    async def _locked(self, tx: Transaction, session_id: str) -> SessionRow:
        row = (
            await tx.db.execute(
                select(SessionRow).where(SessionRow.id == session_id).with_for_update()
            )
        ).scalar_one_or_none()
        if row is None:
            raise TransitionError("unknown_session", f"no session {session_id}")
        return row

    async def act(self, session_id: str, action: str, *, actor: str) -> dict[str, Any]:
        """Apply a clinician's *action* (``admit``, ``start_dosing``, ``sign_off``)."""
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
            if to is Phase.COMPLETED:
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
        return await self.act(session_id, action, actor=actor)

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


class ClockRunner:
    """Background task that fires due deadlines, resuming after a restart."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.wake = asyncio.Event()
        lifecycle.wake = self.wake
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            # Cleared before looking, so a deadline set while we look wakes the next wait.
            self.wake.clear()
            try:
                while await self.lifecycle.advance_due():
                    pass
                nxt = await self.lifecycle.next_deadline()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("clock step failed; retrying")
                nxt = None
            delay = CLOCK_POLL_SECS
            if nxt is not None:
                delay = max(0.0, min(delay, (nxt - self.lifecycle.clock.now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)

    def start(self) -> None:
        """Start firing deadlines."""
        self._task = asyncio.create_task(self._run(), name="vigil.clock")

    async def stop(self) -> None:
        """Stop and wait for the task to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
