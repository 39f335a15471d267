"""HTTP: pages, login, sessions, invites, clock actions, /healthz and /metrics.

Every body is validated; every error is ``{"error": {"code", "message"}}`` with a fitting
status. Tokens travel in ``Authorization: Bearer``; links put them in the URL *fragment*, which
browsers never send, so they never reach a log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from monitoring.lifecycle import TransitionError, session_state
from monitoring.namespace import for_people
from monitoring.protocol import Protocol
from server import accounts
from server.auth import (
    Access,
    AuthError,
    Principal,
    invite_token,
    load_user,
    login_token,
    may,
    verify_password,
    visible_sessions,
)
from server.db import for_writing, ping
from server.gate import ClientError, require_fields
from server.keys import (
    CLOCK,
    ENGINE,
    GATE,
    LIFECYCLE,
    METRICS,
    MONITOR,
    MONITORING,
    RELAY,
    ROSTER,
    SESSIONMAKER,
    SETTINGS,
    SIGNAL,
    STORE,
)
from server.models import Invite, Phase, Role, User
from server.models import Session as SessionRow

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATUS = {
    "bad_request": 400,
    "auth_required": 401,
    "token_expired": 401,
    "token_invalid": 401,
    "bad_credentials": 401,
    "account_disabled": 401,
    "invite_revoked": 401,
    "forbidden": 403,
    "unknown_session": 404,
    "not_found": 404,
    "no_picture": 404,
    "wrong_phase": 409,
    "precheck_blocked": 409,
    "open_high_flags": 409,
    "open_high_alarms": 409,
    "session_ended": 409,
    "username_taken": 409,
    "payload_too_large": 413,
    "internal_error": 500,
}
MAX_INVITE_TTL_HOURS = 24 * 30


def _error(code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=STATUS.get(code, 400)
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn refusals into JSON errors; never let an exception become an HTML 500 page."""
    try:
        return await handler(request)
    except (ClientError, AuthError, accounts.AccountError, TransitionError) as exc:
        return _error(exc.code, exc.message)
    except web.HTTPRequestEntityTooLarge:
        return _error("payload_too_large", "the request body is too large")
    except web.HTTPException as exc:
        if request.path.startswith("/api/") and exc.status >= 400:
            # API clients get the same JSON error shape for routing errors too.
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
            return web.json_response(
                {"error": {"code": code, "message": exc.reason}}, status=exc.status
            )
        raise
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        return _error("internal_error", "the server could not handle this request")


async def json_body(request: web.Request) -> Any:
    """The request's JSON body, or a ``bad_request`` refusal."""
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ClientError("bad_request", "the body must be JSON") from None


async def principal_of(request: web.Request) -> Principal:
    """Who sent *request* (``Authorization: Bearer``), or an auth refusal."""
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else None
    return await request.app[GATE].authenticate(token)


async def login(request: web.Request) -> web.Response:
    """``POST /api/login {username, password}`` → ``{token, user}``."""
    data = require_fields(await json_body(request), {"username": str, "password": str})
    async with request.app[SESSIONMAKER]() as db:
        user = await load_user(db, data["username"].strip().lower())
    # The same answer for an unknown user and a wrong password: no account enumeration.
    if user is None or not user.active or not verify_password(user.password_hash, data["password"]):
        log.info("login refused")
        raise ClientError("bad_credentials", "wrong username or password")
    token = login_token(user, request.app[SETTINGS].secret_key, request.app[CLOCK].now())
    log.info("login", extra={"who": f"user:{user.id}"})
    return web.json_response({"token": token, "user": accounts.user_json(user)})


async def me(request: web.Request) -> web.Response:
    """``GET /api/me`` → who the token belongs to."""
    p = await principal_of(request)
    return web.json_response(
        {
            "subject": p.subject,
            "role": p.role,
            "name": p.name,
            "clinic_id": p.clinic_id,
            "session_id": p.session_id,
        }
    )


async def config(request: web.Request) -> web.Response:
    """``GET /api/config`` → what pages need: ICE servers and the time scale (signed in only:
    TURN credentials are not for strangers)."""
    await principal_of(request)

    s = request.app[SETTINGS]
    return web.json_response(
        {"ice_servers": [i.as_dict() for i in s.ice_servers], "time_scale": s.time_scale}
    )


async def _session_json(request: web.Request, row: SessionRow, patient_name: str) -> dict[str, Any]:

    state = session_state(row, request.app[CLOCK])
    health = request.app[RELAY].health(row.id)
    state.update(
        {
            "patient": {"id": row.patient_id, "display_name": patient_name},
            "clinician_id": row.clinician_id,
            "presence": request.app[SIGNAL].presence(row.id),
            "media_health": health.as_dict() if health else None,
        }
    )
    return state


def _catalogue(row: SessionRow) -> dict[str, Any]:
    """What a patient's page needs of the session's protocol: the flags it may report and
    when check-ins come."""
    proto = Protocol.from_dict(row.protocol)
    return {
        "flags": [
            {"code": f.code, "label": f.label, "priority": f.priority.value}
            for f in proto.flags
            if f.priority.value != "info"
        ],
        "checkin_every_minutes": proto.checkin_every_minutes,
        "checkin_grace_minutes": proto.checkin_grace_minutes,
    }


async def list_sessions(request: web.Request) -> web.Response:
    """``GET /api/sessions[?all=1]`` → the sessions the caller may see (open ones by default)."""
    p = await principal_of(request)
    query = (
        select(SessionRow, User.display_name)
        .join(User, User.id == SessionRow.patient_id)
        .where(visible_sessions(p))
        .order_by(SessionRow.scheduled_start)
    )
    if request.query.get("all") != "1":
        query = query.where(
            SessionRow.phase.not_in([Phase.COMPLETED.value, Phase.ENDED_EARLY.value])
        )
    async with request.app[SESSIONMAKER]() as db:
        rows = (await db.execute(query.limit(500))).all()
    return web.json_response({"sessions": [await _session_json(request, r, n) for r, n in rows]})


async def get_session(request: web.Request) -> web.Response:
    """``GET /api/sessions/{id}`` → state, presence, media health, the flags the patient may
    report and (for those who fill it in) the pre-check checklist."""
    p = await principal_of(request)
    row = await request.app[GATE].authorize(p, request.match_info["id"], Access.FOLLOW)
    async with request.app[SESSIONMAKER]() as db:
        patient = await db.get(User, row.patient_id)
    body = await _session_json(request, row, patient.display_name if patient else "")
    body["protocol"] = _catalogue(row)
    if may(p, row, Access.REPORT):
        body["precheck"] = row.precheck or {}
    return web.json_response(body)


async def session_events(request: web.Request) -> web.Response:
    """``GET /api/sessions/{id}/events?after_seq=N`` → events newer than N, in order."""
    p = await principal_of(request)
    session_id = request.match_info["id"]
    await request.app[GATE].authorize(p, session_id, Access.FOLLOW)
    try:
        after = int(request.query.get("after_seq", "0"))
    except ValueError:
        raise ClientError("bad_request", "after_seq must be an integer") from None
    if after < 0:
        raise ClientError("bad_request", "after_seq must be 0 or more")
    events = await request.app[STORE].since(session_id, after)
    if not p.is_staff:
        events = [for_people(e) for e in events]
    return web.json_response({"events": events})


async def create_session(request: web.Request) -> web.Response:
    """``POST /api/sessions {patient_id, clinician_id?, scheduled_start?}`` (clinician, admin)."""
    p = await principal_of(request)
    if p.role not in (Role.CLINICIAN, Role.ADMIN) or p.user_id is None:
        raise ClientError("forbidden", "only clinicians and admins create sessions")
    data = require_fields(
        await json_body(request),
        {"patient_id": int},
        {"clinician_id": int, "scheduled_start": str},
    )
    start = request.app[CLOCK].now()
    if "scheduled_start" in data:
        start = accounts.parse_start(data["scheduled_start"])
    clinician_id = data.get("clinician_id")
    if clinician_id is None and p.role == Role.CLINICIAN:
        clinician_id = p.user_id
    created = await accounts.create_session(
        request.app[STORE],
        clinic_id=p.clinic_id,
        patient_id=data["patient_id"],
        clinician_id=clinician_id,
        scheduled_start=start,
        actor=p.subject,
    )
    return web.json_response(created, status=201)


async def create_invite(request: web.Request) -> web.Response:
    """``POST /api/sessions/{id}/invites {role, name, phone?, ttl_hours?}`` → the link."""
    p = await principal_of(request)
    session_id = request.match_info["id"]
    row = await request.app[GATE].authorize(p, session_id, Access.MANAGE)
    data = require_fields(
        await json_body(request), {"role": str, "name": str}, {"phone": str, "ttl_hours": int}
    )
    now = request.app[CLOCK].now()
    ttl_hours = data.get("ttl_hours", 24 * 7)
    if not 1 <= ttl_hours <= MAX_INVITE_TTL_HOURS:
        raise ClientError("bad_ttl", f"ttl_hours is between 1 and {MAX_INVITE_TTL_HOURS}")
    ttl = timedelta(hours=ttl_hours)
    async with request.app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        invite = await accounts.create_invite(
            db,
            session=row,
            role=data["role"],
            name=data["name"],
            phone=data.get("phone"),
            created_by=p.user_id,
            now=now,
            ttl=ttl,
        )
    settings = request.app[SETTINGS]
    token = invite_token(invite, row.clinic_id, settings.secret_key, now)
    return web.json_response(
        {
            "invite_id": invite.id,
            "role": invite.role,
            "expires_at": invite.expires_at.isoformat(),
            "token": token,
            "url": invite_url(settings.public_url, invite.role, token),
        },
        status=201,
    )


async def revoke_invite(request: web.Request) -> web.Response:
    """``DELETE /api/invites/{id}``: the link stops working at its holder's next request."""
    p = await principal_of(request)
    async with request.app[SESSIONMAKER]() as db:
        invite = await db.get(Invite, request.match_info["id"])
    if invite is None:
        raise ClientError("not_found", "no such invite")
    await request.app[GATE].authorize(p, invite.session_id, Access.MANAGE)
    async with request.app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        invite = await db.get(Invite, request.match_info["id"])
        assert invite is not None
        if invite.revoked_at is None:
            invite.revoked_at = request.app[CLOCK].now()
    log.info("invite revoked", extra={"invite": invite.id, "who": p.subject})
    return web.json_response({"invite_id": invite.id, "revoked_at": invite.revoked_at.isoformat()})


def invite_url(public_url: str, role: str, token: str) -> str:
    """The link that opens a session for an invite holder (token in the fragment)."""
    page = "patient" if role == "patient" else "guest"
    return f"{public_url}/{page}/#token={token}"


async def act(request: web.Request) -> web.Response:
    """``POST /api/sessions/{id}/actions {action, reason?}``: the clock's human moves."""
    p = await principal_of(request)
    session_id = request.match_info["id"]
    data = require_fields(await json_body(request), {"action": str}, {"reason": str})
    lifecycle = request.app[LIFECYCLE]
    lifecycle.check_action(data["action"])
    await request.app[GATE].authorize(p, session_id, Access.CONTROL)
    state = await lifecycle.perform(session_id, data["action"], data.get("reason"), actor=p.subject)
    return web.json_response({"state": state})


async def roster(request: web.Request) -> web.Response:
    """``GET /api/roster`` → the caller's open sessions with flags, alarms, check-ins, media
    (staff only: alarms carry other people's details, such as the emergency address)."""
    p = await principal_of(request)
    if not p.is_staff:
        raise ClientError("forbidden", "the roster is for clinic staff")
    async with request.app[SESSIONMAKER]() as db:
        rows = (
            (
                await db.execute(
                    select(SessionRow)
                    .where(visible_sessions(p))
                    .where(
                        SessionRow.phase.not_in([Phase.COMPLETED.value, Phase.ENDED_EARLY.value])
                    )
                    .limit(500)
                )
            )
            .scalars()
            .all()
        )
    return web.json_response({"sessions": await request.app[ROSTER].entries(list(rows))})


async def alarm_board(request: web.Request) -> web.Response:
    """``GET /api/alarms`` → open alarms, priority then oldest first (on-call: the clinic's;
    a clinician: their sessions')."""
    p = await principal_of(request)
    if p.invite_id is not None or p.role == Role.PATIENT:
        raise ClientError("forbidden", "the alarm board is for staff")
    alarms = request.app[MONITORING].alarms
    if p.role == Role.CLINICIAN:
        async with request.app[SESSIONMAKER]() as db:
            ids = list(
                (await db.execute(select(SessionRow.id).where(visible_sessions(p)))).scalars()
            )
        return web.json_response({"alarms": await alarms.open_alarms(p.clinic_id, ids)})
    return web.json_response({"alarms": await alarms.open_alarms(p.clinic_id)})


async def session_record(request: web.Request) -> web.Response:
    """``GET /api/sessions/{id}/record`` → the session's record (staff and the patient)."""
    p = await principal_of(request)
    session_id = request.match_info["id"]
    row = await request.app[GATE].authorize(p, session_id, Access.FOLLOW)
    if p.invite_id is not None and p.role != "patient":
        raise ClientError("forbidden", "the record is for the patient and their clinicians")
    del row
    return web.json_response(await request.app[ROSTER].record(session_id))


async def thumbnail(request: web.Request) -> web.Response:
    """``GET /api/sessions/{id}/thumbnail`` → a JPEG of the patient's latest picture (those who
    may view the video); ``no_picture`` (404) when none arrived on this node."""
    p = await principal_of(request)
    session_id = request.match_info["id"]
    await request.app[GATE].authorize(p, session_id, Access.VIEW)
    jpeg = request.app[RELAY].thumbnail(session_id)
    if jpeg is None:
        raise ClientError("no_picture", "no picture from this patient yet")
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 when the database answers, 503 otherwise."""
    try:
        await ping(request.app[ENGINE])
    except Exception:
        log.warning("healthz: database unreachable")
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "database": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics`` in Prometheus text format."""
    m = request.app[METRICS]
    async with request.app[SESSIONMAKER]() as db:
        counts = dict(
            (
                await db.execute(select(SessionRow.phase, func.count()).group_by(SessionRow.phase))
            ).all()
        )
    for phase in Phase:
        m.sessions_by_phase.labels(phase.value).set(counts.get(phase.value, 0))
    m.active_sessions.set(sum(n for phase, n in counts.items() if not Phase(phase).terminal))
    m.relayed_tracks.set(request.app[RELAY].relayed_tracks)
    m.publishers.set(len(request.app[SIGNAL].publisher_sid))
    for ns in (request.app[SIGNAL], request.app[MONITOR]):
        m.connected_clients.labels(ns.namespace).set(len(ns.principals))
    return web.Response(body=m.render(), content_type="text/plain", charset="utf-8")


def _page(path: Path) -> Handler:
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    return handler


def setup_routes(app: web.Application, static_dir: Path, node_modules: Path) -> None:
    """Register every route on *app*."""
    app.middlewares.append(errors_middleware)
    r = app.router
    r.add_post("/api/login", login)
    r.add_get("/api/me", me)
    r.add_get("/api/config", config)
    r.add_get("/api/sessions", list_sessions)
    r.add_post("/api/sessions", create_session)
    r.add_get("/api/sessions/{id}", get_session)
    r.add_get("/api/sessions/{id}/events", session_events)
    r.add_post("/api/sessions/{id}/actions", act)
    r.add_post("/api/sessions/{id}/invites", create_invite)
    r.add_delete("/api/invites/{id}", revoke_invite)
    r.add_get("/api/roster", roster)
    r.add_get("/api/alarms", alarm_board)
    r.add_get("/api/sessions/{id}/record", session_record)
    r.add_get("/api/sessions/{id}/thumbnail", thumbnail)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    r.add_get("/", _page(static_dir / "index.html"))
    for page in ("clinician", "patient", "guest", "admin"):
        r.add_get(f"/{page}/", _page(static_dir / page / "index.html"))
    r.add_static("/static/", static_dir)
    vendor = node_modules / "socket.io-client" / "dist" / "socket.io.min.js"
    r.add_get("/vendor/socket.io.min.js", _page(vendor))
