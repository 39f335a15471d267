"""Technical alarms (IEC "technical alarm"): facts about the link, not about the patient.

- ``patient_disconnected``: a session being monitored (dosing, active, recovery) whose patient
  has not been publishing for ``disconnected_seconds``;
- ``unwatched``: a session in its active phase that no clinician or on-call nurse has been
  watching for ``unwatched_seconds``;
- ``video_lost``: the patient is connected but no video frame arrived for
  ``video_lost_seconds`` (from the relay's media health, so only the node holding the media
  judges it).

Presence lives in the database (``sessions.publisher_online``, ``sessions.watchers``), so any
process can judge the first two. Each alarm clears itself when its condition goes away, unless
it latched. The monitor looks every ``CHECK_SECS``; several processes may look at once: the
open-alarm unique index lets only one alarm exist per condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError

from monitoring.alarms import OPEN, Alarms
from monitoring.clock import Clock
from monitoring.events import EventStore, Transaction
from monitoring.protocol import Priority, Protocol
from server.models import Alarm, Phase
from server.models import Session as SessionRow

log = logging.getLogger(__name__)

# Viewers whose watching counts as clinical oversight of a session.
OVERSIGHT_ROLES = ("clinician", "oncall")

CHECK_SECS = 1.0
# Until sign-off the patient must stay on video: a clinician confirms they are oriented.
MONITORED = (
    Phase.DOSING.value,
    Phase.ACTIVE.value,
    Phase.RECOVERY.value,
    Phase.AWAITING_SIGNOFF.value,
)
KINDS = ("patient_disconnected", "unwatched", "video_lost")
# The technical alarms' priority: prompt response, never the immediate-response class.
TECHNICAL_PRIORITY = Priority.MEDIUM

# session id → seconds since the last video frame; None: publishing but no frame yet; False:
# this process does not hold the session's media and cannot judge.
VideoAge = Callable[[str], float | bool | None]


@dataclass
class Condition:
    """What the monitor concluded for one alarm kind of one session."""

    active: bool
    detail: dict[str, object]


def _since(now: datetime, then: datetime | None) -> float:
    return (now - then).total_seconds() if then else 0.0


async def record_media_fact(
    tx: Transaction, session_id: str, fact: str, data: dict[str, object], now: datetime
) -> None:
    """Keep the session's presence columns in step with the relay's facts (same transaction
    as the fact's event). Counts change by UPDATE ... SET x = x ± 1, so processes never
    overwrite each other's counts."""
    values: dict[str, object] = {}
    if fact == "publisher_joined":
        values = {"publisher_online": True, "publisher_changed_at": now}
    elif fact == "publisher_left":
        values = {"publisher_online": False, "publisher_changed_at": now}
    elif fact in ("viewer_joined", "viewer_left") and data.get("role") in OVERSIGHT_ROLES:
        delta = 1 if fact == "viewer_joined" else -1
        values = {
            "watchers": case(
                (SessionRow.watchers + delta < 0, 0), else_=SessionRow.watchers + delta
            ),
            "watchers_changed_at": now,
        }
    if values:
        await tx.db.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))


async def reset_presence(store: EventStore, now: datetime) -> int:
    """At start-up of a single process: nobody can be connected yet, whatever the database
    says after a crash. Records a ``publisher_left`` / ``viewers_reset`` event for each session
    that claimed otherwise; returns how many sessions were reset.

    Not for several processes (each holds some of the connections); there, presence left by a
    crashed process stays until its sessions' clients come back (a documented limitation).
    """
    async with store.transaction() as tx:
        stale = (
            (
                await tx.db.execute(
                    select(SessionRow).where(
                        (SessionRow.publisher_online.is_(True)) | (SessionRow.watchers > 0)
                    )
                )
            )
            .scalars()
            .all()
        )
        for row in stale:
            if Phase(row.phase).terminal:
                # Over: correct the columns, but a finished record gets no new events.
                row.publisher_online, row.watchers = False, 0
                continue
            if row.publisher_online:
                await tx.append(
                    row.id,
                    "publisher_left",
                    {"who": None, "reason": "server_restart"},
                    actor="relay",
                )
                row.publisher_online = False
                row.publisher_changed_at = now
            if row.watchers > 0:
                await tx.append(
                    row.id,
                    "viewers_reset",
                    {"watchers": row.watchers, "reason": "server_restart"},
                    actor="relay",
                )
                row.watchers = 0
                row.watchers_changed_at = now
    return len(stale)


class TechnicalMonitor:
    """Raises and clears the technical alarms of every monitored session."""

    def __init__(
        self, store: EventStore, clock: Clock, alarms: Alarms, video_age: VideoAge
    ) -> None:
        self.store = store
        self.clock = clock
        self.alarms = alarms
        self.video_age = video_age
        self._task: asyncio.Task[None] | None = None

    def judge(self, row: SessionRow, now: datetime) -> dict[str, Condition | None]:
        """Each kind's condition for *row* (None: this process cannot tell)."""
        proto = Protocol.from_dict(row.protocol)
        out: dict[str, Condition | None] = {}
        # A patient who never published is away since the dose, not since the last phase
        # change (which would restart the count, and clear the alarm, at every phase).
        away = _since(now, row.publisher_changed_at or row.dosed_at or row.phase_started_at)
        out["patient_disconnected"] = Condition(
            not row.publisher_online and away > proto.disconnected_seconds,
            {"seconds": round(away, 1)},
        )
        # Counted from the later of "active started" and "the last watcher left": a clinician
        # who left during dosing does not make the alarm fire the moment the phase begins.
        since = max(
            (d for d in (row.watchers_changed_at, row.active_at) if d is not None), default=None
        )
        unwatched = _since(now, since)
        out["unwatched"] = Condition(
            row.phase == Phase.ACTIVE.value
            and row.watchers <= 0
            and unwatched > proto.unwatched_seconds,
            {"seconds": round(unwatched, 1)},
        )
        age = self.video_age(row.id)
        if age is False or not row.publisher_online:
            out["video_lost"] = None if age is False else Condition(False, {})
        else:
            since_publishing = _since(now, row.publisher_changed_at)
            # The relay's meter outlives a publisher's connection: right after a reconnect its
            # last frame is the previous connection's, seconds or minutes old. Video cannot have
            # been missing for longer than the patient has been publishing again, so the gap is
            # capped there (otherwise every reconnect after a long drop raised video_lost at once).
            gap = since_publishing if age is None else float(age)
            if row.publisher_changed_at is not None:
                gap = min(gap, since_publishing)
            lost = gap > proto.video_lost_seconds
            out["video_lost"] = Condition(lost, {"seconds_since_video": age})
        return out

    async def check(self) -> int:
        """One look at every monitored session; returns how many alarms changed."""
        now = self.clock.now()
        async with self.store.sessionmaker() as db:
            rows = (
                (await db.execute(select(SessionRow).where(SessionRow.phase.in_(MONITORED))))
                .scalars()
                .all()
            )
            open_rows = (
                await db.execute(
                    select(Alarm.session_id, Alarm.dedup_key).where(
                        Alarm.kind.in_(KINDS), Alarm.status.in_(OPEN)
                    )
                )
            ).all()
        open_keys = {(session_id, key) for session_id, key in open_rows}
        changed = 0
        for row in rows:
            for kind, cond in self.judge(row, now).items():
                if cond is None:
                    continue
                is_open = (row.id, kind) in open_keys
                if cond.active and not is_open:
                    changed += await self._raise(row.id, kind, cond)
                elif not cond.active and is_open:
                    changed += await self._clear(row.id, kind)
        return changed

    async def _raise(self, session_id: str, kind: str, cond: Condition) -> int:
        try:
            async with self.store.transaction() as tx:
                row = await tx.db.get(SessionRow, session_id)
                if row is None or row.phase not in MONITORED:
                    return 0
                await self.alarms.raise_(
                    tx,
                    row,
                    kind=kind,
                    dedup_key=kind,
                    priority=TECHNICAL_PRIORITY,
                    detail=cond.detail,
                    actor="monitor",
                )
        except IntegrityError:
            return 0  # another process raised it first
        return 1

    async def _clear(self, session_id: str, kind: str) -> int:
        async with self.store.transaction() as tx:
            await self.alarms.condition_cleared(
                tx, session_id, kind, reason="condition cleared", actor="monitor"
            )
        return 1

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("technical monitor failed; retrying")
            await asyncio.sleep(CHECK_SECS)

    def start(self) -> None:
        """Start looking."""
        self._task = asyncio.create_task(self._run(), name="vigil.technical")

    async def stop(self) -> None:
        """Stop looking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
