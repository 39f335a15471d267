"""The scheduler: fires every persisted deadline (phases, check-ins, alarm escalation).

Invariant 4 of DESIGN: time lives in the database. Each *stepper* owns one kind of deadline
column and knows how to fire what is due (``advance_due``) and when the next is
(``next_deadline``). The scheduler loops over them: at start-up (so a restarted process fires
whatever fell due while it was down), whenever a stepper sets a deadline before the scheduler's
next look (:class:`Wake`), and at least every ``POLL_SECS`` to see deadlines other processes
set. With several processes on
one PostgreSQL exactly one fires each step: phase deadlines are taken ``FOR UPDATE SKIP
LOCKED``; check-ins and alarms are stepped one per transaction under the session's row lock,
re-read before acting (see :meth:`monitoring.events.Transaction.lock_session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
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


class Wake:
    """How a stepper that set a deadline wakes the scheduler: only if the deadline comes before
    the scheduler's next look anyway.

    Every alarm sets an escalation deadline minutes away; waking the scheduler for each (all
    its steppers' queries) kept it looking back to back in a flag storm
    (bench/event_latency.py). A deadline after the next look is found by that look. One set
    while the scheduler looks is remembered and decides how soon it looks again (what it was
    reading may predate the new deadline's commit).
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.next_look: datetime | None = None  # None while looking
        self._pending: datetime | None = None  # the earliest deadline set while looking
        self._pending_now = False  # a deadline of unknown time was set while looking

    def set(self, at: datetime | None = None) -> None:
        """A deadline at *at* (None: unknown, or now) was set."""
        if self.next_look is None:
            if at is None:
                self._pending_now = True
            elif self._pending is None or at < self._pending:
                self._pending = at
        elif at is None or at < self.next_look:
            self._event.set()

    def begin_look(self) -> None:
        """The scheduler starts looking: forget earlier wakes."""
        self._event.clear()
        self.next_look = None
        self._pending = None
        self._pending_now = False

    def end_look(self, nearest: datetime | None, now: datetime) -> datetime | None:
        """The look found *nearest*; return it, or sooner if a deadline was set meanwhile."""
        if self._pending_now:
            return now
        if self._pending is not None and (nearest is None or self._pending < nearest):
            return self._pending
        return nearest

    async def sleep(self, until: datetime, seconds: float) -> None:
        """Sleep until woken or *seconds* pass; *until* is when that is."""
        self.next_look = until
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=seconds)


class Scheduler:
    """Background task that fires due deadlines of every stepper."""

    def __init__(self, clock: Clock, steppers: Sequence[Stepper] = ()) -> None:
        self.clock = clock
        self.steppers = list(steppers)
        self.wake = Wake()
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
            self.wake.begin_look()
            nxt = self.wake.end_look(await self.run_once(), self.clock.now())
            now = self.clock.now()
            delay = POLL_SECS
            if nxt is not None:
                delay = max(0.0, min(delay, (nxt - now).total_seconds()))
            await self.wake.sleep(now + timedelta(seconds=delay), delay)

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
