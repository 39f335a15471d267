"""The ``/monitor`` Socket.IO namespace: follow sessions' numbered events; send commands.

A client ``follow`` s a session with the last sequence number it has; the server replies with
the session's current state and every newer event (in order), then streams live ``event`` s
and a ``state`` after every phase change. A client drops an event whose ``seq`` it already
has; on a gap it follows again with its cursor. On-call consoles also ``watch_board``: every
alarm change of the clinic arrives as a ``board`` message. Patients' commands carry a
``client_id`` and are stored once however often they are retried. See docs/protocol.md.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from monitoring.alarms import AlarmError
from monitoring.flags import FlagError
from monitoring.lifecycle import TransitionError, session_state
from monitoring.roster import Roster
from monitoring.service import Monitoring
from server.auth import Access, Principal, visible_sessions
from server.gate import ClientError, Gate, GuardedNamespace, require_fields, session_id_of
from server.models import Phase, Role
from server.models import Session as SessionRow

log = logging.getLogger(__name__)

NAMESPACE = "/monitor"
# A follower further behind than this gets a fresh snapshot (the state) instead of a replay.
REPLAY_LIMIT = 500
# events.client_id holds 100 characters: the command's name and a colon come first.
MAX_CLIENT_ID_CHARS = 80
# Roles that see the clinic's whole alarm board.
BOARD_ROLES = (Role.ONCALL.value, Role.ADMIN.value)


# Events only staff see in full: notes, alarms (with addresses and phones), who watched. Others
# following the session (the patient, the sitter, a guide) get them redacted — the number and
# the type, so their cursor stays gapless and a page can say "someone is on it" — not the data.
STAFF_ONLY = frozenset(
    {
        "note_added",
        "flag_cleared",
        "emergency",
        "info_logged",
        "dosing_override",
        "viewer_joined",
        "viewer_left",
        "viewers_reset",
        "alarm_triggered",
        "alarm_escalated",
        "alarm_acknowledged",
        "alarm_retriggered",
        "alarm_resolved",
        "alarm_condition_cleared",
    }
)


def room(session_id: str, staff: bool) -> str:
    """The room of a session's followers: staff, or everyone else."""
    return f"session:{session_id}:{'staff' if staff else 'people'}"


def for_people(event: dict[str, Any]) -> dict[str, Any]:
    """*event* as a non-staff follower may see it."""
    if event.get("type") not in STAFF_ONLY:
        return event
    return {**event, "actor": None, "client_id": None, "data": {}, "redacted": True}


def board_room(clinic_id: int) -> str:
    """The room of a clinic's on-call consoles."""
    return f"clinic:{clinic_id}:board"


def _client_id(data: dict[str, Any], command: str) -> str:
    """The stored command id: the client's id within the command's own namespace, so one id
    reused for two different commands (a flag, then a journal entry) stores both."""
    cid = data["client_id"]
    if not cid or len(cid) > MAX_CLIENT_ID_CHARS:
        raise ClientError("bad_request", f"client_id must be 1 to {MAX_CLIENT_ID_CHARS} characters")
    return f"{command}:{cid}"


def _refused(exc: FlagError | AlarmError | TransitionError) -> ClientError:
    return ClientError(exc.code, exc.message)


class MonitorNamespace(GuardedNamespace):
    """Streams session events; takes patients', sitters' and clinicians' commands."""

    def __init__(self, gate: Gate, monitoring: Monitoring, roster: Roster) -> None:
        super().__init__(NAMESPACE, gate)
        self.m = monitoring
        self.store = monitoring.store
        self.roster = roster

    async def deliver(self, event: dict[str, Any]) -> None:
        """Bus subscriber: send a committed event to this node's followers of its session.

        ``ignore_queue``: with the Redis manager every node hears the bus, so each node emits
        only to its own clients; otherwise each event would reach a client once per node.
        """
        session_id = event["session_id"]
        await self.server.emit(
            "event", event, room=room(session_id, True), namespace=NAMESPACE, ignore_queue=True
        )
        await self.server.emit(
            "event",
            for_people(event),
            room=room(session_id, False),
            namespace=NAMESPACE,
            ignore_queue=True,
        )
        etype = event.get("type", "")
        if etype.startswith("alarm_") and "clinic_id" in event.get("data", {}):
            await self.server.emit(
                "board",
                event,
                room=board_room(event["data"]["clinic_id"]),
                namespace=NAMESPACE,
                ignore_queue=True,
            )
        if etype == "phase_changed":
            # The new state (deadline, clock) goes out too, so clients need not ask for it.
            async with self.store.sessionmaker() as db:
                row = await db.get(SessionRow, session_id)
            if row is not None:
                state = session_state(row, self.m.clock)
                for staff in (True, False):
                    await self.server.emit(
                        "state",
                        state,
                        room=room(session_id, staff),
                        namespace=NAMESPACE,
                        ignore_queue=True,
                    )

    async def _session(self, principal: Principal, data: dict[str, Any], access: Access) -> str:
        session_id = session_id_of(data)
        await self.gate.authorize(principal, session_id, access)
        return session_id

    # -- following ---------------------------------------------------------------------------

    async def handle_follow(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``follow {session_id, after_seq?}`` → ``{state, events, truncated}``; then live.

        ``truncated`` means the cursor was too old to replay: ``events`` is empty and the
        client resets its cursor to ``state.last_seq`` (DESIGN invariant 2: a fresh snapshot).
        """
        data = require_fields(data, {"session_id": str}, {"after_seq": int})
        session_id = session_id_of(data)
        after = data.get("after_seq", 0)
        if after < 0:
            raise ClientError("bad_request", "after_seq must be 0 or more")
        row = await self.gate.authorize(principal, session_id, Access.FOLLOW)
        # Enter the room before reading the backlog: an event committed in between is then
        # both replayed and streamed (the client drops the duplicate), never neither.
        staff = principal.is_staff
        await self.enter_room(sid, room(session_id, staff))
        async with self.store.sessionmaker() as db:
            fresh = await db.get(SessionRow, session_id) or row
        truncated = fresh.last_seq - after > REPLAY_LIMIT
        # Read the state before the events: every event up to state.last_seq is then in the
        # replay, and anything newer arrives live (duplicates are dropped by seq).
        events = [] if truncated else await self.store.since(session_id, after, REPLAY_LIMIT + 1)
        if not staff:
            events = [for_people(e) for e in events]
        return {
            "state": session_state(fresh, self.m.clock),
            "events": events,
            "truncated": truncated,
        }

    async def handle_unfollow(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``unfollow {session_id}``: stop streaming that session's events."""
        data = require_fields(data, {"session_id": str})
        session_id = session_id_of(data)
        for staff in (True, False):
            await self.leave_room(sid, room(session_id, staff))
        return {"session_id": session_id}

    async def handle_watch_board(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``watch_board {}`` (on-call, admin) → the clinic's open alarms; then ``board`` live."""
        require_fields(data, {})
        if principal.invite_id is not None or principal.role not in BOARD_ROLES:
            raise ClientError("forbidden", "the alarm board is for on-call staff")
        await self.gate.authorize_clinic(principal)
        await self.enter_room(sid, board_room(principal.clinic_id))
        return {"alarms": await self.m.alarms.open_alarms(principal.clinic_id)}

    async def handle_roster(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``roster {}`` (staff) → the open sessions the caller may see, most urgent first."""
        require_fields(data, {})
        if not principal.is_staff:
            raise ClientError("forbidden", "the roster is for clinic staff")
        await self.gate.authorize_clinic(principal)
        async with self.store.sessionmaker() as db:
            rows = (
                (
                    await db.execute(
                        select(SessionRow)
                        .where(visible_sessions(principal))
                        .where(
                            SessionRow.phase.not_in(
                                [Phase.COMPLETED.value, Phase.ENDED_EARLY.value]
                            )
                        )
                        .limit(500)
                    )
                )
                .scalars()
                .all()
            )
        return {"sessions": await self.roster.entries(list(rows))}

    # -- the clock ---------------------------------------------------------------------------

    async def handle_act(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``act {session_id, action, reason?}``: admit, start_dosing, sign_off or end."""
        data = require_fields(data, {"session_id": str, "action": str}, {"reason": str})
        try:
            self.m.lifecycle.check_action(data["action"])
            session_id = await self._session(principal, data, Access.CONTROL)
            state = await self.m.lifecycle.perform(
                session_id, data["action"], data.get("reason"), actor=principal.subject
            )
        except TransitionError as exc:
            raise _refused(exc) from None
        return {"state": state}

    # -- reports from the patient's side -----------------------------------------------------

    async def handle_raise_flag(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``raise_flag {session_id, code, note?, client_id}`` → the flag_raised event."""
        data = require_fields(
            data, {"session_id": str, "code": str, "client_id": str}, {"note": str}
        )
        session_id = await self._session(principal, data, Access.REPORT)
        try:
            event, duplicate = await self.m.flags.raise_flag(
                session_id,
                data["code"],
                data.get("note"),
                actor=principal.subject,
                client_id=_client_id(data, "raise_flag"),
            )
        except FlagError as exc:
            raise _refused(exc) from None
        return {"event": event, "duplicate": duplicate}

    async def handle_answer_checkin(
        self, sid: str, principal: Principal, data: Any
    ) -> dict[str, Any]:
        """``answer_checkin {session_id, ok, flags?, note?, client_id}``."""
        data = require_fields(
            data,
            {"session_id": str, "ok": bool, "client_id": str},
            {"flags": list, "note": str},
        )
        session_id = await self._session(principal, data, Access.REPORT)
        try:
            event, duplicate = await self.m.checkins.answer(
                session_id,
                ok=data["ok"],
                flags=data.get("flags", []),
                note=data.get("note"),
                actor=principal.subject,
                client_id=_client_id(data, "answer_checkin"),
            )
        except FlagError as exc:
            raise _refused(exc) from None
        return {"event": event, "duplicate": duplicate}

    async def handle_record_vitals(
        self, sid: str, principal: Principal, data: Any
    ) -> dict[str, Any]:
        """``record_vitals {session_id, systolic, diastolic, heart_rate?, client_id}``."""
        data = require_fields(
            data,
            {"session_id": str, "systolic": int, "diastolic": int, "client_id": str},
            {"heart_rate": int},
        )
        session_id = await self._session(principal, data, Access.REPORT)
        try:
            event, duplicate = await self.m.vitals.record(
                session_id,
                data["systolic"],
                data["diastolic"],
                data.get("heart_rate"),
                actor=principal.subject,
                client_id=_client_id(data, "record_vitals"),
            )
        except FlagError as exc:
            raise _refused(exc) from None
        return {"event": event, "duplicate": duplicate}

    async def handle_precheck(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``precheck {session_id, answers}`` → the checklist and what still blocks dosing."""
        data = require_fields(data, {"session_id": str, "answers": dict})
        session_id = await self._session(principal, data, Access.REPORT)
        try:
            return await self.m.vitals.submit_precheck(
                session_id, data["answers"], actor=principal.subject
            )
        except FlagError as exc:
            raise _refused(exc) from None

    async def handle_emergency(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``emergency {session_id, note?, client_id}``: page everyone at once."""
        data = require_fields(data, {"session_id": str, "client_id": str}, {"note": str})
        session_id = await self._session(principal, data, Access.REPORT)
        try:
            event, duplicate = await self.m.emergencies.press(
                session_id,
                data.get("note"),
                actor=principal.subject,
                client_id=_client_id(data, "emergency"),
            )
        except FlagError as exc:
            raise _refused(exc) from None
        return {"event": event, "duplicate": duplicate}

    async def handle_journal(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``journal {session_id, text, client_id}`` (the patient)."""
        data = require_fields(data, {"session_id": str, "text": str, "client_id": str})
        session_id = await self._session(principal, data, Access.PUBLISH)
        try:
            event, duplicate = await self.m.emergencies.journal(
                session_id,
                data["text"],
                actor=principal.subject,
                client_id=_client_id(data, "journal"),
            )
        except FlagError as exc:
            raise _refused(exc) from None
        return {"event": event, "duplicate": duplicate}

    # -- clinicians --------------------------------------------------------------------------

    async def handle_note(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``note {session_id, text, client_id?}``: the clinicians' note thread."""
        data = require_fields(data, {"session_id": str, "text": str}, {"client_id": str})
        session_id = await self._session(principal, data, Access.CONTROL)
        cid = _client_id(data, "note") if "client_id" in data else None
        try:
            event, duplicate = await self.m.emergencies.note(
                session_id, data["text"], actor=principal.subject, client_id=cid
            )
        except FlagError as exc:
            raise _refused(exc) from None
        return {"event": event, "duplicate": duplicate}

    async def handle_clear_flag(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``clear_flag {session_id, flag_id, note?}`` (clinicians only)."""
        data = require_fields(data, {"session_id": str, "flag_id": str}, {"note": str})
        session_id = await self._session(principal, data, Access.CONTROL)
        try:
            flag = await self.m.flags.clear_flag(
                session_id, data["flag_id"], data.get("note"), actor=principal.subject
            )
        except FlagError as exc:
            raise _refused(exc) from None
        return {"flag": flag}

    async def handle_request_checkin(
        self, sid: str, principal: Principal, data: Any
    ) -> dict[str, Any]:
        """``request_checkin {session_id}``: ask the patient now."""
        data = require_fields(data, {"session_id": str})
        session_id = await self._session(principal, data, Access.CONTROL)
        try:
            return {"checkin": await self.m.checkins.request(session_id, actor=principal.subject)}
        except FlagError as exc:
            raise _refused(exc) from None

    async def _alarm(self, principal: Principal, data: dict[str, Any]) -> str:
        alarm_id = data["alarm_id"]
        if not alarm_id or len(alarm_id) > 64:
            raise ClientError("bad_request", "alarm_id must be 1 to 64 characters")
        try:
            session_id = await self.m.alarms.session_of(alarm_id)
        except AlarmError as exc:
            raise _refused(exc) from None
        await self.gate.authorize(principal, session_id, Access.RESPOND)
        return alarm_id

    async def handle_ack_alarm(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``ack_alarm {alarm_id}``: stop the paging (it re-triggers unless resolved)."""
        data = require_fields(data, {"alarm_id": str})
        alarm_id = await self._alarm(principal, data)
        try:
            return {"alarm": await self.m.alarms.acknowledge(alarm_id, actor=principal.subject)}
        except AlarmError as exc:
            raise _refused(exc) from None

    async def handle_resolve_alarm(
        self, sid: str, principal: Principal, data: Any
    ) -> dict[str, Any]:
        """``resolve_alarm {alarm_id, note?}``: the alarm is dealt with."""
        data = require_fields(data, {"alarm_id": str}, {"note": str})
        alarm_id = await self._alarm(principal, data)
        try:
            alarm = await self.m.alarms.resolve(
                alarm_id, actor=principal.subject, note=data.get("note")
            )
        except AlarmError as exc:
            raise _refused(exc) from None
        return {"alarm": alarm}
