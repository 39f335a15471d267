"""The relational schema: clinics, users, sessions, invites and the event stream.

Invariant 1 of docs/DESIGN: every change to a session is a row in ``events`` with a gapless
per-session ``seq``, written in the same transaction as the state it records. The counter lives
on the session row (``sessions.last_seq``) so that taking the next number locks that row and
concurrent writers queue instead of racing (see :mod:`monitoring.events`).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite keeps no zone, so values come back naive; the clock compares them with aware
    ``now()`` values, so we attach UTC on the way out and refuse naive values on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored: use timezone-aware UTC values")
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with naming conventions."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Role(enum.StrEnum):
    """Staff and patient roles; sitters and guides are invites, not accounts."""

    PATIENT = "patient"
    CLINICIAN = "clinician"
    ONCALL = "oncall"
    ADMIN = "admin"


class InviteRole(enum.StrEnum):
    """Who an invite link admits to one session."""

    PATIENT = "patient"  # the patient themself, without a password
    SITTER = "sitter"  # the trusted adult in the room
    GUIDE = "guide"  # a guide or guest who may watch


class Phase(enum.StrEnum):
    """The session clock's phases (CLINICAL.md, "One dosing session")."""

    LOBBY = "lobby"
    PRE_CHECK = "pre_check"
    DOSING = "dosing"
    ACTIVE = "active"
    RECOVERY = "recovery"
    AWAITING_SIGNOFF = "awaiting_signoff"
    COMPLETED = "completed"
    ENDED_EARLY = "ended_early"

    @property
    def terminal(self) -> bool:
        """True once nothing can move the session any more."""
        return self in (Phase.COMPLETED, Phase.ENDED_EARLY)


def _uuid() -> str:
    return str(uuid.uuid4())


class Clinic(Base):
    """A clinic; its ``protocol`` overrides the defaults of CLINICAL.md."""

    __tablename__ = "clinics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    protocol: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class User(Base):
    """A person with a login: patient, clinician, on-call nurse or admin."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"))
    username: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Session(Base):
    """One dosing session and its clock; phase timestamps are the clock's persisted state."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    clinician_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    scheduled_start: Mapped[datetime]
    # A snapshot of the clinic's protocol when the session was created: a protocol edited
    # mid-session must not move this session's clock.
    protocol: Mapped[dict[str, Any]] = mapped_column(JSON)
    phase: Mapped[str] = mapped_column(String(20), default=Phase.LOBBY.value)
    phase_started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # When the clock itself moves the session on; NULL while a human must act.
    phase_deadline: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    admitted_at: Mapped[datetime | None] = mapped_column(nullable=True)
    dosed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    active_at: Mapped[datetime | None] = mapped_column(nullable=True)
    recovery_at: Mapped[datetime | None] = mapped_column(nullable=True)
    awaiting_signoff_at: Mapped[datetime | None] = mapped_column(nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    signed_off_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    # The pre-check checklist as answered (sitter, address, fasting, medication changes,
    # intention, emergency contact); it gates the start of dosing.
    precheck: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Why a clinician started dosing despite a blocking vital sign or checklist item.
    dosing_override: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Media presence, kept here (not in one process's memory) so that any process can tell a
    # disconnected patient or an unwatched session: counts change by atomic UPDATEs.
    publisher_online: Mapped[bool] = mapped_column(default=False)
    publisher_changed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    watchers: Mapped[int] = mapped_column(Integer, default=0)  # clinicians and on-call viewing
    watchers_changed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Invite(Base):
    """A signed link's record: revoking the row revokes the link."""

    __tablename__ = "invites"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(50), nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Event(Base):
    """One numbered change to a session (invariant 1)."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_events_session_seq"),
        # A client-made command id is stored once per session however often it is retried.
        UniqueConstraint("session_id", "client_id", name="uq_events_session_client_id"),
        Index("ix_events_created_at", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)
    client_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime]


class Flag(Base):
    """A side effect raised by the patient, the sitter or a clinician; cleared by a clinician."""

    __tablename__ = "flags"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    code: Mapped[str] = mapped_column(String(50))
    priority: Mapped[str] = mapped_column(String(10))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    raised_by: Mapped[str] = mapped_column(String(100))
    raised_at: Mapped[datetime]
    cleared_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cleared_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    clear_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class Vitals(Base):
    """One blood pressure and heart rate reading."""

    __tablename__ = "vitals"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    systolic: Mapped[int] = mapped_column(Integer)
    diastolic: Mapped[int] = mapped_column(Integer)
    heart_rate: Mapped[int | None] = mapped_column(Integer, nullable=True)
    context: Mapped[str] = mapped_column(String(20))  # pre_check, plus_40, discharge, other
    taken_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(100))


class CheckIn(Base):
    """A check-in: scheduled, a vitals prompt, or asked for by a clinician.

    pending (not yet due) → open (due: the patient is asked) → answered, or missed once
    ``grace_until`` passes (a dead-man's switch).
    """

    __tablename__ = "checkins"
    __table_args__ = (Index("ix_checkins_status_due", "status", "due_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # scheduled, vitals, on_demand
    due_at: Mapped[datetime]
    grace_until: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    answered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    answered_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    answer: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Alarm(Base):
    """An alarm: triggered → acknowledged → resolved, escalating while unacknowledged.

    ``next_step_at`` is the one persisted deadline of an alarm: the next escalation while
    triggered, the re-trigger while acknowledged, NULL once resolved or when nothing more can
    happen. At most one alarm per (session, dedup_key) is open at a time.
    """

    __tablename__ = "alarms"
    __table_args__ = (
        Index(
            "uq_alarms_open_dedup",
            "session_id",
            "dedup_key",
            unique=True,
            sqlite_where=text("status != 'resolved'"),
            postgresql_where=text("status != 'resolved'"),
        ),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    dedup_key: Mapped[str] = mapped_column(String(100))
    priority: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20), default="triggered")
    level: Mapped[int] = mapped_column(Integer, default=0)
    latched: Mapped[bool] = mapped_column(default=False)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    triggered_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None] = mapped_column(nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    next_step_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
