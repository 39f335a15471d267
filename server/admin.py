"""HTTP for running a clinic: people, session assignment and the clinic's protocol.

The admin page (``static/admin/``) is its one client. Creating and changing accounts and the
protocol is for admins only; staff may list the clinic's patients and clinicians (clinicians
schedule sessions too). Every body is validated; errors use the API's JSON error shape.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select

from monitoring.protocol import Protocol, ProtocolError
from server import accounts
from server.api import json_body, principal_of
from server.auth import Access, Principal, hash_password
from server.db import for_writing
from server.gate import ClientError, require_fields
from server.keys import CLOCK, GATE, SESSIONMAKER, STORE
from server.models import Clinic, Role, User

log = logging.getLogger(__name__)

MAX_USERS_LISTED = 2000


def _require_admin(p: Principal) -> None:
    if p.invite_id is not None or p.role != Role.ADMIN:
        raise ClientError("forbidden", "only the clinic's admins do this")


async def list_users(request: web.Request) -> web.Response:
    """``GET /api/users[?role=R]`` → the clinic's accounts (admins: everyone; other staff: the
    patients and clinicians they schedule sessions with)."""
    p = await principal_of(request)
    if not p.is_staff:
        raise ClientError("forbidden", "the clinic's people are listed for staff only")
    role = request.query.get("role")
    if role is not None and role not in {r.value for r in Role}:
        raise ClientError("bad_request", f"role is one of {', '.join(r.value for r in Role)}")
    query = select(User).where(User.clinic_id == p.clinic_id).order_by(User.display_name)
    if p.role != Role.ADMIN:
        query = query.where(User.role.in_([Role.PATIENT.value, Role.CLINICIAN.value]))
    if role is not None:
        query = query.where(User.role == role)
    async with request.app[SESSIONMAKER]() as db:
        users = (await db.execute(query.limit(MAX_USERS_LISTED))).scalars().all()
    return web.json_response({"users": [accounts.user_json(u) for u in users]})


async def create_user(request: web.Request) -> web.Response:
    """``POST /api/users {username, display_name, role, password?}`` (admins)."""
    p = await principal_of(request)
    _require_admin(p)
    data = require_fields(
        await json_body(request),
        {"username": str, "display_name": str, "role": str},
        {"password": str},
    )
    async with request.app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        clinic = await db.get(Clinic, p.clinic_id)
        assert clinic is not None  # a signed-in admin's clinic exists
        user = await accounts.create_user(
            db,
            clinic=clinic,
            username=data["username"],
            role=data["role"],
            display_name=data["display_name"],
            password=data.get("password") or None,
        )
        body = accounts.user_json(user)
    log.info("user created", extra={"who": p.subject, "user": body["id"]})
    return web.json_response(body, status=201)


async def update_user(request: web.Request) -> web.Response:
    """``PATCH /api/users/{id} {active?, display_name?, password?}`` (admins).

    A disabled account is refused at its next request or event (tokens already issued stop
    working); an admin cannot disable themself (a clinic with no admin cannot be run).
    """
    p = await principal_of(request)
    _require_admin(p)
    data = require_fields(
        await json_body(request), {}, {"active": bool, "display_name": str, "password": str}
    )
    if not data:
        raise ClientError("bad_request", "nothing to change: give active, display_name or password")
    try:
        user_id = int(request.match_info["id"])
    except ValueError:
        raise ClientError("not_found", "no such user") from None
    async with request.app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        user = await db.get(User, user_id)
        if user is None or user.clinic_id != p.clinic_id:
            raise ClientError("not_found", "no such user")
        if data.get("active") is False and user.id == p.user_id:
            raise ClientError("bad_request", "you cannot disable your own account")
        if "display_name" in data:
            if not data["display_name"].strip() or len(data["display_name"]) > 200:
                raise ClientError("bad_name", "a display name of 1-200 characters is required")
            user.display_name = data["display_name"].strip()
        if "password" in data:
            if len(data["password"]) < accounts.MIN_PASSWORD_CHARS:
                raise ClientError(
                    "weak_password",
                    f"a password has at least {accounts.MIN_PASSWORD_CHARS} characters",
                )
            user.password_hash = hash_password(data["password"])
        if "active" in data:
            user.active = data["active"]
        body = accounts.user_json(user)
    # Which fields changed, never their values (a password must not reach a log).
    log.info("user updated", extra={"who": p.subject, "user": user_id, "fields": sorted(data)})
    return web.json_response(body)


async def update_session(request: web.Request) -> web.Response:
    """``PATCH /api/sessions/{id} {clinician_id?, scheduled_start?}`` (admins, on-call and
    the assigned clinician): reassign or reschedule. ``clinician_id: null`` unassigns; the
    change is an event on the session's stream (``session_updated``)."""
    p = await principal_of(request)
    session_id = request.match_info["id"]
    await request.app[GATE].authorize(p, session_id, Access.MANAGE)
    data = require_fields(
        await json_body(request), {}, {"clinician_id": int | None, "scheduled_start": str}
    )
    if not data:
        raise ClientError("bad_request", "nothing to change: give clinician_id or scheduled_start")
    start: datetime | None = None
    if "scheduled_start" in data:
        start = accounts.parse_start(data["scheduled_start"])
    changes: dict[str, Any] = {}
    async with request.app[STORE].transaction() as tx:
        row = await tx.lock_session(session_id)
        if row is None:
            raise ClientError("unknown_session", "no such session")
        if row.phase in ("completed", "ended_early"):
            raise ClientError("session_ended", "the session has ended")
        if "clinician_id" in data:
            clinician_id = data["clinician_id"]
            if clinician_id is not None:
                await accounts.check_clinician(tx.db, clinician_id, row.clinic_id)
            if clinician_id != row.clinician_id:
                row.clinician_id = clinician_id
                changes["clinician_id"] = clinician_id
        if start is not None and start != row.scheduled_start:
            row.scheduled_start = start
            changes["scheduled_start"] = start.isoformat()
        if changes:
            await tx.append(session_id, "session_updated", changes, actor=p.subject)
    log.info("session updated", extra={"who": p.subject, "session": session_id})
    return web.json_response({"session_id": session_id, "changed": changes})


async def get_protocol(request: web.Request) -> web.Response:
    """``GET /api/protocol`` → the clinic's protocol in full (defaults filled in), whether the
    clinic changed it, and the defaults (staff)."""
    p = await principal_of(request)
    if not p.is_staff:
        raise ClientError("forbidden", "the protocol is for staff")
    async with request.app[SESSIONMAKER]() as db:
        clinic = await db.get(Clinic, p.clinic_id)
    stored = clinic.protocol if clinic is not None else None
    return web.json_response(
        {
            "protocol": Protocol.from_dict(stored).as_dict(),
            "custom": stored is not None,
            "defaults": Protocol().as_dict(),
        }
    )


async def put_protocol(request: web.Request) -> web.Response:
    """``PUT /api/protocol {protocol}`` (admins): validate and store the clinic's protocol.

    Fields left out take the defaults; ``{"protocol": null}`` goes back to the defaults. New
    sessions snapshot it; sessions already created keep theirs.
    """
    p = await principal_of(request)
    _require_admin(p)
    body = await json_body(request)
    if not isinstance(body, dict) or "protocol" not in body:
        raise ClientError("bad_request", 'the body is {"protocol": {...}} (or null)')
    document = body["protocol"]
    if document is not None and not isinstance(document, dict):
        raise ClientError("bad_protocol", "protocol: expected an object")
    try:
        protocol = Protocol.from_dict(document)
    except ProtocolError as exc:
        raise ClientError("bad_protocol", str(exc)) from None
    async with request.app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        clinic = await db.get(Clinic, p.clinic_id)
        assert clinic is not None
        clinic.protocol = None if document is None else protocol.as_dict()
    log.info("protocol set", extra={"who": p.subject, "clinic": p.clinic_id})
    return web.json_response(
        {"protocol": protocol.as_dict(), "custom": document is not None, "at": _now(request)}
    )


def _now(request: web.Request) -> str:
    return request.app[CLOCK].now().isoformat()


def setup_admin_routes(app: web.Application) -> None:
    """Register the admin routes on *app*."""
    r = app.router
    r.add_get("/api/users", list_users)
    r.add_post("/api/users", create_user)
    r.add_patch("/api/users/{id}", update_user)
    r.add_patch("/api/sessions/{id}", update_session)
    r.add_get("/api/protocol", get_protocol)
    r.add_put("/api/protocol", put_protocol)
