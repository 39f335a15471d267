"""The scheduler: fires every persisted deadline (phases, check-ins, alarm escalation).

Invariant 4 of DESIGN: time lives in the database. Each *stepper* owns one kind of deadline
column and knows how to fire what is due (``advance_due``) and when the next is
(``next_deadline``). The scheduler loops over them: at start-up (so a restarted process fires
whatever fell due while it was down), whenever a stepper sets a nearer deadline (``wake``), and
at least every ``POLL_SECS`` to see deadlines other processes set. With several processes on
one PostgreSQL exactly one fires each step: phase deadlines are taken ``FOR UPDATE SKIP
LOCKED``; check-ins and alarms are stepped one per transaction under the session's row lock,
re-read before acting (see :meth:`monitoring.events.Transaction.lock_session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from monitoring.clock import Clock

log = logging.getLogger(__name__)

# How often deadlines set by *other* processes are looked for; our own wake us at once.
POLL_SECS = 1.0


class Stepper(Protocol):
    """One kind of persisted deadline."""

    async def advance_due(self) -> int:
        """Fire what is due; return how many steps were taken."""
        ...

    async def next_deadline(self) -> datetime | None:
        """The earliest pending deadline, if any."""
        ...


class Scheduler:
    """Background task that fires due deadlines of every stepper."""

    def __init__(self, clock: Clock, steppers: Sequence[Stepper] = ()) -> None:
        self.clock = clock
        self.steppers = list(steppers)
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> datetime | None:
        """Fire everything due now; return the next deadline."""
        nearest: datetime | None = None
        for stepper in self.steppers:
            try:
                while await stepper.advance_due():
                    pass
                nxt = await stepper.next_deadline()
            except asyncio.CancelledError:
                raise
            except Exception:
                # One failing kind of deadline must not stop the others (an alarm must still
                # escalate if, say, a check-in step hits a bug); it is retried next round.
                log.exception("scheduler step failed", extra={"stepper": type(stepper).__name__})
                continue
            if nxt is not None and (nearest is None or nxt < nearest):
                nearest = nxt
        return nearest

    async def _run(self) -> None:
        while True:
            # Cleared before looking, so a deadline set while we look wakes the next wait.
            self.wake.clear()
            nxt = await self.run_once()
            delay = POLL_SECS
            if nxt is not None:
                delay = max(0.0, min(delay, (nxt - self.clock.now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)

    def start(self) -> None:
        """Start firing deadlines."""
        self._task = asyncio.create_task(self._run(), name="vigil.scheduler")

    async def stop(self) -> None:
        """Stop and wait for the task to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
