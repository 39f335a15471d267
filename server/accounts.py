"""Creating clinics, users, sessions and invites (used by the API, the CLI and the demo)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from monitoring.events import EventStore
from monitoring.protocol import Protocol
from server.auth import DEFAULT_INVITE_TTL, hash_password
from server.models import Clinic, Invite, InviteRole, Phase, Role, User
from server.models import Session as SessionRow

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
MIN_PASSWORD_CHARS = 10
MAX_INVITE_TTL = timedelta(days=30)


class AccountError(ValueError):
    """Bad input for an account operation; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def user_json(user: User) -> dict[str, Any]:
    """An account as the API shows it (never the password hash)."""
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "clinic_id": user.clinic_id,
        "active": user.active,
        "has_password": user.password_hash is not None,
    }


async def get_or_create_clinic(db: AsyncSession, name: str) -> Clinic:
    """The clinic called *name*, created with the default protocol if missing."""
    clinic = (await db.execute(select(Clinic).where(Clinic.name == name))).scalar_one_or_none()
    if clinic is None:
        clinic = Clinic(name=name, protocol=None)
        db.add(clinic)
        await db.flush()
    return clinic


async def create_user(
    db: AsyncSession,
    *,
    clinic: Clinic,
    username: str,
    role: str,
    display_name: str,
    password: str | None,
) -> User:
    """A new account; staff need a password of at least ``MIN_PASSWORD_CHARS`` characters."""
    username = username.strip().lower()
    if not USERNAME_RE.match(username):
        raise AccountError(
            "bad_username", "a username is 2-63 of a-z, 0-9, '.', '_', '-', starting alphanumeric"
        )
    if role not in {r.value for r in Role}:
        raise AccountError("bad_role", f"role must be one of {', '.join(r.value for r in Role)}")
    if not display_name.strip():
        raise AccountError("bad_name", "a display name is required")
    if password is not None and len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(
            "weak_password", f"a password has at least {MIN_PASSWORD_CHARS} characters"
        )
    if password is None and role != Role.PATIENT:
        raise AccountError("password_required", "staff accounts need a password")
    user = User(
        clinic_id=clinic.id,
        username=username,
        role=role,
        display_name=display_name.strip(),
        password_hash=hash_password(password) if password else None,
    )
    db.add(user)
    try:
        await db.flush()
    except IntegrityError:
        raise AccountError("username_taken", f"the username {username!r} is taken") from None
    return user


def parse_start(text: str) -> datetime:
    """A scheduled start from ISO 8601 text with a time zone (a bare local time is ambiguous:
    the patient and the clinic may not share one)."""
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        raise AccountError("bad_request", "scheduled_start must be an ISO 8601 time") from None
    if start.tzinfo is None:
        raise AccountError("bad_request", "scheduled_start needs a time zone")
    return start


async def check_clinician(db: AsyncSession, clinician_id: int, clinic_id: int) -> User:
    """The active clinician *clinician_id* of *clinic_id*, or a ``bad_clinician`` refusal."""
    clinician = await db.get(User, clinician_id)
    if (
        clinician is None
        or clinician.role != Role.CLINICIAN
        or clinician.clinic_id != clinic_id
        or not clinician.active
    ):
        raise AccountError("bad_clinician", "the clinician must be an active clinician here")
    return clinician


async def create_session(
    store: EventStore,
    *,
    clinic_id: int,
    patient_id: int,
    clinician_id: int | None,
    scheduled_start: datetime,
    actor: str,
) -> dict[str, Any]:
    """A new session in the lobby, with the clinic's protocol snapshotted; returns its id."""
    async with store.transaction() as tx:
        clinic = await tx.db.get(Clinic, clinic_id)
        patient = await tx.db.get(User, patient_id)
        if clinic is None:
            raise AccountError("unknown_clinic", "no such clinic")
        if patient is None or patient.role != Role.PATIENT or patient.clinic_id != clinic_id:
            raise AccountError("bad_patient", "the patient must be a patient of this clinic")
        if clinician_id is not None:
            await check_clinician(tx.db, clinician_id, clinic_id)
        protocol = Protocol.from_dict(clinic.protocol)
        row = SessionRow(
            clinic_id=clinic_id,
            patient_id=patient_id,
            clinician_id=clinician_id,
            scheduled_start=scheduled_start,
            protocol=protocol.as_dict(),
            phase=Phase.LOBBY.value,
            phase_started_at=store.clock.now(),
            last_seq=0,
        )
        tx.db.add(row)
        await tx.db.flush()
        await tx.append(
            row.id,
            "session_created",
            {
                "patient_id": patient_id,
                "clinician_id": clinician_id,
                "scheduled_start": scheduled_start.isoformat(),
                "protocol": protocol.as_dict(),
            },
            actor=actor,
        )
        return {"session_id": row.id}


async def create_invite(
    db: AsyncSession,
    *,
    session: SessionRow,
    role: str,
    name: str,
    phone: str | None,
    created_by: int | None,
    now: datetime,
    ttl: timedelta = DEFAULT_INVITE_TTL,
) -> Invite:
    """An invite row for *session*; the link's token is made from it by the caller."""
    if role not in {r.value for r in InviteRole}:
        raise AccountError(
            "bad_role", f"role must be one of {', '.join(r.value for r in InviteRole)}"
        )
    if not name.strip() or len(name) > 200:
        raise AccountError("bad_name", "a name of 1-200 characters is required")
    if phone is not None and len(phone) > 50:
        raise AccountError("bad_phone", "a phone number is at most 50 characters")
    if not timedelta(minutes=1) <= ttl <= MAX_INVITE_TTL:
        raise AccountError("bad_ttl", "an invite lasts between 1 minute and 30 days")
    invite = Invite(
        session_id=session.id,
        role=role,
        name=name.strip(),
        phone=phone,
        created_by=created_by,
        expires_at=now + ttl,
    )
    db.add(invite)
    await db.flush()
    return invite
