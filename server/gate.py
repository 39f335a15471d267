"""The gate every Socket.IO event passes: authentication, validation, authorisation, errors.

:class:`GuardedNamespace` is the base of Vigil's namespaces (``/signal`` and ``/monitor``).
It refuses a connection without a valid token (with a reason the client can show), routes
each event ``x`` to ``handle_x(sid, principal, data)``, answers unknown events and malformed
payloads with an error instead of dropping them, and turns :class:`ClientError` into the same
error shape everywhere::

    {"ok": false, "error": {"code": "...", "message": "..."}}

returned as the acknowledgement *and* emitted as an ``error`` event (a client that did not ask
for an acknowledgement still learns what went wrong). :class:`Gate` authorises each event
against the database, never against what was true at connect time (DESIGN invariant 8).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import NoneType, UnionType
from typing import Any, get_args

import socketio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from monitoring.clock import Clock
from server.auth import Access, AuthError, Principal, authenticate, may
from server.models import Invite, User
from server.models import Session as SessionRow

log = logging.getLogger(__name__)

MAX_ID_CHARS = 64
TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    dict: "an object",
    list: "a list",
}


class ClientError(Exception):
    """A request the server refuses; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def payload(self) -> dict[str, Any]:
        """The error as sent to the client."""
        return {"ok": False, "error": {"code": self.code, "message": self.message}}


def require_fields(
    data: Any, required: dict[str, Any], optional: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Check *data* is an object with exactly these typed fields; raise ``bad_request``.

    A type is a class or a union such as ``int | None`` (a field that may be null)."""
    if not isinstance(data, dict):
        raise ClientError("bad_request", "the payload must be a JSON object")
    optional = optional or {}
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise ClientError("bad_request", f"unknown field(s): {', '.join(unknown)}")
    for name in required:
        if name not in data:
            raise ClientError("bad_request", f"missing field {name!r}")
    for name, typ in {**required, **optional}.items():
        if name in data and not _accepts(typ, data[name]):
            raise ClientError("bad_request", f"field {name!r} must be {_type_name(typ)}")
    return data


def _accepts(typ: Any, value: Any) -> bool:
    # JSON true/false are Python ints too: they are booleans only where booleans are asked for.
    if isinstance(value, bool):
        return typ is bool or (isinstance(typ, UnionType) and bool in get_args(typ))
    return isinstance(value, typ)


def _type_name(typ: Any) -> str:
    if isinstance(typ, UnionType):
        return " or ".join("null" if t is NoneType else _type_name(t) for t in get_args(typ))
    return TYPE_NAMES.get(typ, typ.__name__)


def session_id_of(data: dict[str, Any]) -> str:
    """The ``session_id`` field, checked for shape."""
    sid = data["session_id"]
    if not sid or len(sid) > MAX_ID_CHARS:
        raise ClientError("bad_request", "session_id must be 1 to 64 characters")
    return sid


class Gate:
    """Authentication and per-event authorisation against the database."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], secret: str, clock: Clock
    ) -> None:
        self.sessionmaker = sessionmaker
        self.secret = secret
        self.clock = clock

    async def authenticate(self, token: object) -> Principal:
        """The principal behind *token*; raises :class:`AuthError` with the reason."""
        async with self.sessionmaker() as db:
            return await authenticate(db, token, self.secret, self.clock.now())

    async def authorize(self, principal: Principal, session_id: str, access: Access) -> SessionRow:
        """The session row if *principal* may have *access*; ``forbidden`` or ``unknown_session``.

        An unknown session and someone else's session give different codes only to staff of
        the clinic; a patient probing ids learns nothing beyond "forbidden".
        """
        async with self.sessionmaker() as db:
            await self._still_valid(db, principal)
            row = await db.get(SessionRow, session_id)
        if row is None:
            if principal.is_staff:
                raise ClientError("unknown_session", f"no session {session_id}")
            raise ClientError("forbidden", "you may not access this session")
        if not may(principal, row, access):
            raise ClientError("forbidden", f"you may not {access.value} this session")
        return row

    async def authorize_clinic(self, principal: Principal) -> None:
        """For requests about no one session (roster, board): the credential still stands."""
        async with self.sessionmaker() as db:
            await self._still_valid(db, principal)

    async def _still_valid(self, db: AsyncSession, principal: Principal) -> None:
        now = self.clock.now()
        if principal.expires_at is not None and principal.expires_at <= now.timestamp():
            raise ClientError("token_expired", "your sign-in has expired; sign in again")
        # A revoked invite or a disabled account stops working on its next event, not at its
        # next connect.
        if principal.invite_id is not None:
            await self._check_invite(db, principal)
        elif principal.user_id is not None:
            user = await db.get(User, principal.user_id)
            if user is None or not user.active:
                raise ClientError("account_disabled", "this account is disabled")

    async def _check_invite(self, db: AsyncSession, principal: Principal) -> None:
        invite = await db.get(Invite, principal.invite_id)
        if invite is None or invite.revoked_at is not None:
            raise ClientError("invite_revoked", "this invite link has been revoked")
        if invite.expires_at <= self.clock.now():
            raise ClientError("token_expired", "this invite link has expired")


Handler = Callable[[str, Principal, Any], Awaitable[Any]]


class GuardedNamespace(socketio.AsyncNamespace):
    """Base namespace: token on connect, ``handle_<event>`` routing, uniform errors."""

    def __init__(self, namespace: str, gate: Gate) -> None:
        super().__init__(namespace)
        self.gate = gate
        self.principals: dict[str, Principal] = {}

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Refuse a connection without a valid token, with a reason the client can show."""
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            principal = await self.gate.authenticate(token)
        except AuthError as exc:
            log.info("connection refused", extra={"ns": self.namespace, "code": exc.code})
            # The client receives {"message": ..., "data": {"code": ..., "message": ...}}.
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code, "message": exc.message}
            ) from None
        self.principals[sid] = principal
        log.info("connected", extra={"ns": self.namespace, "sid": sid, "who": principal.subject})
        await self.connected(sid, principal)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        """Forget the connection and let the subclass clean up."""
        principal = self.principals.pop(sid, None)
        if principal is not None:
            await self.disconnected(sid, principal)

    async def connected(self, sid: str, principal: Principal) -> None:
        """Hook: a connection was accepted."""

    async def disconnected(self, sid: str, principal: Principal) -> None:
        """Hook: a connection ended (network drop or leave)."""

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Route an event to ``handle_<event>``; every failure becomes an error payload."""
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        principal = self.principals.get(sid)
        try:
            if principal is None:
                raise ClientError("not_connected", "connect with a token first")
            handler = getattr(self, f"handle_{event}", None) if event.isidentifier() else None
            if handler is None:
                raise ClientError("unknown_event", f"unknown event {event[:40]!r}")
            if len(args) != 2:
                raise ClientError("bad_request", "send exactly one JSON object with the event")
            result = await handler(sid, principal, args[1])
            return {"ok": True, **(result or {})}
        except (ClientError, AuthError) as exc:
            err = exc if isinstance(exc, ClientError) else ClientError(exc.code, exc.message)
            log.info(
                "event refused",
                extra={"ns": self.namespace, "sid": sid, "event": event[:40], "code": err.code},
            )
            payload = err.payload()
            await self.emit("error", {"event": event[:40], **payload["error"]}, to=sid)
            return payload
        except Exception:
            log.exception("event failed", extra={"ns": self.namespace, "event": event[:40]})
            err = ClientError("internal_error", "the server could not handle this request")
            await self.emit("error", {"event": event[:40], **err.payload()["error"]}, to=sid)
            return err.payload()
