"""Database engine, sessions and migrations (SQLAlchemy 2 async; SQLite or PostgreSQL)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# SQLite waits this long for a writer's lock instead of failing with "database is locked";
# the clock and a clinician's command may write at the same moment.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option marking a transaction that will write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "vigil_write"


def make_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # The driver would begin a transaction only at the first write, so a transaction
            # that reads a row and then updates it (a phase check, a deadline) would read
            # outside any transaction and could act on a stale row. We begin ourselves.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            # A writing transaction takes SQLite's single write lock up front (IMMEDIATE):
            # writers run one after another, which is what PostgreSQL's row locks (FOR UPDATE)
            # give us there. Readers begin DEFERRED: under WAL they never wait for writers,
            # and a busy roster never queues behind the scheduler.
            write = conn.get_execution_options().get(WRITE_OPTION)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


async def for_writing(db: AsyncSession) -> None:
    """Mark *db*'s transaction as one that writes (call inside ``begin()``, before its first
    statement: the connection is procured here, with the option, and then begins).

    On SQLite it then begins IMMEDIATE (see :func:`make_engine`); elsewhere this is a no-op.
    """
    await db.connection(execution_options={WRITE_OPTION: True})


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (we publish them after commit)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    """An Alembic config pointing at Vigil's migrations, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
    log.info("database migrated", extra={"db": engine.url.render_as_string(hide_password=True)})


async def ping(engine: AsyncEngine) -> None:
    """Raise if the database does not answer a trivial query."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
