"""The scheduler's wake-up: a deadline wakes it only if it comes before its next look."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from monitoring.scheduler import Wake

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


async def test_a_deadline_after_the_next_look_does_not_wake_one_before_does() -> None:
    wake = Wake()
    wake.begin_look()
    assert wake.end_look(None, T0) is None
    sleeping = asyncio.create_task(wake.sleep(T0 + timedelta(seconds=1), 5))
    await asyncio.sleep(0)
    wake.set(T0 + timedelta(minutes=5))  # an escalation minutes away: the next look finds it
    await asyncio.sleep(0.05)
    assert not sleeping.done()
    wake.set(T0 + timedelta(milliseconds=200))  # before the next look: wake now
    await asyncio.wait_for(sleeping, 1)


async def test_a_deadline_of_unknown_time_always_wakes() -> None:
    wake = Wake()
    wake.begin_look()
    wake.end_look(None, T0)
    sleeping = asyncio.create_task(wake.sleep(T0 + timedelta(seconds=1), 5))
    await asyncio.sleep(0)
    wake.set()
    await asyncio.wait_for(sleeping, 1)


async def test_deadlines_set_while_looking_decide_the_next_look() -> None:
    """What the look read may predate their commit, so they are not lost."""
    wake = Wake()
    wake.begin_look()
    wake.set(T0 + timedelta(seconds=30))
    wake.set(T0 + timedelta(seconds=10))
    assert wake.end_look(T0 + timedelta(minutes=2), T0) == T0 + timedelta(seconds=10)
    assert wake.end_look(T0 + timedelta(seconds=3), T0) == T0 + timedelta(seconds=3)
    wake.begin_look()
    wake.set()
    assert wake.end_look(T0 + timedelta(minutes=2), T0) == T0  # look again at once
    wake.begin_look()  # a new look forgets them
    assert wake.end_look(None, T0) is None
