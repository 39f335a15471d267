"""Side-effect flags: raised by the patient, the sitter or a clinician; cleared by a clinician.

A flag's priority comes from the session's protocol catalogue; raising one triggers an alarm
(deduplicated per flag code while open), except for info-priority flags, which are only
logged. Clearing the last open flag of a code resolves its alarm unless it is latched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from monitoring.alarms import Alarms
from monitoring.clock import Clock
from monitoring.events import EventStore, Transaction, run_command
from monitoring.protocol import Priority, Protocol
from server.models import Event, Flag, Phase
from server.models import Session as SessionRow

MAX_NOTE_CHARS = 2000


class FlagError(Exception):
    """A refused flag operation."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def flag_dict(flag: Flag) -> dict[str, Any]:
    """The wire form of a flag."""
    return {
        "flag_id": flag.id,
        "code": flag.code,
        "priority": flag.priority,
        "note": flag.note,
        "raised_by": flag.raised_by,
        "raised_at": flag.raised_at.isoformat(),
        "cleared_at": flag.cleared_at.isoformat() if flag.cleared_at else None,
        "cleared_by": flag.cleared_by,
    }


def _note(note: str | None) -> str | None:
    if note is None:
        return None
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise FlagError("note_too_long", f"a note is at most {MAX_NOTE_CHARS} characters")
    return note or None


async def live_session(tx: Transaction, session_id: str) -> SessionRow:
    """The session row, locked (DESIGN lock order: session first), refusing ended sessions."""
    row = await tx.lock_session(session_id)
    if row is None:
        raise FlagError("unknown_session", f"no session {session_id}")
    if Phase(row.phase).terminal:
        raise FlagError("session_ended", f"the session is {row.phase}")
    return row


@dataclass
class Flags:
    """The side-effect catalogue in use."""

    store: EventStore
    clock: Clock
    alarms: Alarms

    async def raise_in(
        self,
        tx: Transaction,
        row: SessionRow,
        code: str,
        note: str | None,
        *,
        actor: str,
        client_id: str | None = None,
    ) -> Event:
        """Raise a flag inside the caller's transaction (check-in answers and vitals use it)."""
        kind = Protocol.from_dict(row.protocol).flag(code)
        if kind is None:
            raise FlagError("unknown_flag", f"this clinic has no flag {code[:50]!r}")
        flag = Flag(
            session_id=row.id,
            code=code,
            priority=kind.priority.value,
            note=_note(note),
            raised_by=actor,
            raised_at=self.clock.now(),
        )
        tx.db.add(flag)
        await tx.db.flush()
        event = await tx.append(
            row.id,
            "flag_raised",
            {**flag_dict(flag), "label": kind.label},
            actor=actor,
            client_id=client_id,
        )
        await self.alarms.raise_(
            tx,
            row,
            kind="flag",
            dedup_key=f"flag:{code}",
            priority=kind.priority,
            detail={"flag_id": flag.id, "code": code, "label": kind.label},
            actor=actor,
        )
        return event

    async def raise_flag(
        self, session_id: str, code: str, note: str | None, *, actor: str, client_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Raise a flag once per client id; returns (the flag_raised event, duplicate)."""

        async def body(tx: Transaction) -> Event:
            row = await live_session(tx, session_id)
            return await self.raise_in(tx, row, code, note, actor=actor, client_id=client_id)

        return await run_command(self.store, session_id, client_id, body)

    async def clear_flag(
        self, session_id: str, flag_id: str, note: str | None, *, actor: str
    ) -> dict[str, Any]:
        """A clinician clears a flag; the flag's alarm resolves once no flag of its code is open."""
        async with self.store.transaction() as tx:
            await tx.lock_session(session_id)
            flag = (
                await tx.db.execute(
                    select(Flag)
                    .where(Flag.id == flag_id, Flag.session_id == session_id)
                    .with_for_update()
                )
            ).scalar_one_or_none()
            if flag is None:
                raise FlagError("unknown_flag", "no such flag on this session")
            if flag.cleared_at is not None:
                raise FlagError("flag_cleared", "the flag is already cleared")
            flag.cleared_at = self.clock.now()
            flag.cleared_by = actor
            flag.clear_note = _note(note)
            await tx.append(
                session_id,
                "flag_cleared",
                {**flag_dict(flag), "note": flag.clear_note},
                actor=actor,
            )
            await tx.db.flush()
            still_open = (
                await tx.db.execute(
                    select(Flag.id).where(
                        Flag.session_id == session_id,
                        Flag.code == flag.code,
                        Flag.cleared_at.is_(None),
                    )
                )
            ).first()
            if still_open is None:
                await self.alarms.condition_cleared(
                    tx, session_id, f"flag:{flag.code}", reason="flag cleared", actor=actor
                )
            return flag_dict(flag)

    async def open_flags(self, session_id: str) -> list[dict[str, Any]]:
        """Flags not yet cleared, highest priority first."""
        async with self.store.sessionmaker() as db:
            rows = (
                (
                    await db.execute(
                        select(Flag).where(Flag.session_id == session_id, Flag.cleared_at.is_(None))
                    )
                )
                .scalars()
                .all()
            )
        rows = sorted(rows, key=lambda f: (Priority(f.priority).rank, f.raised_at))
        return [flag_dict(f) for f in rows]
