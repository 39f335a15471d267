"""Accounts and tokens: argon2 password hashes, signed expiring tokens, and who may do what.

Tokens are HS256 JWTs signed with the server's secret key. A staff or patient login yields a
*user* token; an invite link carries an *invite* token scoped to one session, whose row must
still exist and be unrevoked each time it is used (revoking the row revokes the link).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.models import Invite, InviteRole, Role, User
from server.models import Session as SessionRow

TOKEN_ALGORITHM = "HS256"
LOGIN_TOKEN_TTL = timedelta(hours=12)
DEFAULT_INVITE_TTL = timedelta(days=7)

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of *password*."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when *password* matches; False for no hash or a mismatch (never raises)."""
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class AuthError(Exception):
    """A refused credential; ``code`` is machine-readable, ``message`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user account, or the holder of an invite to one session."""

    subject: str  # "user:<id>" or "invite:<id>"
    role: str  # a Role or an InviteRole value
    clinic_id: int
    name: str
    user_id: int | None = None
    invite_id: str | None = None
    session_id: str | None = None  # set for invites: the one session they open
    expires_at: int | None = None  # the token's expiry (Unix seconds), checked on every event

    @property
    def is_staff(self) -> bool:
        """Clinician, on-call or admin."""
        return self.user_id is not None and self.role in (Role.CLINICIAN, Role.ONCALL, Role.ADMIN)


def issue_token(principal: Principal, secret: str, now: datetime, expires: datetime) -> str:
    """A signed token for *principal* valid until *expires*."""
    claims: dict[str, Any] = {
        "sub": principal.subject,
        "role": principal.role,
        "clinic": principal.clinic_id,
        "name": principal.name,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
    }
    if principal.session_id:
        claims["sid"] = principal.session_id
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM)


def login_token(user: User, secret: str, now: datetime) -> str:
    """The token a successful username/password login returns."""
    return issue_token(principal_for_user(user), secret, now, now + LOGIN_TOKEN_TTL)


def invite_token(invite: Invite, clinic_id: int, secret: str, now: datetime) -> str:
    """The token inside an invite link; it expires with the invite."""
    return issue_token(principal_for_invite(invite, clinic_id), secret, now, invite.expires_at)


def principal_for_invite(
    invite: Invite, clinic_id: int, expires_at: int | None = None
) -> Principal:
    """The principal of an invite's holder: one session, the invite's role."""
    return Principal(
        subject=f"invite:{invite.id}",
        role=invite.role,
        clinic_id=clinic_id,
        name=invite.name,
        invite_id=invite.id,
        session_id=invite.session_id,
        expires_at=expires_at,
    )


def principal_for_user(user: User) -> Principal:
    """The principal of a user account."""
    return Principal(
        subject=f"user:{user.id}",
        role=user.role,
        clinic_id=user.clinic_id,
        name=user.display_name,
        user_id=user.id,
    )


def decode_token(token: object, secret: str) -> dict[str, Any]:
    """Verify signature and expiry; raise :class:`AuthError` with the reason otherwise."""
    if not isinstance(token, str) or not token:
        raise AuthError("auth_required", "a token is required")
    try:
        return jwt.decode(
            token, secret, algorithms=[TOKEN_ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(
            "token_expired", "the token has expired; log in or ask for a new link"
        ) from None
    except jwt.InvalidTokenError:
        raise AuthError("token_invalid", "the token is not valid") from None


async def authenticate(db: AsyncSession, token: object, secret: str, now: datetime) -> Principal:
    """Turn a token into a :class:`Principal`, checking the account or invite still stands."""
    claims = decode_token(token, secret)
    kind, _, ident = str(claims["sub"]).partition(":")
    expires_at = int(claims["exp"])
    if kind == "user" and ident.isdigit():
        user = await db.get(User, int(ident))
        if user is None or not user.active:
            raise AuthError("account_disabled", "this account no longer exists or is disabled")
        return replace(principal_for_user(user), expires_at=expires_at)
    if kind == "invite":
        invite = await db.get(Invite, ident)
        if invite is None or invite.revoked_at is not None:
            raise AuthError("invite_revoked", "this invite link has been revoked")
        if invite.expires_at <= now:
            raise AuthError("token_expired", "this invite link has expired")
        session = await db.get(SessionRow, invite.session_id)
        if session is None:
            raise AuthError("invite_revoked", "the session of this invite no longer exists")
        return principal_for_invite(invite, session.clinic_id, expires_at)
    raise AuthError("token_invalid", "the token names no known subject")


class Access(enum.StrEnum):
    """What a principal may want of a session."""

    PUBLISH = "publish"  # send the patient's camera and microphone
    VIEW = "view"  # receive the patient's media
    FOLLOW = "follow"  # receive the session's phase and state
    REPORT = "report"  # flags, check-in answers, vitals, pre-check, the emergency button
    RESPOND = "respond"  # acknowledge and resolve alarms
    CONTROL = "control"  # move the clock, clear flags, handle alarms, ask for check-ins
    MANAGE = "manage"  # invite people, reassign or reschedule (no clinical decision)


def may(principal: Principal, session: SessionRow, access: Access) -> bool:
    """DESIGN invariant 8: a patient touches only their own session, a sitter only the one
    they were invited to, a clinician only sessions assigned to them, on-call and admins their
    clinic's sessions. Checked on every event, not just on connect."""
    if session.clinic_id != principal.clinic_id:
        return False
    if principal.invite_id is not None:
        if principal.session_id != session.id:
            return False
        role = principal.role
        if access is Access.FOLLOW:
            return True
        if access is Access.PUBLISH:
            return role == InviteRole.PATIENT
        if access is Access.VIEW:
            return role == InviteRole.GUIDE
        if access is Access.REPORT:
            # The sitter is in the room and reports for the patient; a guide only watches.
            return role in (InviteRole.PATIENT, InviteRole.SITTER)
        return False
    role = principal.role
    if role == Role.PATIENT:
        return session.patient_id == principal.user_id and access in (
            Access.PUBLISH,
            Access.FOLLOW,
            Access.REPORT,
        )
    if role == Role.CLINICIAN:
        return session.clinician_id == principal.user_id and access is not Access.PUBLISH
    if role == Role.ONCALL:
        return access is not Access.PUBLISH
    if role == Role.ADMIN:
        # Admins run the clinic (and are the medical director, the last escalation level):
        # they watch, follow and answer alarms, but do not move the clinical clock.
        return access in (Access.VIEW, Access.FOLLOW, Access.RESPOND, Access.MANAGE)
    return False


async def load_user(db: AsyncSession, username: str) -> User | None:
    """The user with *username*, if any."""
    return (await db.execute(select(User).where(User.username == username))).scalar_one_or_none()


def visible_sessions(p: Principal) -> Any:
    """SQL condition for the sessions *p* may list (mirrors :func:`may` for FOLLOW)."""
    base = SessionRow.clinic_id == p.clinic_id
    if p.invite_id is not None:
        return base & (SessionRow.id == p.session_id)
    if p.role == Role.PATIENT:
        return base & (SessionRow.patient_id == p.user_id)
    if p.role == Role.CLINICIAN:
        return base & (SessionRow.clinician_id == p.user_id)
    return base
