"""Persistence on SQLite and on the real PostgreSQL: schema, accounts, the event stream."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from monitoring.bus import MemoryBus
from monitoring.clock import Clock
from monitoring.events import EventStore
from server import accounts
from server.auth import verify_password
from server.db import for_writing, make_engine, make_sessionmaker, migrate
from server.models import Event, Role, User
from server.models import Session as SessionRow


@pytest.fixture
async def store(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    await migrate(engine)  # idempotent: the PostgreSQL database is already migrated
    yield EventStore(make_sessionmaker(engine), MemoryBus(), Clock())
    await engine.dispose()


async def _people(store: EventStore) -> tuple[int, int, int]:
    async with store.sessionmaker() as db, db.begin():
        await for_writing(db)
        clinic = await accounts.get_or_create_clinic(db, "Clinic")
        doc = await accounts.create_user(
            db,
            clinic=clinic,
            username="Doc.One",
            role=Role.CLINICIAN,
            display_name="Doc",
            password="a long password",
        )
        pat = await accounts.create_user(
            db, clinic=clinic, username="pat", role=Role.PATIENT, display_name="Pat", password=None
        )
        return clinic.id, doc.id, pat.id


async def _session(store: EventStore) -> str:
    """A new session of the clinic's patient, starting now."""
    clinic_id, doc_id, pat_id = await _people(store)
    created = await accounts.create_session(
        store,
        clinic_id=clinic_id,
        patient_id=pat_id,
        clinician_id=doc_id,
        scheduled_start=store.clock.now(),
        actor="test",
    )
    return str(created["session_id"])


async def test_accounts_and_argon2_hashes(store: EventStore) -> None:
    await _people(store)
    async with store.sessionmaker() as db:
        doc = (await db.execute(select(User).where(User.username == "doc.one"))).scalar_one()
        assert doc.password_hash and doc.password_hash.startswith("$argon2id$")
        assert verify_password(doc.password_hash, "a long password")
        assert not verify_password(doc.password_hash, "wrong")
    async with store.sessionmaker() as db:
        clinic = await accounts.get_or_create_clinic(db, "Clinic")
        with pytest.raises(accounts.AccountError) as e:
            await accounts.create_user(
                db,
                clinic=clinic,
                username="doc.one",
                role=Role.ONCALL,
                display_name="Again",
                password="another long one",
            )
        assert e.value.code == "username_taken"
    async with store.sessionmaker() as db:
        clinic = await accounts.get_or_create_clinic(db, "Clinic")
        for kwargs, code in [
            ({"username": "x", "role": "clinician", "password": "long enough pw"}, "bad_username"),
            ({"username": "ok.name", "role": "wizard", "password": "long enough pw"}, "bad_role"),
            ({"username": "ok.name", "role": "clinician", "password": "short"}, "weak_password"),
            ({"username": "ok.name", "role": "oncall", "password": None}, "password_required"),
        ]:
            with pytest.raises(accounts.AccountError) as e:
                await accounts.create_user(db, clinic=clinic, display_name="N", **kwargs)  # type: ignore[arg-type]
            assert e.value.code == code


async def test_session_created_with_protocol_snapshot_and_first_event(store: EventStore) -> None:
    clinic_id, doc_id, pat_id = await _people(store)
    start = datetime(2026, 11, 26, 18, 30, tzinfo=UTC)
    created = await accounts.create_session(
        store,
        clinic_id=clinic_id,
        patient_id=pat_id,
        clinician_id=doc_id,
        scheduled_start=start,
        actor="test",
    )
    async with store.sessionmaker() as db:
        row = await db.get(SessionRow, created["session_id"])
        assert row is not None
        assert row.scheduled_start == start and row.scheduled_start.tzinfo is not None
        assert row.protocol["dosing_minutes"] == 10 and row.last_seq == 1
    events = await store.since(created["session_id"], 0)
    assert [(e["seq"], e["type"]) for e in events] == [(1, "session_created")]
    with pytest.raises(accounts.AccountError):
        await accounts.create_session(
            store,
            clinic_id=clinic_id,
            patient_id=doc_id,
            clinician_id=doc_id,
            scheduled_start=start,
            actor="test",
        )


async def test_sequence_is_gapless_under_concurrent_writers(store: EventStore) -> None:
    sid = await _session(store)

    async def write(i: int) -> None:
        async with store.transaction() as tx:
            await tx.append(sid, "note", {"i": i})
            await asyncio.sleep(0)  # let another writer try to interleave

    await asyncio.gather(*(write(i) for i in range(25)))
    events = await store.since(sid, 0)
    assert [e["seq"] for e in events] == list(range(1, 27))
    assert sorted(e["data"]["i"] for e in events[1:]) == list(range(25))


async def test_a_failed_transaction_leaves_no_event_and_no_gap(store: EventStore) -> None:
    sid = await _session(store)
    published: list[dict[str, object]] = []

    async def seen(ev: dict[str, object]) -> None:
        published.append(ev)

    store.bus.subscribe(seen)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.append(sid, "note", {"lost": True})
            raise RuntimeError("state change failed")
    assert published == []  # nothing is told before (or without) the commit
    async with store.transaction() as tx:
        await tx.append(sid, "note", {"kept": True})
    events = await store.since(sid, 0)
    assert [e["seq"] for e in events] == [1, 2] and events[1]["data"] == {"kept": True}
    assert [e["seq"] for e in published] == [2]


async def test_client_id_is_stored_once(store: EventStore) -> None:
    sid = await _session(store)
    async with store.transaction() as tx:
        await tx.append(sid, "checkin", {"ok": True}, client_id="c-1")
    async with store.transaction() as tx:
        existing = await tx.find_command(sid, "c-1")
        assert existing is not None and existing.seq == 2
    with pytest.raises(IntegrityError):
        async with store.transaction() as tx:
            await tx.append(sid, "checkin", {"ok": True}, client_id="c-1")
    async with store.sessionmaker() as db:
        count = (await db.execute(select(func.count()).select_from(Event))).scalar()
        assert count == 2
        # The failed retry did not burn a sequence number either.
        row = await db.get(SessionRow, sid)
        assert row is not None and row.last_seq == 2


async def test_invites_expire_and_record_their_session(store: EventStore) -> None:
    sid = await _session(store)
    now = store.clock.now()
    async with store.sessionmaker() as db, db.begin():
        await for_writing(db)
        row = await db.get(SessionRow, sid)
        assert row is not None
        inv = await accounts.create_invite(
            db,
            session=row,
            role="sitter",
            name="Sam Sitter",
            phone="555-0101",
            created_by=row.clinician_id,
            now=now,
            ttl=timedelta(hours=2),
        )
        assert inv.expires_at == now + timedelta(hours=2)
        with pytest.raises(accounts.AccountError):
            await accounts.create_invite(
                db, session=row, role="puppeteer", name="X", phone=None, created_by=None, now=now
            )


async def test_migrations_are_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        await migrate(engine)
        await migrate(engine)
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert version == "0002"
    finally:
        await engine.dispose()
