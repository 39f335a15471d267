"""The application factory: wires settings, database, bus, clock, relay and Socket.IO.

``create_app(settings)`` only wires. Long-lived objects are made in cleanup contexts (one
``yield`` each), added in dependency order and torn down in reverse, and live on the app under
typed ``web.AppKey`` s (DESIGN invariant 9: no module-level runtime state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from monitoring.bus import make_bus
from monitoring.clock import Clock
from monitoring.events import EventStore
from monitoring.namespace import MonitorNamespace
from monitoring.roster import Roster
from monitoring.service import Monitoring
from monitoring.technical import TechnicalMonitor, record_media_fact, reset_presence
from server import admin, api
from server.config import Settings
from server.db import make_engine, make_sessionmaker, migrate
from server.gate import Gate
from server.keys import (
    BUS,
    CLOCK,
    DEMO_LINKS,
    DEMO_PATIENTS,
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
    SIO,
    STORE,
    TECHNICAL,
)
from server.metrics import Metrics
from server.models import Phase
from signaling.namespace import SignalingNamespace
from signaling.relay import Relay

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
NODE_MODULES = Path(__file__).resolve().parent.parent / "node_modules"
# Socket.IO messages larger than this are refused by Engine.IO before we parse them.
MAX_MESSAGE_BYTES = 256 * 1024


class SchemaOutdated(RuntimeError):
    """PostgreSQL's schema is behind the code: run ``vigil migrate``."""


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    engine = make_engine(settings.database_url)
    if settings.is_sqlite:
        # The embedded default migrates itself; PostgreSQL is migrated by an operator.
        await migrate(engine)
    else:
        await _check_schema(engine)
    app[ENGINE] = engine
    app[SESSIONMAKER] = make_sessionmaker(engine)
    yield
    await engine.dispose()


async def _check_schema(engine: AsyncEngine) -> None:
    from alembic.script import ScriptDirectory

    from server.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    try:
        async with engine.connect() as conn:
            from sqlalchemy import text

            current = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except Exception:
        current = None
    if current != head:
        raise SchemaOutdated(
            f"database schema is at {current or 'nothing'}, code needs {head}: run `vigil migrate`"
        )


async def _monitoring(app: web.Application) -> AsyncIterator[None]:
    bus = make_bus(app[SETTINGS].redis_url)
    await bus.start()
    metrics = app[METRICS]
    store = EventStore(
        app[SESSIONMAKER], bus, app[CLOCK], on_written=lambda n: metrics.events_written.inc(n)
    )
    monitoring = Monitoring.build(store, app[CLOCK])
    app[BUS], app[STORE], app[MONITORING] = bus, store, monitoring
    app[LIFECYCLE] = monitoring.lifecycle
    app[GATE] = Gate(app[SESSIONMAKER], app[SETTINGS].secret_key, app[CLOCK])
    monitoring.scheduler.start()
    yield
    await monitoring.scheduler.stop()
    await bus.stop()


def _socketio(settings: Settings) -> socketio.AsyncServer:
    manager = socketio.AsyncRedisManager(settings.redis_url) if settings.redis_url else None
    return socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=[settings.public_url],
        max_http_buffer_size=MAX_MESSAGE_BYTES,
        logger=False,
        engineio_logger=False,
    )


async def _realtime(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    sio = app[SIO]
    relay = Relay()
    store = app[STORE]
    if not settings.redis_url:
        # One process holds every connection and none exists yet: presence a crash left in
        # the database is stale, and would hide a disconnected or unwatched session.
        await reset_presence(store, app[CLOCK].now())

    async def report(session_id: str, fact: str, data: dict[str, Any]) -> None:
        # Media facts are session events too: who watched and when belongs to the record;
        # the presence they imply is what the technical alarms judge.
        async with store.transaction() as tx:
            await tx.append(session_id, fact, data, actor="relay")
            await record_media_fact(tx, session_id, fact, data, app[CLOCK].now())

    def media_health(session_id: str) -> dict[str, Any] | None:
        health = relay.health(session_id)
        return health.as_dict() if health else None

    def video_age(session_id: str) -> float | bool | None:
        # False: this process does not hold the session's media, so it cannot judge.
        if session_id not in relay.sessions():
            return False
        health = relay.health(session_id)
        return health.seconds_since_video if health else None

    signal = SignalingNamespace(
        app[GATE], relay, [s.as_dict() for s in settings.ice_servers], report=report
    )
    monitoring = app[MONITORING]
    roster = Roster(store, app[CLOCK], media_health)
    technical = TechnicalMonitor(store, app[CLOCK], monitoring.alarms, video_age)
    monitor = MonitorNamespace(app[GATE], monitoring, roster)
    sio.register_namespace(signal)
    sio.register_namespace(monitor)

    async def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "phase_changed" and Phase(event["data"]["to"]).terminal:
            await signal.end_session(event["session_id"], event["data"]["to"])

    unsubscribers = [app[BUS].subscribe(monitor.deliver), app[BUS].subscribe(on_event)]
    app[RELAY], app[SIGNAL], app[MONITOR] = relay, signal, monitor
    app[ROSTER], app[TECHNICAL] = roster, technical
    technical.start()
    yield
    await technical.stop()
    for unsubscribe in unsubscribers:
        unsubscribe()
    for sid in list(signal.principals) + list(monitor.principals):
        for ns in (signal.namespace, monitor.namespace):
            try:
                await sio.disconnect(sid, namespace=ns)
            except Exception:
                pass
    await signal.close()
    await relay.close()


async def _demo(app: web.Application) -> AsyncIterator[None]:
    from server.demo import DemoPatients, seed_demo

    links = await seed_demo(app)
    patients = DemoPatients(app, links)
    patients.start()
    app[DEMO_LINKS] = links
    app[DEMO_PATIENTS] = patients
    yield
    await patients.stop()


# Closing one Engine.IO connection should take milliseconds; never let one hang shutdown.
CLOSE_CONNECTION_TIMEOUT_SECS = 1.0


async def _close_connections(app: web.Application) -> None:
    """on_shutdown: end every realtime connection before aiohttp waits for open handlers.

    aiohttp waits ``shutdown_timeout`` for handlers still running (each websocket is one)
    before the cleanup contexts run; closing them here makes a stop take milliseconds.
    The simulated patients go first: they are clients of this very server and would
    otherwise reconnect.
    """
    patients = app.get(DEMO_PATIENTS)
    if patients is not None:
        await patients.stop()
    eio = app[SIO].eio
    closing = [eio.disconnect(eio_sid) for eio_sid in list(eio.sockets)]
    if closing:
        # All at once, bounded: a connection whose peer vanished may never finish closing;
        # aiohttp cancels its handler after shutdown_timeout anyway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*closing, return_exceptions=True), CLOSE_CONNECTION_TIMEOUT_SECS
            )


def create_app(settings: Settings) -> web.Application:
    """The Vigil application for *settings* (the CLI and the tests call exactly this)."""
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    app[SETTINGS] = settings
    app[CLOCK] = Clock(settings.time_scale)
    app[METRICS] = Metrics()
    app[SIO] = sio = _socketio(settings)
    sio.attach(app)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_monitoring)
    app.cleanup_ctx.append(_realtime)
    if settings.demo:
        app.cleanup_ctx.append(_demo)
    app.on_shutdown.append(_close_connections)
    api.setup_routes(app, STATIC_DIR, NODE_MODULES)
    admin.setup_admin_routes(app)
    return app
