"""The event store: numbered events written in the state's own transaction, published after.

``async with store.transaction() as tx:`` opens one database transaction; ``tx.append(...)``
takes the session's next sequence number by incrementing ``sessions.last_seq`` (an UPDATE, so
PostgreSQL locks the row and concurrent writers queue: numbers are gapless and never reused),
and adds the event row. Only when the transaction has committed are the events handed to the
bus (DESIGN invariant 1: nothing is emitted before the commit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from monitoring.bus import EventBus
from monitoring.clock import Clock
from server.db import for_writing
from server.models import Event
from server.models import Session as SessionRow


def event_dict(ev: Event) -> dict[str, Any]:
    """The wire form of an event (docs/protocol.md, "Events")."""
    return {
        "session_id": ev.session_id,
        "seq": ev.seq,
        "type": ev.type,
        "at": ev.created_at.isoformat(),
        "actor": ev.actor,
        "client_id": ev.client_id,
        "data": ev.payload,
    }


@dataclass
class Transaction:
    """One unit of work: state changes plus the events that record them."""

    db: AsyncSession
    clock: Clock
    events: list[Event] = field(default_factory=list)
    # Session rows this transaction has locked: the lock holds until it ends.
    locked: dict[str, SessionRow] = field(default_factory=dict)

    async def append(
        self,
        session_id: str,
        type_: str,
        data: dict[str, Any],
        *,
        actor: str | None = None,
        client_id: str | None = None,
    ) -> Event:
        """Record an event for *session_id* with its next gapless sequence number."""
        seq = (
            await self.db.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(last_seq=SessionRow.last_seq + 1)
                .returning(SessionRow.last_seq)
            )
        ).scalar_one()
        ev = Event(
            session_id=session_id,
            seq=seq,
            type=type_,
            payload=data,
            actor=actor,
            client_id=client_id,
            created_at=self.clock.now(),
        )
        self.db.add(ev)
        self.events.append(ev)
        return ev

    async def lock_session(self, session_id: str) -> SessionRow | None:
        """Lock the session's row for this transaction and return it.

        Lock order, everywhere: the session row first, then its check-ins, flags and alarms.
        Taking the session first (as every ``append`` does anyway) means two transactions on
        one session queue instead of deadlocking on PostgreSQL. Locking again in the same
        transaction returns the same row without a query (a flag and its alarm both lock).
        """
        row = self.locked.get(session_id)
        if row is None:
            row = (
                await self.db.execute(
                    select(SessionRow).where(SessionRow.id == session_id).with_for_update()
                )
            ).scalar_one_or_none()
            if row is not None:
                self.locked[session_id] = row
        return row

    async def find_command(self, session_id: str, client_id: str) -> Event | None:
        """The event a client-made command id already produced, if any (invariant 3)."""
        return (
            await self.db.execute(
                select(Event).where(Event.session_id == session_id, Event.client_id == client_id)
            )
        ).scalar_one_or_none()


class EventStore:
    """Opens transactions and publishes their events after commit."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: EventBus,
        clock: Clock,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.bus = bus
        self.clock = clock
        self._on_written = on_written

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction whose events reach the bus only after it commits."""
        async with self.sessionmaker() as db:
            async with db.begin():
                await for_writing(db)
                tx = Transaction(db, self.clock)
                yield tx
            # Committed: from here on the events are facts and may be told.
            if tx.events and self._on_written is not None:
                self._on_written(len(tx.events))
            for ev in tx.events:
                await self.bus.publish(event_dict(ev))

    async def since(
        self, session_id: str, after_seq: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Events of *session_id* with a sequence above *after_seq*, in order."""
        async with self.sessionmaker() as db:
            rows = (
                await db.execute(
                    select(Event)
                    .where(Event.session_id == session_id, Event.seq > after_seq)
                    .order_by(Event.seq)
                    .limit(limit)
                )
            ).scalars()
            return [event_dict(ev) for ev in rows]


CommandBody = Callable[[Transaction], Awaitable[Event]]


async def run_command(
    store: EventStore, session_id: str, client_id: str | None, body: CommandBody
) -> tuple[dict[str, Any], bool]:
    """Run a client's command once however often it is retried (DESIGN invariant 3).

    *body* does the work in a transaction and returns the command's main event, which it
    must append with ``client_id``. If that client id already produced an event on the
    session, *body* does not run and that event is returned with ``duplicate=True``. Two
    copies racing each other meet the unique (session, client id) constraint: the loser's
    transaction rolls back whole and it returns the winner's event.
    """
    for attempt in range(2):
        try:
            async with store.transaction() as tx:
                if client_id is not None:
                    existing = await tx.find_command(session_id, client_id)
                    if existing is not None:
                        return event_dict(existing), True
                event = await body(tx)
                result = event_dict(event)
            return result, False
        except IntegrityError:
            if client_id is None or attempt == 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
