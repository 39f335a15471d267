"""Technical alarms and the emergency button over a real server.

Real aiortc peers go through the real ``/signal`` path (the relay's media health and the
presence facts it reports are what the technical monitor judges), real Socket.IO clients
follow ``/monitor``, and everything is read back from the real database. The protocol's
technical thresholds (real seconds) are made small through the clinic's protocol before the
session is created, so the session's snapshot carries them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from av import VideoFrame
from sqlalchemy import update

from monitoring import technical
from server.db import for_writing
from server.keys import SESSIONMAKER
from server.models import Clinic
from signaling.client import SignalingClient
from signaling.synthetic import PatternVideoTrack, ToneAudioTrack
from tests.conftest import World, make_settings, prepare_for_dosing
from tests.helpers import Watcher, act, http, signaling, until, wait_phase
from tests.monitor_client import MonitorClient

# Technical thresholds in real seconds; one protocol minute of dosing at scale 60 is one real
# second, and the active phase then lasts 59 s (longer than any test here). Check-ins and the
# +40 vitals prompt are pushed past the tests so no missed check-in muddies the alarm stream.
TECH_PROTOCOL: dict[str, Any] = {
    "video_lost_seconds": 1,
    "unwatched_seconds": 1.5,
    "disconnected_seconds": 1.5,
    "dosing_minutes": 1,
    "checkin_every_minutes": 55,
    "vitals_at_minutes": [58],
}
TIME_SCALE = 60.0
FAST_CHECK_SECS = 0.2


@pytest.fixture(autouse=True)
def _fast_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(technical, "CHECK_SECS", FAST_CHECK_SECS)


# -- helpers -----------------------------------------------------------------------------------


async def tech_session(world: World, protocol: dict[str, Any] = TECH_PROTOCOL) -> str:
    """A new session of pat1 with clin_a, created after the clinic's protocol was set."""
    async with world.app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        await db.execute(update(Clinic).where(Clinic.name == "Clinic A").values(protocol=protocol))
    status, body = await http(
        world, "POST", "/api/sessions", "clin_a", {"patient_id": world.users["pat1"]}
    )
    assert status == 201, body
    return body["session_id"]


class Monitor(MonitorClient):
    """A /monitor client whose events are read once each, in order."""

    def alarms(self, type_: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.unique_events()
            if e["type"] == type_ and (kind is None or e["data"].get("kind") == kind)
        ]


class TapVideo(PatternVideoTrack):
    """A camera whose frames can be turned off and on while the connection stays up."""

    def __init__(self, label: str) -> None:
        super().__init__(label, fps=15)
        self.flowing = asyncio.Event()
        self.flowing.set()

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        # Carry on at the camera's pace from now (no burst of catch-up frames).
        self._start = time.monotonic() - self.frames_sent / self.fps
        self.flowing.set()

    async def recv(self) -> VideoFrame:
        await self.flowing.wait()
        return await super().recv()


async def invite(world: World, session_id: str, role: str) -> str:
    status, body = await http(
        world,
        "POST",
        f"/api/sessions/{session_id}/invites",
        "clin_a",
        {"role": role, "name": f"The {role}"},
    )
    assert status == 201, body
    return body["token"]


async def close_all(*things: Any) -> None:
    for thing in things:
        if thing is None:
            continue
        if isinstance(thing, Watcher):
            thing.stop()
        else:
            await thing.close()


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def technical_kinds(monitor: Monitor, type_: str) -> list[str]:
    return [
        e["data"]["kind"] for e in monitor.alarms(type_) if e["data"]["kind"] in technical.KINDS
    ]


# -- 1. video lost, then restored ----------------------------------------------------------------


async def test_video_lost_then_restored_clears_itself(
    world_factory: Any, db_url: str, tmp_path: Path
) -> None:
    world = await world_factory(make_settings(db_url, tmp_path, time_scale=TIME_SCALE))
    sid = await tech_session(world)
    doc = await Monitor(world, world.tokens["clin_a"]).connect()
    patient = await signaling(world, world.tokens["pat1"])
    viewer = await signaling(world, world.tokens["clin_a"])
    watcher = Watcher()
    camera = TapVideo("Pat One")
    try:
        await doc.follow(sid)
        await act(world, sid, "admit")
        await prepare_for_dosing(world.app, sid)
        # The patient's camera is on and a clinician watches before the dose.
        await patient.publish(sid, [ToneAudioTrack(), camera])
        await viewer.view(sid, watcher.on_track)
        await until(lambda: watcher.frames >= 5, 20, "the clinician to see video")
        await act(world, sid, "start_dosing")
        await wait_phase(world, sid, "active")
        await asyncio.sleep(3 * FAST_CHECK_SECS)
        assert technical_kinds(doc, "alarm_triggered") == []  # healthy: nothing to say

        # The camera stops sending; the peer connection stays up (audio keeps flowing).
        camera.pause()
        paused_at = time.monotonic()
        await until(lambda: doc.alarms("alarm_triggered", "video_lost"), 10, "video_lost")
        # Not before video_lost_seconds (less the frame interval: the last frame may have
        # arrived just before the pause).
        assert time.monotonic() - paused_at >= 0.9
        (lost,) = doc.alarms("alarm_triggered", "video_lost")
        data = lost["data"]
        assert data["priority"] == "medium" and data["status"] == "triggered"
        assert data["latched"] is False and data["paged"] == ["clinician"]
        assert data["detail"]["seconds_since_video"] >= 1.0
        assert lost["actor"] == "monitor"
        assert patient.pcs[sid].connectionState == "connected"
        frozen = watcher.frames
        # It is open on the board and on the roster, with the media health showing why.
        status, board = await http(world, "GET", "/api/alarms", "oncall")
        assert status == 200
        assert [(a["kind"], a["session_id"]) for a in board["alarms"]] == [("video_lost", sid)]
        status, roster = await http(world, "GET", "/api/roster", "clin_a")
        (entry,) = [s for s in roster["sessions"] if s["session_id"] == sid]
        assert entry["media_health"]["seconds_since_video"] >= 1.0
        assert entry["publisher_online"] is True
        assert roster["sessions"][0]["session_id"] == sid  # the one with an alarm first
        assert watcher.frames == frozen  # the clinician's picture froze too

        # Frames come back: the alarm resolves by itself (medium technical alarms do not latch).
        camera.resume()
        await until(lambda: doc.alarms("alarm_resolved", "video_lost"), 10, "alarm_resolved")
        (resolved,) = doc.alarms("alarm_resolved", "video_lost")
        assert resolved["data"]["alarm_id"] == data["alarm_id"]
        assert resolved["data"]["status"] == "resolved"
        assert resolved["data"]["resolved_by"] == "monitor"
        assert resolved["data"]["note"] == "condition cleared"
        await until(lambda: watcher.frames > frozen + 5, 10, "the clinician's video to resume")
        await asyncio.sleep(3 * FAST_CHECK_SECS)
        # Exactly one alarm, triggered then resolved; nothing else technical happened.
        assert technical_kinds(doc, "alarm_triggered") == ["video_lost"]
        assert technical_kinds(doc, "alarm_resolved") == ["video_lost"]
        status, board = await http(world, "GET", "/api/alarms", "oncall")
        assert board["alarms"] == []
        # The database agrees.
        status, record = await http(world, "GET", f"/api/sessions/{sid}/record", "clin_a")
        assert status == 200
        assert [(a["kind"], a["status"], a["resolved_by"]) for a in record["alarms"]] == [
            ("video_lost", "resolved", "monitor")
        ]
    finally:
        await close_all(watcher, patient, viewer, doc)


# -- 2. nobody watching ----------------------------------------------------------------------------


async def test_unwatched_active_session_needs_a_clinician_not_a_guide(
    world_factory: Any, db_url: str, tmp_path: Path
) -> None:
    world = await world_factory(make_settings(db_url, tmp_path, time_scale=TIME_SCALE))
    sid = await tech_session(world)
    doc_monitor = await Monitor(world, world.tokens["oncall"]).connect()
    patient = await signaling(world, world.tokens["pat1"])
    guide = await signaling(world, await invite(world, sid, "guide"))
    clinician = await signaling(world, world.tokens["clin_a"])
    nurse = await signaling(world, world.tokens["oncall"])
    seen = {name: Watcher() for name in ("guide", "clinician", "nurse")}
    try:
        await doc_monitor.follow(sid)
        await act(world, sid, "admit")
        await prepare_for_dosing(world.app, sid)
        await patient.publish(sid, [ToneAudioTrack(), PatternVideoTrack("Pat One", fps=15)])
        # A guide watches the whole time: that is company, not clinical oversight.
        await guide.view(sid, seen["guide"].on_track)
        await until(lambda: seen["guide"].frames >= 3, 20, "the guide to see video")
        await act(world, sid, "start_dosing")
        await wait_phase(world, sid, "active")
        # Dosing is not watched for; only the active phase is.
        assert technical_kinds(doc_monitor, "alarm_triggered") == []

        await until(lambda: doc_monitor.alarms("alarm_triggered", "unwatched"), 10, "unwatched")
        (first,) = doc_monitor.alarms("alarm_triggered", "unwatched")
        # Not before unwatched_seconds of the active phase (both instants from the database).
        active = next(e for e in doc_monitor.unique_events() if e["data"].get("to") == "active")
        assert at(first["data"]["triggered_at"]) - at(active["data"]["phase_started_at"]) > 1.5
        assert first["data"]["priority"] == "medium" and first["data"]["latched"] is False
        assert first["data"]["detail"]["seconds"] >= 1.5
        status, roster = await http(world, "GET", "/api/roster", "oncall")
        (entry,) = [s for s in roster["sessions"] if s["session_id"] == sid]
        assert entry["watchers"] == 0 and entry["phase"] == "active"
        assert seen["guide"].frames > 3  # the guide was watching all along
        joined = [e["data"] for e in doc_monitor.unique_events() if e["type"] == "viewer_joined"]
        assert [j["role"] for j in joined] == ["guide"]

        # The clinician starts watching: the alarm resolves itself.
        await clinician.view(sid, seen["clinician"].on_track)
        await until(
            lambda: doc_monitor.alarms("alarm_resolved", "unwatched"), 10, "unwatched resolved"
        )
        (resolved,) = doc_monitor.alarms("alarm_resolved", "unwatched")
        assert resolved["data"]["alarm_id"] == first["data"]["alarm_id"]
        await until(lambda: seen["clinician"].frames >= 3, 20, "the clinician to see video")
        status, roster = await http(world, "GET", "/api/roster", "oncall")
        (entry,) = [s for s in roster["sessions"] if s["session_id"] == sid]
        assert entry["watchers"] == 1 and entry["alarms"] == []

        # The clinician steps away: unwatched again after the threshold; on-call takes over.
        await clinician.call("leave", {"session_id": sid})
        await until(
            lambda: len(doc_monitor.alarms("alarm_triggered", "unwatched")) == 2, 10, "again"
        )
        left = [e for e in doc_monitor.unique_events() if e["type"] == "viewer_left"]
        assert [e["data"]["role"] for e in left] == ["clinician"]
        second = doc_monitor.alarms("alarm_triggered", "unwatched")[1]
        assert second["data"]["alarm_id"] != first["data"]["alarm_id"]
        assert at(second["data"]["triggered_at"]) - at(left[0]["at"]) > 1.5
        await nurse.view(sid, seen["nurse"].on_track)
        await until(
            lambda: len(doc_monitor.alarms("alarm_resolved", "unwatched")) == 2, 10, "resolved"
        )
        await asyncio.sleep(3 * FAST_CHECK_SECS)
        assert technical_kinds(doc_monitor, "alarm_triggered") == ["unwatched", "unwatched"]
        status, board = await http(world, "GET", "/api/alarms", "oncall")
        assert board["alarms"] == []
        status, record = await http(world, "GET", f"/api/sessions/{sid}/record", "oncall")
        assert status == 200
        assert [(a["kind"], a["status"]) for a in record["alarms"]] == [
            ("unwatched", "resolved"),
            ("unwatched", "resolved"),
        ]
    finally:
        await close_all(*seen.values(), patient, guide, clinician, nurse, doc_monitor)


# -- 3. the patient drops off -----------------------------------------------------------------------


async def test_patient_disconnected_then_back(
    world_factory: Any, sqlite_url: str, tmp_path: Path
) -> None:
    world = await world_factory(make_settings(sqlite_url, tmp_path, time_scale=TIME_SCALE))
    sid = await tech_session(world)
    doc = await Monitor(world, world.tokens["clin_a"]).connect()
    patient = await signaling(world, world.tokens["pat1"])
    patient2: SignalingClient | None = None
    viewer = await signaling(world, world.tokens["clin_a"])
    watcher = Watcher()
    try:
        await doc.follow(sid)
        await act(world, sid, "admit")
        await prepare_for_dosing(world.app, sid)
        await patient.publish(sid, [ToneAudioTrack(), PatternVideoTrack("Pat One", fps=15)])
        await viewer.view(sid, watcher.on_track)
        await until(lambda: watcher.frames >= 5, 20, "video")
        await act(world, sid, "start_dosing")
        await wait_phase(world, sid, "active")

        # The patient's network drops: the socket dies without a goodbye.
        await patient.sio.eio.disconnect(abort=True)
        await patient.close()
        await until(
            lambda: any(e["type"] == "publisher_left" for e in doc.unique_events()),
            10,
            "publisher_left",
        )
        await until(
            lambda: doc.alarms("alarm_triggered", "patient_disconnected"), 10, "disconnected"
        )
        (alarm,) = doc.alarms("alarm_triggered", "patient_disconnected")
        left = next(e for e in doc.unique_events() if e["type"] == "publisher_left")
        assert left["data"]["reason"] == "disconnected"
        assert at(alarm["data"]["triggered_at"]) - at(left["at"]) > 1.5
        assert alarm["data"]["priority"] == "medium" and alarm["data"]["paged"] == ["clinician"]
        assert alarm["data"]["detail"]["seconds"] >= 1.5
        # A patient who is not there has no video to lose: one alarm, not two.
        assert technical_kinds(doc, "alarm_triggered") == ["patient_disconnected"]
        status, roster = await http(world, "GET", "/api/roster", "clin_a")
        assert status == 200
        (entry,) = [s for s in roster["sessions"] if s["session_id"] == sid]
        assert entry["publisher_online"] is False

        # They come back on a new connection: the alarm clears, the clinician sees them again.
        # Their camera takes a moment to start on the new connection (well under
        # video_lost_seconds): that is not "video lost", however long the gap before it was.
        frames = watcher.frames
        camera = TapVideo("Pat One")
        camera.pause()
        patient2 = await signaling(world, world.tokens["pat1"])
        await patient2.publish(sid, [ToneAudioTrack(), camera])
        await asyncio.sleep(0.6)
        camera.resume()
        await until(lambda: doc.alarms("alarm_resolved", "patient_disconnected"), 10, "resolved")
        (resolved,) = doc.alarms("alarm_resolved", "patient_disconnected")
        assert resolved["data"]["alarm_id"] == alarm["data"]["alarm_id"]
        assert resolved["data"]["resolved_by"] == "monitor"
        await until(lambda: watcher.frames > frames + 5, 20, "video again")
        await asyncio.sleep(3 * FAST_CHECK_SECS)
        # Coming back is not "video lost": the new connection's frames arrived in time.
        assert technical_kinds(doc, "alarm_triggered") == ["patient_disconnected"]
        assert technical_kinds(doc, "alarm_resolved") == ["patient_disconnected"]
    finally:
        await close_all(watcher, patient, patient2, viewer, doc)


# -- 4. the emergency button -----------------------------------------------------------------------

CHECKLIST = {
    "sitter_name": "Sam Sitter",
    "sitter_phone": "+1 555 0142",
    "sitter_is_adult": True,
    "address": "7 Elm Row, Springfield",
    "address_confirmed": True,
    "fasting": True,
    "medication_changes": "none",
    "intention": "rest",
    "emergency_contact_name": "Erin Contact",
    "emergency_contact_phone": "+1 555 0177",
}


async def test_emergency_pages_everyone_once_and_only_from_the_patients_side(
    world: World,
) -> None:
    sid = world.sessions["s1"]
    patient = await Monitor(world, world.tokens["pat1"]).connect()
    doc = await Monitor(world, world.tokens["clin_a"]).connect()
    nurse = await Monitor(world, world.tokens["oncall"]).connect()
    guide = await Monitor(world, await world.invite("s1", "guide")).connect()
    try:
        await doc.follow(sid)
        reply = await nurse.call("watch_board", {})
        assert reply["ok"] and reply["alarms"] == []
        await act(world, sid, "admit")
        reply = await patient.call("precheck", {"session_id": sid, "answers": CHECKLIST})
        assert reply["ok"] and reply["blockers"] == ["vitals_missing"], reply
        reply = await patient.call(
            "record_vitals",
            {
                "session_id": sid,
                "systolic": 122,
                "diastolic": 78,
                "heart_rate": 70,
                "client_id": "v1",
            },
        )
        assert reply["ok"], reply
        await act(world, sid, "start_dosing")

        press = {"session_id": sid, "client_id": "sos-1", "note": "can't breathe well"}
        first = await patient.call("emergency", press)
        assert first["ok"] and first["duplicate"] is False, first
        assert first["event"]["type"] == "emergency"
        await until(lambda: doc.alarms("alarm_triggered", "emergency"), 10, "emergency alarm")
        await until(lambda: nurse.board, 10, "the on-call board")
        # Retried (the reply was lost): the same event, nothing new.
        again = await patient.call("emergency", press)
        assert again["ok"] and again["duplicate"] is True
        assert again["event"]["seq"] == first["event"]["seq"]
        # A guide only watches: refused, and nothing is stored.
        status, before = await http(world, "GET", f"/api/sessions/{sid}/events", "clin_a")
        refused = await guide.call(
            "emergency", {"session_id": sid, "client_id": "sos-guide", "note": "help"}
        )
        assert refused["ok"] is False and refused["error"]["code"] == "forbidden"
        await asyncio.sleep(0.3)
        status, after = await http(world, "GET", f"/api/sessions/{sid}/events", "clin_a")
        assert after["events"] == before["events"]

        events = after["events"]
        assert [e["seq"] for e in events if e["type"] == "emergency"] == [first["event"]["seq"]]
        emergency = next(e for e in events if e["type"] == "emergency")
        assert emergency["actor"] == f"user:{world.users['pat1']}"
        assert emergency["data"]["note"] == "can't breathe well"
        triggered = [e for e in events if e["type"] == "alarm_triggered"]
        assert len(triggered) == 1
        data = triggered[0]["data"]
        assert data["kind"] == "emergency" and data["priority"] == "high"
        assert data["latched"] is True and data["status"] == "triggered"
        # Everyone at once: clinician, on-call and the medical director.
        assert data["paged"] == ["clinician", "oncall", "admin"]
        assert data["level"] == 2 and data["paging"] == "admin"
        detail = data["detail"]
        for key in (
            "address",
            "sitter_name",
            "sitter_phone",
            "emergency_contact_name",
            "emergency_contact_phone",
        ):
            assert detail[key] == CHECKLIST[key], key
        assert detail["address_confirmed"] is True and detail["note"] == "can't breathe well"

        # The clinician following the session saw one emergency event and one alarm…
        assert [e["seq"] for e in doc.unique_events() if e["type"] == "emergency"] == [
            first["event"]["seq"]
        ]
        assert len(doc.alarms("alarm_triggered")) == 1
        # …and the on-call console one board message carrying the same alarm.
        assert [(b["type"], b["data"]["kind"]) for b in nurse.board] == [
            ("alarm_triggered", "emergency")
        ]
        assert nurse.board[0]["data"]["alarm_id"] == data["alarm_id"]
        assert nurse.board[0]["data"]["detail"]["address"] == CHECKLIST["address"]
        status, board = await http(world, "GET", "/api/alarms", "oncall")
        assert status == 200
        assert [(a["kind"], a["priority"]) for a in board["alarms"]] == [("emergency", "high")]
        assert guide.errors and guide.errors[-1]["code"] == "forbidden"
    finally:
        await close_all(patient, doc, nurse, guide)


async def test_a_single_process_starts_with_no_stale_presence(
    world_factory: Any, sqlite_url: str, tmp_path: Path
) -> None:
    """After a crash the database may still say "publishing" and "watched"; a single process
    starting up knows nobody is connected yet, and says so in the record."""
    from server.models import Event
    from server.models import Session as SessionRow

    first = await world_factory(make_settings(sqlite_url, tmp_path))
    s1 = first.sessions["s1"]
    async with first.app[SESSIONMAKER]() as db, db.begin():
        await for_writing(db)
        await db.execute(
            update(SessionRow).where(SessionRow.id == s1).values(publisher_online=True, watchers=2)
        )
    second = await world_factory(make_settings(sqlite_url, tmp_path), do_seed=False)
    async with second.app[SESSIONMAKER]() as db:
        row = await db.get(SessionRow, s1)
        assert row is not None and row.publisher_online is False and row.watchers == 0
        from sqlalchemy import select

        types = (
            (await db.execute(select(Event.type).where(Event.session_id == s1).order_by(Event.seq)))
            .scalars()
            .all()
        )
    assert types[-2:] == ["publisher_left", "viewers_reset"]
