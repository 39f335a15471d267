"""Vital signs and the pre-check checklist that gates dosing.

A reading is blood pressure (systolic/diastolic) and, optionally, heart rate. Above the
protocol's ``max_*`` a medium flag is raised; above ``severe_*`` twice within
``severe_repeat_minutes``, or above ``critical_*`` once, a high one (CLINICAL.md). Before
dosing, the newest reading and the checklist decide whether dosing may start: a clinician may
override a block with a recorded reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from monitoring.events import EventStore, Transaction, run_command
from monitoring.flags import FlagError, Flags, live_session
from monitoring.protocol import Protocol
from server.models import CheckIn, Event, Phase, Vitals
from server.models import Session as SessionRow

# Plausible human ranges: outside them the number is a typing error, not a reading.
SYSTOLIC_RANGE = (50, 300)
DIASTOLIC_RANGE = (20, 200)
HEART_RATE_RANGE = (20, 250)
MAX_TEXT_CHARS = 2000

# The checklist (CLINICAL.md, pre-check): field → (type, required for dosing).
PRECHECK_FIELDS: dict[str, type] = {
    "sitter_name": str,
    "sitter_phone": str,
    "sitter_is_adult": bool,
    "address": str,
    "address_confirmed": bool,
    "fasting": bool,
    "medication_changes": str,
    "intention": str,
    "emergency_contact_name": str,
    "emergency_contact_phone": str,
}


def vitals_dict(v: Vitals) -> dict[str, Any]:
    """The wire form of a reading."""
    return {
        "vitals_id": v.id,
        "systolic": v.systolic,
        "diastolic": v.diastolic,
        "heart_rate": v.heart_rate,
        "context": v.context,
        "taken_at": v.taken_at.isoformat(),
        "recorded_by": v.recorded_by,
    }


def _context(phase: Phase) -> str:
    if phase in (Phase.LOBBY, Phase.PRE_CHECK):
        return "pre_check"
    if phase in (Phase.DOSING, Phase.ACTIVE):
        return "active"
    return "discharge"


def dosing_blockers(row: SessionRow, latest: Vitals | None) -> list[str]:
    """Why dosing may not start yet (empty: it may)."""
    proto = Protocol.from_dict(row.protocol)
    check = row.precheck or {}
    out = []
    if not (
        check.get("sitter_name") and check.get("sitter_phone") and check.get("sitter_is_adult")
    ):
        out.append("sitter_missing")
    if not (check.get("address") and check.get("address_confirmed")):
        out.append("address_unconfirmed")
    if check.get("fasting") is not True:
        out.append("not_fasting")
    if "medication_changes" not in check:
        out.append("medication_changes_unanswered")
    if latest is None:
        out.append("vitals_missing")
    else:
        if latest.systolic > proto.max_systolic or latest.diastolic > proto.max_diastolic:
            out.append("blood_pressure_high")
        if latest.heart_rate is not None and latest.heart_rate > proto.max_heart_rate:
            out.append("heart_rate_high")
    return out


async def latest_precheck_vitals(tx: Transaction, session_id: str) -> Vitals | None:
    """The newest reading taken before dosing."""
    return (
        await tx.db.execute(
            select(Vitals)
            .where(Vitals.session_id == session_id, Vitals.context == "pre_check")
            .order_by(Vitals.taken_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


@dataclass
class VitalSigns:
    """Records readings and the checklist; raises flags for out-of-range values."""

    store: EventStore
    flags: Flags

    async def record(
        self,
        session_id: str,
        systolic: int,
        diastolic: int,
        heart_rate: int | None,
        *,
        actor: str,
        client_id: str | None,
    ) -> tuple[dict[str, Any], bool]:
        """Store a reading once per client id; returns (the vitals_recorded event, duplicate)."""
        for name, value, (lo, hi) in (
            ("systolic", systolic, SYSTOLIC_RANGE),
            ("diastolic", diastolic, DIASTOLIC_RANGE),
            ("heart_rate", heart_rate, HEART_RATE_RANGE),
        ):
            if value is not None and not lo <= value <= hi:
                raise FlagError("bad_vitals", f"{name} must be between {lo} and {hi}")
        if diastolic >= systolic:
            raise FlagError("bad_vitals", "diastolic must be below systolic")

        async def body(tx: Transaction) -> Event:
            row = await live_session(tx, session_id)
            now = self.store.clock.now()
            reading = Vitals(
                session_id=session_id,
                systolic=systolic,
                diastolic=diastolic,
                heart_rate=heart_rate,
                context=_context(Phase(row.phase)),
                taken_at=now,
                recorded_by=actor,
            )
            tx.db.add(reading)
            await tx.db.flush()
            event = await tx.append(
                session_id,
                "vitals_recorded",
                vitals_dict(reading),
                actor=actor,
                client_id=client_id,
            )
            await self._answer_prompt(tx, session_id, reading, actor)
            await self._evaluate(tx, row, reading, actor)
            return event

        return await run_command(self.store, session_id, client_id, body)

    async def _answer_prompt(
        self, tx: Transaction, session_id: str, reading: Vitals, actor: str
    ) -> None:
        prompt = (
            await tx.db.execute(
                select(CheckIn)
                .where(
                    CheckIn.session_id == session_id,
                    CheckIn.kind == "vitals",
                    CheckIn.status.in_(("open", "missed")),
                )
                .order_by(CheckIn.due_at.desc())
                .limit(1)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if prompt is None:
            return
        was_missed = prompt.status == "missed"
        prompt.status = "answered"
        prompt.answered_at = reading.taken_at
        prompt.answered_by = actor
        prompt.answer = {"vitals_id": reading.id}
        await tx.append(
            session_id,
            "checkin_answered",
            {
                "checkin_id": prompt.id,
                "kind": "vitals",
                "ok": True,
                "late": was_missed,
                "vitals_id": reading.id,
            },
            actor=actor,
        )
        if was_missed:
            await self.flags.alarms.condition_cleared(
                tx, session_id, f"missed_checkin:{prompt.id}", reason="answered late", actor=actor
            )

    async def _evaluate(
        self, tx: Transaction, row: SessionRow, reading: Vitals, actor: str
    ) -> None:
        proto = Protocol.from_dict(row.protocol)
        severe = (
            reading.systolic > proto.severe_systolic or reading.diastolic > proto.severe_diastolic
        )
        critical = (
            reading.systolic > proto.critical_systolic
            or reading.diastolic > proto.critical_diastolic
        )
        repeated = False
        if severe and not critical:
            since = reading.taken_at - timedelta(
                minutes=proto.severe_repeat_minutes / self.store.clock.scale
            )
            earlier = (
                await tx.db.execute(
                    select(Vitals).where(
                        Vitals.session_id == row.id,
                        Vitals.id != reading.id,
                        Vitals.taken_at >= since,
                    )
                )
            ).scalars()
            repeated = any(
                v.systolic > proto.severe_systolic or v.diastolic > proto.severe_diastolic
                for v in earlier
            )
        note = f"{reading.systolic}/{reading.diastolic}"
        if critical or repeated:
            await self.flags.raise_in(tx, row, "bp_severe", note, actor="vitals")
        elif reading.systolic > proto.max_systolic or reading.diastolic > proto.max_diastolic:
            await self.flags.raise_in(tx, row, "bp_above_threshold", note, actor="vitals")
        if reading.heart_rate is not None and reading.heart_rate > proto.max_heart_rate:
            await self.flags.raise_in(
                tx, row, "heart_rate_high", f"{reading.heart_rate}", actor="vitals"
            )

    async def submit_precheck(
        self, session_id: str, answers: dict[str, Any], *, actor: str
    ) -> dict[str, Any]:
        """Merge checklist answers into the session; returns the checklist and its blockers."""
        for name, value in answers.items():
            typ = PRECHECK_FIELDS.get(name)
            if typ is None:
                raise FlagError("bad_request", f"unknown checklist field {name[:40]!r}")
            if not isinstance(value, typ):
                raise FlagError(
                    "bad_request", f"{name} must be a {'boolean' if typ is bool else 'string'}"
                )
            if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
                raise FlagError("bad_request", f"{name} is at most {MAX_TEXT_CHARS} characters")
        async with self.store.transaction() as tx:
            row = await live_session(tx, session_id)
            if Phase(row.phase) not in (Phase.LOBBY, Phase.PRE_CHECK):
                raise FlagError("wrong_phase", "the checklist is filled in before dosing")
            row.precheck = {**(row.precheck or {}), **answers}
            await tx.append(
                session_id, "precheck_updated", {"fields": sorted(answers)}, actor=actor
            )
            blockers = dosing_blockers(row, await latest_precheck_vitals(tx, session_id))
            return {"precheck": row.precheck, "blockers": blockers}
