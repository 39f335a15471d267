"""Demo data and simulated patients, so a newcomer sees live sessions at once.

``seed_demo`` creates (once) a demo clinic with a clinician, an on-call nurse, an admin and
three patients, and gives each patient an open session starting now (a new one when the last
has ended). ``DemoPatients`` runs one simulated patient per session: an aiortc client that
talks to this very server over Socket.IO like a real patient's browser would, publishing a
moving picture with the patient's name and the clock, and a quiet tone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import select

from server import accounts
from server.api import invite_url
from server.auth import invite_token, load_user, login_token
from server.db import for_writing
from server.keys import CLOCK, MONITORING, SESSIONMAKER, SETTINGS, STORE
from server.models import Phase, Role, User
from server.models import Session as SessionRow
from signaling.client import SignalingClient, SignalingFailed
from signaling.synthetic import PatternVideoTrack, ToneAudioTrack

log = logging.getLogger(__name__)

DEMO_CLINIC = "Demo Clinic"
# Demo accounts are for a laptop; the password is printed with the links.
DEMO_PASSWORD = "vigil-demo-password"
DEMO_STAFF = (
    ("dr.demo", Role.CLINICIAN, "Dr. Ada Demo"),
    ("nurse.demo", Role.ONCALL, "Nurse Ben Demo"),
    ("admin.demo", Role.ADMIN, "Admin Cleo Demo"),
)
DEMO_PATIENT_NAMES = ("Alex Rivera", "Sam Okafor", "Jordan Lee", "Robin Novak", "Kim Haddad")
# Seconds between a simulated patient's attempts to (re)connect.
RETRY_SECS = 1.0
# A simulated patient answers a check-in this long after it is asked (real seconds).
ANSWER_AFTER_SECS = 3.0
STOP_TIMEOUT_SECS = 3.0


def demo_precheck(name: str) -> dict[str, object]:
    """A complete pre-check checklist for a demo patient."""
    first = name.split()[0]
    return {
        "sitter_name": f"{first}'s partner",
        "sitter_phone": "+1 555 0100",
        "sitter_is_adult": True,
        "address": "12 Demo Street, Springfield",
        "address_confirmed": True,
        "fasting": True,
        "medication_changes": "none",
        "intention": "To be kinder to myself",
        "emergency_contact_name": "Demo Contact",
        "emergency_contact_phone": "+1 555 0199",
    }


@dataclass
class DemoSession:
    """One simulated patient's session and credentials."""

    session_id: str
    patient_name: str
    patient_token: str


async def seed_demo(app: web.Application) -> dict[str, object]:
    """Create the demo clinic's people and open sessions; return login links."""
    settings = app[SETTINGS]
    clock = app[CLOCK]
    now = clock.now()
    async with app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        clinic = await accounts.get_or_create_clinic(db, DEMO_CLINIC)
        users: dict[str, User] = {}
        for username, role, name in DEMO_STAFF:
            user = await load_user(db, username)
            if user is None:
                user = await accounts.create_user(
                    db,
                    clinic=clinic,
                    username=username,
                    role=role,
                    display_name=name,
                    password=DEMO_PASSWORD,
                )
            users[username] = user
        patients = []
        for i, name in enumerate(DEMO_PATIENT_NAMES[: settings.demo_patients]):
            username = f"patient{i + 1}.demo"
            user = await load_user(db, username)
            if user is None:
                user = await accounts.create_user(
                    db,
                    clinic=clinic,
                    username=username,
                    role=Role.PATIENT,
                    display_name=name,
                    password=DEMO_PASSWORD,
                )
            patients.append(user)
        clinic_id, clinician_id = clinic.id, users["dr.demo"].id
    store = app[STORE]
    sessions: list[DemoSession] = []
    for index, patient in enumerate(patients):
        async with app[SESSIONMAKER]() as db:
            open_row = (
                (
                    await db.execute(
                        select(SessionRow).where(
                            SessionRow.patient_id == patient.id,
                            SessionRow.phase.not_in(
                                [Phase.COMPLETED.value, Phase.ENDED_EARLY.value]
                            ),
                        )
                    )
                )
                .scalars()
                .first()
            )
        if open_row is None:
            created = await accounts.create_session(
                store,
                clinic_id=clinic_id,
                patient_id=patient.id,
                clinician_id=clinician_id,
                scheduled_start=now,
                actor="demo",
            )
            session_id = created["session_id"]
            # A lively roster: the first patient is dosing, the second in pre-check with the
            # checklist done (a clinician can start dosing), the third in the lobby.
            m = app[MONITORING]
            if index <= 1:
                await m.lifecycle.act(session_id, "admit", actor="demo")
                await m.vitals.submit_precheck(
                    session_id, demo_precheck(patient.display_name), actor="demo"
                )
                await m.vitals.record(
                    session_id, 128, 82, 74, actor="demo", client_id=f"demo-vitals-{session_id}"
                )
            if index == 0:
                await m.lifecycle.act(session_id, "start_dosing", actor="demo")
        else:
            session_id = open_row.id
        sessions.append(
            DemoSession(
                session_id, patient.display_name, login_token(patient, settings.secret_key, now)
            )
        )
    base = settings.public_url
    links: dict[str, object] = {
        "clinician": f"{base}/clinician/#token={login_token(users['dr.demo'], settings.secret_key, now)}",
        "oncall": f"{base}/clinician/#token={login_token(users['nurse.demo'], settings.secret_key, now)}",
        "admin": f"{base}/admin/#token={login_token(users['admin.demo'], settings.secret_key, now)}",
        "login": f"{base}/  (dr.demo, nurse.demo, admin.demo / {DEMO_PASSWORD})",
        "sessions": sessions,
    }
    # One invite link, to show the patient's page in a browser (simulated patients use tokens).
    async with app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        row = await db.get(SessionRow, sessions[-1].session_id) if sessions else None
        if row is not None:
            invite = await accounts.create_invite(
                db,
                session=row,
                role="patient",
                name=sessions[-1].patient_name,
                phone=None,
                created_by=None,
                now=now,
                ttl=timedelta(hours=12),
            )
            links["patient_invite"] = invite_url(
                base, "patient", invite_token(invite, row.clinic_id, settings.secret_key, now)
            )
    return links


class DemoPatients:
    """Simulated patients publishing generated media through the real signaling path."""

    def __init__(self, app: web.Application, links: dict[str, object]) -> None:
        self.app = app
        self.sessions: list[DemoSession] = list(links.get("sessions", []))  # type: ignore[call-overload]
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: set[SignalingClient] = set()
        self._monitors: set[Any] = set()
        self._stopping = False

    def start(self) -> None:
        """Start every simulated patient (each retries until the server listens)."""
        # The last patient is left for a person to play through the invite link.
        for demo in self.sessions[:-1] if len(self.sessions) > 1 else self.sessions:
            self._tasks.append(asyncio.create_task(self._run(demo), name=f"demo.{demo.session_id}"))
            self._tasks.append(
                asyncio.create_task(self._answer(demo), name=f"demo.checkins.{demo.session_id}")
            )

    async def _run(self, demo: DemoSession) -> None:
        settings = self.app[SETTINGS]
        url = f"http://{settings.host}:{settings.port}"
        video = PatternVideoTrack(demo.patient_name)
        audio = ToneAudioTrack()
        while not self._stopping:
            client = SignalingClient(url, demo.patient_token)
            self._clients.add(client)

            async def republish(client: SignalingClient = client) -> None:
                with contextlib.suppress(Exception):
                    await client.publish(demo.session_id, [audio, video])

            client.on_reconnect = republish
            try:
                await client.connect()
                await client.publish(demo.session_id, [audio, video])
                log.info("simulated patient publishing", extra={"session": demo.session_id})
                # Returns when the connection is gone for good (Socket.IO retries drops itself).
                await client.sio.wait()
            except SignalingFailed as exc:
                if exc.code == "session_ended":
                    log.info(
                        "simulated patient's session ended", extra={"session": demo.session_id}
                    )
                    await client.close()
                    return
                log.info("simulated patient refused", extra={"code": exc.code})
            except Exception as exc:  # the server is not listening yet, or went away
                log.debug("simulated patient retrying", extra={"error": type(exc).__name__})
            finally:
                self._clients.discard(client)
                await client.close()
            await asyncio.sleep(RETRY_SECS)

    async def _answer(self, demo: DemoSession) -> None:
        """Answer check-ins like a patient doing well would, so the demo's roster is calm
        unless someone makes it otherwise (a missed check-in is still an alarm)."""
        import socketio

        settings = self.app[SETTINGS]
        url = f"http://{settings.host}:{settings.port}"
        due: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        while not self._stopping:
            sio = socketio.AsyncClient(reconnection=True)
            self._monitors.add(sio)

            async def on_event(event: dict[str, object]) -> None:
                if (
                    event.get("type") == "checkin_due"
                    and event.get("session_id") == demo.session_id
                ):
                    await due.put(event)

            sio.on("event", on_event, namespace="/monitor")
            try:
                await sio.connect(
                    url,
                    namespaces=["/monitor"],
                    auth={"token": demo.patient_token},
                    transports=["websocket"],
                    wait_timeout=10,
                )
                await sio.call(
                    "follow", {"session_id": demo.session_id, "after_seq": 0}, namespace="/monitor"
                )
                while True:
                    event = await due.get()
                    await asyncio.sleep(ANSWER_AFTER_SECS)
                    data = event.get("data") or {}
                    common = {"session_id": demo.session_id, "client_id": uuid.uuid4().hex}
                    if isinstance(data, dict) and data.get("kind") == "vitals":
                        body = {**common, "systolic": 122, "diastolic": 78, "heart_rate": 72}
                        await sio.call("record_vitals", body, namespace="/monitor")
                    else:
                        await sio.call(
                            "answer_checkin", {**common, "ok": True}, namespace="/monitor"
                        )
            except Exception as exc:  # the server is not listening yet, or went away
                log.debug("simulated check-ins retrying", extra={"error": type(exc).__name__})
            finally:
                self._monitors.discard(sio)
                with contextlib.suppress(Exception):
                    await sio.disconnect()
            await asyncio.sleep(RETRY_SECS)

    async def stop(self) -> None:
        """Stop every simulated patient (idempotent)."""
        self._stopping = True
        # Disconnect first: that also aborts python-socketio's reconnection loop, which a
        # cancelled task would otherwise leave retrying against a server that is going away.
        closing = [client.close() for client in list(self._clients)]
        closing += [sio.disconnect() for sio in list(self._monitors)]
        if closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*closing, return_exceptions=True), STOP_TIMEOUT_SECS
                )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, STOP_TIMEOUT_SECS)
        self._tasks.clear()
