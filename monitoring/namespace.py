"""The ``/monitor`` Socket.IO namespace: follow a session's numbered events; move its clock.

A client ``follow`` s a session with the last sequence number it has; the server replies with
the session's current state and every newer event (in order), then streams live ``event`` s.
A client drops an event whose ``seq`` it already has; on a gap it follows again with its cursor.
See docs/protocol.md, "Monitoring".
"""

from __future__ import annotations

import logging
from typing import Any

from monitoring.events import EventStore
from monitoring.lifecycle import Lifecycle, TransitionError, session_state
from server.auth import Access, Principal
from server.gate import ClientError, Gate, GuardedNamespace, require_fields, session_id_of
from server.models import Session as SessionRow

log = logging.getLogger(__name__)

NAMESPACE = "/monitor"
# A follower further behind than this gets a fresh snapshot (the state) instead of a replay.
REPLAY_LIMIT = 500


def room(session_id: str) -> str:
    """The room of everyone following a session's events."""
    return f"session:{session_id}"


class MonitorNamespace(GuardedNamespace):
    """Streams session events; accepts clinicians' clock actions."""

    def __init__(self, gate: Gate, store: EventStore, lifecycle: Lifecycle) -> None:
        super().__init__(NAMESPACE, gate)
        self.store = store
        self.lifecycle = lifecycle

    async def deliver(self, event: dict[str, Any]) -> None:
        """Bus subscriber: send a committed event to this node's followers of its session.

        ``ignore_queue``: with the Redis manager every node hears the bus, so each node emits
        only to its own clients; otherwise each event would reach a client once per node.
        """
        session_id = event["session_id"]
        await self.server.emit(
            "event", event, room=room(session_id), namespace=NAMESPACE, ignore_queue=True
        )
        if event.get("type") == "phase_changed":
            # The new state (deadline, clock) goes out too, so clients need not ask for it.
            async with self.store.sessionmaker() as db:
                row = await db.get(SessionRow, session_id)
            if row is not None:
                await self.server.emit(
                    "state",
                    session_state(row, self.lifecycle.clock),
                    room=room(session_id),
                    namespace=NAMESPACE,
                    ignore_queue=True,
                )

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
        await self.enter_room(sid, room(session_id))
        async with self.store.sessionmaker() as db:
            fresh = await db.get(SessionRow, session_id) or row
        truncated = fresh.last_seq - after > REPLAY_LIMIT
        # Read the state before the events: every event up to state.last_seq is then in the
        # replay, and anything newer arrives live (duplicates are dropped by seq).
        events = [] if truncated else await self.store.since(session_id, after, REPLAY_LIMIT + 1)
        return {
            "state": session_state(fresh, self.lifecycle.clock),
            "events": events,
            "truncated": truncated,
        }

    async def handle_unfollow(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``unfollow {session_id}``: stop streaming that session's events."""
        data = require_fields(data, {"session_id": str})
        session_id = session_id_of(data)
        await self.leave_room(sid, room(session_id))
        return {"session_id": session_id}

    async def handle_act(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``act {session_id, action, reason?}``: admit, start_dosing, sign_off or end."""
        data = require_fields(data, {"session_id": str, "action": str}, {"reason": str})
        session_id = session_id_of(data)
        try:
            self.lifecycle.check_action(data["action"])
            await self.gate.authorize(principal, session_id, Access.CONTROL)
            state = await self.lifecycle.perform(
                session_id, data["action"], data.get("reason"), actor=principal.subject
            )
        except TransitionError as exc:
            raise ClientError(exc.code, exc.message) from None
        return {"state": state}
