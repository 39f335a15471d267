"""The patient's emergency button and the session's notes.

The emergency button raises a high-priority alarm that pages every level at once — the
assigned clinician, on-call and the medical director — carrying what a responder needs: the
address confirmed at pre-check, the sitter's name and phone, and the emergency contact.
Notes: the patient's journal (prompted when the active phase ends and after sign-off) and the
clinicians' note thread are events on the session's stream, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitoring.alarms import Alarms
from monitoring.events import EventStore, Transaction, run_command
from monitoring.flags import FlagError, live_session
from monitoring.protocol import Priority
from server.models import Event, Phase
from server.models import Session as SessionRow

MAX_NOTE_CHARS = 5000
# What a responder is shown from the pre-check checklist.
EMERGENCY_FIELDS = (
    "address",
    "address_confirmed",
    "sitter_name",
    "sitter_phone",
    "emergency_contact_name",
    "emergency_contact_phone",
)


@dataclass
class Emergencies:
    """The emergency button, the journal and the clinicians' notes."""

    store: EventStore
    alarms: Alarms

    async def press(
        self, session_id: str, note: str | None, *, actor: str, client_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        """The emergency button: one event and one alarm paging everyone, once per client id."""

        async def body(tx: Transaction) -> Event:
            row = await live_session(tx, session_id)
            details = {k: (row.precheck or {}).get(k) for k in EMERGENCY_FIELDS}
            event = await tx.append(
                session_id,
                "emergency",
                {"note": _text(note, "note"), **details},
                actor=actor,
                client_id=client_id,
            )
            await self.alarms.raise_(
                tx,
                row,
                kind="emergency",
                dedup_key="emergency",
                priority=Priority.HIGH,
                detail={"note": _text(note, "note"), **details},
                actor=actor,
                page_all=True,
            )
            return event

        return await run_command(self.store, session_id, client_id, body)

    async def journal(
        self, session_id: str, text: str, *, actor: str, client_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        """A journal entry by the patient (also after the session has completed)."""
        return await self._text_event(session_id, "journal_entry", text, actor, client_id)

    async def note(
        self, session_id: str, text: str, *, actor: str, client_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        """A clinician's note on the session's thread."""
        return await self._text_event(session_id, "note_added", text, actor, client_id)

    async def _text_event(
        self, session_id: str, type_: str, text: str, actor: str, client_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        body_text = _required(text)

        async def body(tx: Transaction) -> Event:
            if await tx.db.get(SessionRow, session_id) is None:
                raise FlagError("unknown_session", "no such session")
            return await tx.append(
                session_id, type_, {"text": body_text}, actor=actor, client_id=client_id
            )

        return await run_command(self.store, session_id, client_id, body)

    async def on_phase(self, tx: Transaction, row: SessionRow, phase: Phase) -> None:
        """Lifecycle hook: prompt the journal; close a finished session's alarms."""
        if phase in (Phase.RECOVERY, Phase.COMPLETED):
            await tx.append(row.id, "journal_prompted", {"phase": phase.value}, actor="clock")
        if phase.terminal:
            await self.alarms.resolve_all(
                tx, row.id, reason=f"session {phase.value}", actor="system"
            )


def _text(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_NOTE_CHARS:
        raise FlagError("bad_request", f"{name} is at most {MAX_NOTE_CHARS} characters")
    return value or None


def _required(value: str) -> str:
    text = _text(value, "text")
    if not text:
        raise FlagError("bad_request", "text must not be empty")
    return text
