"""Shared fixtures: real databases (SQLite and PostgreSQL), real Redis, a real Vigil server.

A test that needs a service it cannot reach is skipped with the reason on a laptop; with
``VIGIL_REQUIRE_SERVICES=1`` (set by .ci/run) the same situation is a failure, so CI never
passes by skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import text

from server import accounts
from server.app import create_app
from server.auth import invite_token, login_token
from server.config import Settings
from server.db import for_writing, make_engine, migrate
from server.keys import CLOCK, SESSIONMAKER, STORE
from server.models import Role

PG_ADMIN_URL = os.environ.get(
    "VIGIL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("VIGIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("VIGIL_REQUIRE_SERVICES") == "1"
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"
PASSWORD = "correct horse battery"


def need(ok: bool, reason: str) -> None:
    """Skip (laptop) or fail (CI) when a required service is missing."""
    if ok:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def _pg_reachable() -> str | None:
    async def probe() -> None:
        engine = make_engine(PG_ADMIN_URL)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}"
    return None


@dataclass(frozen=True)
class PgDatabase:
    """This run's PostgreSQL database, or why there is none."""

    url: str | None
    problem: str | None


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    """A fresh, migrated PostgreSQL database for this test run (dropped afterwards)."""
    problem = _pg_reachable()
    if problem:
        yield PgDatabase(None, problem)
        return
    name = f"vigil_test_{uuid.uuid4().hex[:10]}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    async def admin(sql: str) -> None:
        engine = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    async def setup() -> None:
        await admin(f'CREATE DATABASE "{name}"')
        engine = make_engine(url)
        await migrate(engine)
        await engine.dispose()

    asyncio.run(setup())
    yield PgDatabase(url, None)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "TRUNCATE alarms, checkins, vitals, flags, events, invites, sessions, users, clinics RESTART IDENTITY CASCADE"
                )
            )
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: PgDatabase
) -> AsyncIterator[str]:
    """Each persistence test runs once on SQLite and once on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'vigil.sqlite3'}"
        return
    need(pg_database.url is not None, pg_database.problem or "PostgreSQL unavailable")
    assert pg_database.url is not None
    await _truncate(pg_database.url)
    yield pg_database.url


@pytest.fixture
async def pg_url(pg_database: PgDatabase) -> str:
    """PostgreSQL only (several nodes share one database), emptied for this test."""
    need(pg_database.url is not None, pg_database.problem or "PostgreSQL unavailable")
    assert pg_database.url is not None
    await _truncate(pg_database.url)
    return pg_database.url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLite only, for tests about something other than persistence."""
    return f"sqlite+aiosqlite:///{tmp_path / 'vigil.sqlite3'}"


@pytest.fixture
def redis_url() -> str:
    """The real Redis (a synchronous probe, so async fixtures can ask for it lazily)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
        ok = True
    except Exception:
        ok = False
    finally:
        client.close()
    need(ok, f"Redis not reachable at {REDIS_URL}")
    return REDIS_URL


def make_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test server: given database, fixed secret, in-memory backends."""
    base = Settings(
        host="127.0.0.1",
        port=0,
        database_url=db_url,
        secret_key=TEST_SECRET,
        var_dir=tmp_path,
        time_scale=1.0,
    )
    return base.with_(**overrides)


@dataclass
class World:
    """A running server and the people and sessions seeded into it."""

    server: TestServer
    app: web.Application
    url: str
    tokens: dict[str, str]
    users: dict[str, int]
    sessions: dict[str, str]

    async def invite(self, session: str, role: str, ttl: timedelta = timedelta(hours=1)) -> str:
        """A token for a new invite of *role* to *session*."""
        from server.models import Session as SessionRow

        now = self.app[CLOCK].now()
        async with self.app[SESSIONMAKER]() as db, db.begin():
            await for_writing(db)
            row = await db.get(SessionRow, self.sessions[session])
            assert row is not None
            inv = await accounts.create_invite(
                db,
                session=row,
                role=role,
                name=f"{role} person",
                phone="555-0100",
                created_by=None,
                now=now,
                ttl=ttl,
            )
        return invite_token(inv, row.clinic_id, TEST_SECRET, now)


async def prepare_for_dosing(app: web.Application, session_id: str) -> None:
    """Pass the pre-check of a session in pre_check: complete checklist, normal vitals."""
    from server.demo import demo_precheck
    from server.keys import MONITORING

    m = app[MONITORING]
    await m.vitals.submit_precheck(session_id, demo_precheck("Pat"), actor="test")
    await m.vitals.record(session_id, 120, 80, 70, actor="test", client_id=f"pre-{session_id}")


async def seed(app: web.Application) -> tuple[dict[str, str], dict[str, int], dict[str, str]]:
    """Two clinics' worth of people: clinician A owns sessions s1 and s2; B is elsewhere."""
    now = app[CLOCK].now()
    users: dict[str, int] = {}
    tokens: dict[str, str] = {}
    async with app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        clinic = await accounts.get_or_create_clinic(db, "Clinic A")
        other = await accounts.get_or_create_clinic(db, "Clinic B")
        people = [
            ("clin_a", Role.CLINICIAN, clinic),
            ("clin_b", Role.CLINICIAN, clinic),
            ("oncall", Role.ONCALL, clinic),
            ("admin", Role.ADMIN, clinic),
            ("pat1", Role.PATIENT, clinic),
            ("pat2", Role.PATIENT, clinic),
            ("oncall_other", Role.ONCALL, other),
        ]
        for username, role, c in people:
            user = await accounts.create_user(
                db,
                clinic=c,
                username=username,
                role=role,
                display_name=username.title(),
                password=PASSWORD,
            )
            users[username] = user.id
            tokens[username] = login_token(user, TEST_SECRET, now)
        clinic_id = clinic.id
    sessions = {}
    for key, patient in (("s1", "pat1"), ("s2", "pat2")):
        created = await accounts.create_session(
            app[STORE],
            clinic_id=clinic_id,
            patient_id=users[patient],
            clinician_id=users["clin_a"],
            scheduled_start=now,
            actor="test",
        )
        sessions[key] = created["session_id"]
    return tokens, users, sessions


@pytest.fixture
async def world_factory(tmp_path: Path) -> AsyncIterator[Any]:
    """Start real Vigil servers (aiohttp on a free port) for given settings."""
    servers: list[TestServer] = []

    async def start(settings: Settings, *, do_seed: bool = True) -> World:
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        url = f"http://127.0.0.1:{server.port}"
        if do_seed:
            tokens, users, sessions = await seed(app)
        else:
            tokens, users, sessions = {}, {}, {}
        return World(server, app, url, tokens, users, sessions)

    yield start
    for server in reversed(servers):
        await server.close()
    # aiosqlite runs each connection in a thread; one still finishing a call that a cancelled
    # task made must find this loop alive to hand back its result.
    await asyncio.sleep(0.2)


@pytest.fixture
async def world(world_factory: Any, sqlite_url: str, tmp_path: Path) -> World:
    """A seeded server on SQLite with in-memory backends."""
    return await world_factory(make_settings(sqlite_url, tmp_path))
