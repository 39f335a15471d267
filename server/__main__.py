"""The ``vigil`` command: run, migrate, create-user, create-session, set-protocol.

Settings come from ``VIGIL_*`` variables (read once); a bad value stops the command with a
clear message and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from server.config import Settings, SettingsError, load_settings
from server.db import for_writing
from server.logs import configure_logging

log = logging.getLogger("vigil")
SHUTDOWN_TIMEOUT_SECS = 2.0


def _run(settings: Settings) -> int:
    from server.app import create_app
    from server.keys import DEMO_LINKS

    app = create_app(settings)

    async def announce(app: web.Application) -> None:
        links = app.get(DEMO_LINKS)
        print(f"\nVigil is serving {settings.public_url}\n", flush=True)
        if links:
            print("Demo links (open the clinician link to watch the simulated patients):")
            for key in ("clinician", "oncall", "admin", "patient_invite", "login"):
                if key in links:
                    print(f"  {key:<15} {links[key]}")
            print(flush=True)

    app.on_startup.append(announce)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        access_log_format='%a "%r" %s %b %Tf',
        # Realtime connections were closed in on_shutdown; what is left is cancelled soon.
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECS,
    )
    return 0


async def _with_db(settings: Settings, fn: Callable[[Any, Any], Awaitable[int]]) -> int:
    from monitoring.bus import MemoryBus
    from monitoring.clock import Clock
    from monitoring.events import EventStore
    from server.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    try:
        store = EventStore(make_sessionmaker(engine), MemoryBus(), Clock(settings.time_scale))
        return await fn(engine, store)
    finally:
        await engine.dispose()


def _migrate(settings: Settings) -> int:
    from server.db import migrate

    async def go(engine: Any, store: Any) -> int:
        await migrate(engine)
        print("database is at the newest schema")
        return 0

    return asyncio.run(_with_db(settings, go))


def _create_user(settings: Settings, args: argparse.Namespace) -> int:
    from server import accounts

    password = args.password
    if password is None and args.role != "patient":
        password = getpass.getpass("Password: ")

    async def go(engine: Any, store: Any) -> int:
        from server.db import migrate

        if settings.is_sqlite:
            await migrate(engine)
        async with store.sessionmaker() as db, db.begin():
            await for_writing(db)
            clinic = await accounts.get_or_create_clinic(db, args.clinic)
            user = await accounts.create_user(
                db,
                clinic=clinic,
                username=args.username,
                role=args.role,
                display_name=args.display_name or args.username,
                password=password,
            )
            print(f"created {user.role} {user.username} (id {user.id}) in {clinic.name}")
        return 0

    try:
        return asyncio.run(_with_db(settings, go))
    except accounts.AccountError as exc:
        print(f"vigil: {exc.message}", file=sys.stderr)
        return 1


def _create_session(settings: Settings, args: argparse.Namespace) -> int:
    from server import accounts
    from server.api import invite_url
    from server.auth import invite_token, load_user

    async def go(engine: Any, store: Any) -> int:
        async with store.sessionmaker() as db:
            patient = await load_user(db, args.patient)
            clinician = await load_user(db, args.clinician) if args.clinician else None
        if patient is None or (args.clinician and clinician is None):
            print("vigil: unknown patient or clinician username", file=sys.stderr)
            return 1
        now = store.clock.now()
        created = await accounts.create_session(
            store,
            clinic_id=patient.clinic_id,
            patient_id=patient.id,
            clinician_id=clinician.id if clinician else None,
            scheduled_start=now,
            actor="cli",
        )
        from server.models import Session as SessionRow

        async with store.sessionmaker() as db, db.begin():
            await for_writing(db)
            row = await db.get(SessionRow, created["session_id"])
            invite = await accounts.create_invite(
                db,
                session=row,
                role="patient",
                name=patient.display_name,
                phone=None,
                created_by=None,
                now=now,
                ttl=timedelta(hours=args.ttl_hours),
            )
        token = invite_token(invite, patient.clinic_id, settings.secret_key, now)
        print(f"session {created['session_id']}")
        print(f"patient link: {invite_url(settings.public_url, 'patient', token)}")
        return 0

    try:
        return asyncio.run(_with_db(settings, go))
    except accounts.AccountError as exc:
        print(f"vigil: {exc.message}", file=sys.stderr)
        return 1


def _set_protocol(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from monitoring.protocol import Protocol, ProtocolError
    from server import accounts

    try:
        with open(args.file, encoding="utf-8") as fh:
            data = json.load(fh)
        protocol = Protocol.from_dict(data)
    except OSError as exc:
        print(f"vigil: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as exc:
        print(f"vigil: {args.file} is not JSON: {exc.msg} (line {exc.lineno})", file=sys.stderr)
        return 1
    except ProtocolError as exc:
        print(f"vigil: {args.file}: {exc}", file=sys.stderr)
        return 1

    async def go(engine: Any, store: Any) -> int:
        from server.db import migrate

        if settings.is_sqlite:
            await migrate(engine)
        async with store.sessionmaker() as db, db.begin():
            await for_writing(db)
            clinic = await accounts.get_or_create_clinic(db, args.clinic)
            # Stored in full, so what the clinic runs is visible in one place; sessions
            # already created keep their own snapshot.
            clinic.protocol = protocol.as_dict()
        print(f"protocol of {args.clinic} set; new sessions use it")
        return 0

    return asyncio.run(_with_db(settings, go))


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="vigil", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve HTTP and Socket.IO")
    run.add_argument("--demo", action="store_true", help="seed demo data and simulated patients")
    sub.add_parser("migrate", help="bring the database schema up to date")
    cu = sub.add_parser("create-user", help="create an account")
    cu.add_argument("--username", required=True)
    cu.add_argument("--role", required=True, choices=["patient", "clinician", "oncall", "admin"])
    cu.add_argument("--clinic", required=True, help="clinic name (created if missing)")
    cu.add_argument("--display-name")
    cu.add_argument("--password", help="omit to be prompted (patients may have none)")
    cs = sub.add_parser("create-session", help="open a session and print the patient's link")
    cs.add_argument("--patient", required=True, help="the patient's username")
    cs.add_argument("--clinician", help="the assigned clinician's username")
    cs.add_argument("--ttl-hours", type=int, default=24, help="how long the link works")
    sp = sub.add_parser(
        "set-protocol", help="validate a protocol JSON file and give it to a clinic"
    )
    sp.add_argument("--clinic", required=True, help="clinic name (created if missing)")
    sp.add_argument("--file", required=True, help="protocol JSON (docs/protocol.md, Protocol)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vigil`` command."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"vigil: configuration error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "demo", False):
        settings = settings.with_(demo=True)
    configure_logging(settings.log_level)
    if args.command == "run":
        return _run(settings)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "create-user":
        return _create_user(settings, args)
    if args.command == "create-session":
        return _create_session(settings, args)
    if args.command == "set-protocol":
        return _set_protocol(settings, args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
