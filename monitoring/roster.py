"""The live roster's projection and the session record.

The roster is computed from the database on request (a snapshot); clients keep it current by
following each session's events (docs/protocol.md). Sessions are sorted by urgency: the
highest open alarm first, then the oldest, then sessions needing a human (awaiting sign-off),
then by scheduled start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from monitoring.alarms import OPEN, alarm_dict
from monitoring.checkins import checkin_dict
from monitoring.clock import Clock
from monitoring.events import EventStore, event_dict
from monitoring.flags import flag_dict
from monitoring.lifecycle import session_state
from monitoring.protocol import Priority, Protocol
from monitoring.vitals import vitals_dict
from server.models import Alarm, CheckIn, Event, Flag, Phase, User, Vitals
from server.models import Session as SessionRow

MediaHealth = Callable[[str], dict[str, Any] | None]
WATCH_EVENTS = ("viewer_joined", "viewer_left")


def _urgency(entry: dict[str, Any]) -> tuple[Any, ...]:
    alarms = entry["alarms"]
    top = min((Priority(a["priority"]).rank for a in alarms), default=9)
    oldest = min((a["triggered_at"] for a in alarms), default="~")
    needs_human = 0 if entry["phase"] == Phase.AWAITING_SIGNOFF.value else 1
    return (top, oldest, needs_human, entry["scheduled_start"] or "")


class Roster:
    """Builds roster entries and session records."""

    def __init__(self, store: EventStore, clock: Clock, media_health: MediaHealth) -> None:
        self.store = store
        self.clock = clock
        self.media_health = media_health

    async def entries(self, rows: list[SessionRow]) -> list[dict[str, Any]]:
        """One entry per session, most urgent first."""
        ids = [r.id for r in rows]
        if not ids:
            return []
        now = self.clock.now()
        async with self.store.sessionmaker() as db:
            names = dict(
                (
                    await db.execute(
                        select(User.id, User.display_name).where(
                            User.id.in_([r.patient_id for r in rows])
                        )
                    )
                ).all()
            )
            flags = (
                (
                    await db.execute(
                        select(Flag).where(Flag.session_id.in_(ids), Flag.cleared_at.is_(None))
                    )
                )
                .scalars()
                .all()
            )
            alarms = (
                (
                    await db.execute(
                        select(Alarm).where(Alarm.session_id.in_(ids), Alarm.status.in_(OPEN))
                    )
                )
                .scalars()
                .all()
            )
            answered = (
                (
                    await db.execute(
                        select(CheckIn)
                        .where(CheckIn.session_id.in_(ids), CheckIn.status == "answered")
                        .order_by(CheckIn.answered_at)
                    )
                )
                .scalars()
                .all()
            )
            due = (
                (
                    await db.execute(
                        select(CheckIn).where(
                            CheckIn.session_id.in_(ids), CheckIn.status.in_(("open", "missed"))
                        )
                    )
                )
                .scalars()
                .all()
            )
        last_checkin = {c.session_id: c for c in answered}
        out = []
        for row in rows:
            state = session_state(row, self.clock)
            mine_flags = sorted(
                (f for f in flags if f.session_id == row.id),
                key=lambda f: (Priority(f.priority).rank, f.raised_at),
            )
            mine_alarms = sorted(
                (a for a in alarms if a.session_id == row.id),
                key=lambda a: (Priority(a.priority).rank, a.triggered_at),
            )
            last = last_checkin.get(row.id)
            counts = {p.value: 0 for p in Priority}
            for f in mine_flags:
                counts[f.priority] += 1
            out.append(
                {
                    **state,
                    "patient": {"id": row.patient_id, "display_name": names.get(row.patient_id)},
                    "clinician_id": row.clinician_id,
                    "last_checkin": checkin_dict(last) if last else None,
                    "last_checkin_age_seconds": (
                        round((now - last.answered_at).total_seconds(), 1)
                        if last and last.answered_at
                        else None
                    ),
                    "checkins_waiting": [checkin_dict(c) for c in due if c.session_id == row.id],
                    "flags": [flag_dict(f) for f in mine_flags],
                    "flag_counts": counts,
                    "alarms": [alarm_dict(a) for a in mine_alarms],
                    "media_health": self.media_health(row.id),
                    "publisher_online": row.publisher_online,
                    "watchers": row.watchers,
                }
            )
        return sorted(out, key=_urgency)

    async def record(self, session_id: str) -> dict[str, Any]:
        """The record of a session (after Spravato's REMS monitoring form)."""
        async with self.store.sessionmaker() as db:
            row = await db.get(SessionRow, session_id)
            assert row is not None
            patient = await db.get(User, row.patient_id)
            signer = await db.get(User, row.signed_off_by) if row.signed_off_by else None
            vitals = (
                (
                    await db.execute(
                        select(Vitals)
                        .where(Vitals.session_id == session_id)
                        .order_by(Vitals.taken_at)
                    )
                )
                .scalars()
                .all()
            )
            flags = (
                (
                    await db.execute(
                        select(Flag).where(Flag.session_id == session_id).order_by(Flag.raised_at)
                    )
                )
                .scalars()
                .all()
            )
            checkins = (
                (
                    await db.execute(
                        select(CheckIn)
                        .where(CheckIn.session_id == session_id)
                        .order_by(CheckIn.due_at)
                    )
                )
                .scalars()
                .all()
            )
            alarms = (
                (
                    await db.execute(
                        select(Alarm)
                        .where(Alarm.session_id == session_id)
                        .order_by(Alarm.triggered_at)
                    )
                )
                .scalars()
                .all()
            )
            watch = (
                (
                    await db.execute(
                        select(Event)
                        .where(Event.session_id == session_id, Event.type.in_(WATCH_EVENTS))
                        .order_by(Event.seq)
                    )
                )
                .scalars()
                .all()
            )
            notes = (
                (
                    await db.execute(
                        select(Event)
                        .where(
                            Event.session_id == session_id,
                            Event.type.in_(("note_added", "journal_entry", "dosing_override")),
                        )
                        .order_by(Event.seq)
                    )
                )
                .scalars()
                .all()
            )
        proto = Protocol.from_dict(row.protocol)
        end = row.completed_at or row.ended_at
        monitored = (
            round(self.clock.protocol_minutes(row.dosed_at, end), 1)
            if row.dosed_at and end
            else None
        )
        codes = {f.code for f in flags}

        def by_context(ctx: str) -> list[dict[str, Any]]:
            return [vitals_dict(v) for v in vitals if v.context == ctx]

        return {
            "session_id": row.id,
            "patient": {
                "id": row.patient_id,
                "display_name": patient.display_name if patient else None,
            },
            "phase": row.phase,
            "protocol": proto.as_dict(),
            "dose": {
                "dosed_at": row.dosed_at.isoformat() if row.dosed_at else None,
                "override": row.dosing_override,
            },
            "times": {
                k: (getattr(row, k).isoformat() if getattr(row, k) else None)
                for k in (
                    "scheduled_start",
                    "admitted_at",
                    "dosed_at",
                    "active_at",
                    "recovery_at",
                    "awaiting_signoff_at",
                    "completed_at",
                    "ended_at",
                )
            },
            "ended_reason": row.ended_reason,
            "total_monitored_minutes": monitored,
            "blood_pressure": {
                "before": by_context("pre_check"),
                "during": by_context("active"),
                "discharge": by_context("discharge"),
            },
            "side_effects": {
                "sedation": bool(codes & {"unresponsive", "confusion"}),
                "dissociation": bool(codes & {"confusion", "blurred_vision", "numbness"}),
                "breathing_problems": "breathing_difficulty" in codes,
            },
            "flags": [flag_dict(f) for f in flags],
            "checkins": [checkin_dict(c) for c in checkins],
            "alarms": [alarm_dict(a) for a in alarms],
            "watched": [event_dict(e) for e in watch],
            "notes": [event_dict(e) for e in notes],
            "signed_off_by": (
                {"id": signer.id, "display_name": signer.display_name} if signer else None
            ),
        }
