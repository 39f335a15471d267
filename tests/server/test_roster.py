"""The roster, the alarm board and the session record over a real server.

Real people act through the real paths: clinicians over HTTP and ``/monitor``, the patient over
``/monitor`` and ``/signal`` (a real aiortc publisher), a clinician viewing with a real aiortc
peer; what the roster, the board and the record say is read back from the database.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from server.demo import demo_precheck
from signaling.synthetic import PatternVideoTrack, ToneAudioTrack
from tests.conftest import World, make_settings
from tests.helpers import Watcher, act, http, signaling, until, wait_phase
from tests.monitor_client import MonitorClient

# -- helpers -----------------------------------------------------------------------------------


VOLATILE = ("server_time", "last_checkin_age_seconds", "media_health", "minutes_since_dose")


def stable(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in VOLATILE} for e in entries]


# -- 5. roster and board ---------------------------------------------------------------------------


async def test_roster_and_alarm_board(world: World) -> None:
    s1, s2 = world.sessions["s1"], world.sessions["s2"]
    pat1 = await MonitorClient(world, "pat1").connect()
    pat2 = await MonitorClient(world, "pat2").connect()
    doc = await MonitorClient(world, "clin_a").connect()
    nurse = await MonitorClient(world, "oncall").connect()
    publisher = await signaling(world, "pat1")
    viewer = await signaling(world, "clin_a")
    watcher = Watcher()
    try:
        for sid in (s1, s2):
            await act(world, sid, "admit")
        # s1: the patient is on camera and the clinician watches.
        await publisher.publish(s1, [ToneAudioTrack(), PatternVideoTrack("Pat One", fps=15)])
        await viewer.view(s1, watcher.on_track)
        await until(lambda: watcher.frames >= 5, 20, "the clinician to see s1")
        # s1: a check-in asked for and answered; a medium flag first, then two low ones.
        await doc.ok("request_checkin", {"session_id": s1})
        await pat1.ok("answer_checkin", {"session_id": s1, "ok": True, "client_id": "c1"})
        for i, code in enumerate(("confusion", "nausea", "dizziness")):
            await pat1.ok("raise_flag", {"session_id": s1, "code": code, "client_id": f"f{i}"})
        # s2: a medium flag after s1's, then a high one (the newest alarm of all).
        await pat2.ok("raise_flag", {"session_id": s2, "code": "vomiting", "client_id": "g1"})
        await pat2.ok("raise_flag", {"session_id": s2, "code": "chest_pain", "client_id": "g2"})

        status, body = await http(world, "GET", "/api/roster", "clin_a")
        assert status == 200
        roster = body["sessions"]
        # The session with a high alarm comes first, although its alarms are the newest.
        assert [e["session_id"] for e in roster] == [s2, s1]
        top, second = roster
        assert top["phase"] == "pre_check" and second["phase"] == "pre_check"
        assert top["patient"]["display_name"] == "Pat2"
        assert top["clinician_id"] == world.users["clin_a"]
        assert top["flag_counts"] == {"high": 1, "medium": 1, "low": 0, "info": 0}
        assert [f["code"] for f in top["flags"]] == ["chest_pain", "vomiting"]
        assert [(a["priority"], a["detail"]["code"]) for a in top["alarms"]] == [
            ("high", "chest_pain"),
            ("medium", "vomiting"),
        ]
        assert top["last_checkin"] is None and top["last_checkin_age_seconds"] is None
        assert top["media_health"] is None and top["watchers"] == 0
        assert top["publisher_online"] is False

        assert second["flag_counts"] == {"high": 0, "medium": 1, "low": 2, "info": 0}
        assert [f["code"] for f in second["flags"]] == ["confusion", "nausea", "dizziness"]
        assert [a["detail"]["code"] for a in second["alarms"]] == [
            "confusion",
            "nausea",
            "dizziness",
        ]
        # Low-priority alarms are shown but never page.
        assert [a["paging"] for a in second["alarms"]] == ["clinician", None, None]
        assert second["last_checkin"]["status"] == "answered"
        assert second["last_checkin"]["answered_by"] == f"user:{world.users['pat1']}"
        assert 0 <= second["last_checkin_age_seconds"] < 30
        assert second["checkins_waiting"] == []
        assert second["media_health"]["video_frames"] > 0
        assert second["media_health"]["seconds_since_video"] < 2
        assert second["publisher_online"] is True and second["watchers"] == 1

        # The on-call board: priority first, then the oldest.
        status, board = await http(world, "GET", "/api/alarms", "oncall")
        assert status == 200
        assert [(a["session_id"], a["priority"], a["detail"]["code"]) for a in board["alarms"]] == [
            (s2, "high", "chest_pain"),
            (s1, "medium", "confusion"),
            (s2, "medium", "vomiting"),
            (s1, "low", "nausea"),
            (s1, "low", "dizziness"),
        ]
        stamps = [datetime.fromisoformat(a["triggered_at"]) for a in board["alarms"]]
        assert stamps[1] < stamps[2] and stamps[3] < stamps[4]
        # The clinician sees the alarms of their sessions (here: all of them), the medical
        # director the clinic's; another clinician and another clinic see none.
        for who, expected in (("clin_a", 5), ("admin", 5), ("clin_b", 0), ("oncall_other", 0)):
            status, body = await http(world, "GET", "/api/alarms", who)
            assert status == 200 and len(body["alarms"]) == expected, who
        # A patient, a sitter and a stranger get no board.
        sitter = await world.invite("s1", "sitter")
        for who in ("pat1", sitter):
            status, body = await http(world, "GET", "/api/alarms", who)
            assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = await http(world, "GET", "/api/alarms")
        assert status == 401

        # Who sees which sessions on the roster.
        for who, expected in (("oncall", [s2, s1]), ("clin_b", [])):
            status, body = await http(world, "GET", "/api/roster", who)
            assert [e["session_id"] for e in body["sessions"]] == expected, who
        # Patients and invite holders get no roster: alarms carry others' details.
        for who in ("pat1", sitter):
            status, body = await http(world, "GET", "/api/roster", who)
            assert status == 403 and body["error"]["code"] == "forbidden"
        reply = await pat1.call("roster", {})
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden"

        # The /monitor roster is the same projection.
        for who, client in (("clin_a", doc), ("oncall", nurse)):
            reply = await client.ok("roster", {})
            status, body = await http(world, "GET", "/api/roster", who)
            assert stable(reply["sessions"]) == stable(body["sessions"]), who
            assert reply["sessions"][1]["media_health"]["video_frames"] > 0
        reply = await nurse.ok("watch_board", {})
        assert [a["alarm_id"] for a in reply["alarms"]] == [a["alarm_id"] for a in board["alarms"]]
        reply = await pat1.call("watch_board", {})
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    finally:
        watcher.stop()
        for c in (publisher, viewer, pat1, pat2, doc, nurse):
            await c.close()


# -- 6. the session record -------------------------------------------------------------------------

# 300: the whole session (75 protocol minutes) takes 15 s, and the few clinician steps between
# "awaiting sign-off" and "completed" stay well inside the record's 4-minute allowance.
RECORD_SCALE = 300.0


async def test_session_record_after_a_complete_session(
    world_factory: Any, db_url: str, tmp_path: Path
) -> None:
    world = await world_factory(make_settings(db_url, tmp_path, time_scale=RECORD_SCALE))
    sid = world.sessions["s1"]
    patient = await MonitorClient(world, "pat1").connect()
    doc = await MonitorClient(world, "clin_a").connect()
    viewer = await signaling(world, "clin_a")
    watcher = Watcher()
    try:
        await act(world, sid, "admit")
        await patient.ok("precheck", {"session_id": sid, "answers": demo_precheck("Pat One")})
        await patient.ok(
            "record_vitals",
            {
                "session_id": sid,
                "systolic": 128,
                "diastolic": 82,
                "heart_rate": 74,
                "client_id": "bp0",
            },
        )
        # The clinician watches (a real aiortc viewer) from before the dose.
        await viewer.view(sid, watcher.on_track)
        await act(world, sid, "start_dosing")
        await wait_phase(world, sid, "active")
        await patient.ok(
            "record_vitals",
            {
                "session_id": sid,
                "systolic": 146,
                "diastolic": 88,
                "heart_rate": 80,
                "client_id": "bp1",
            },
        )
        await doc.ok("request_checkin", {"session_id": sid})
        await patient.ok("answer_checkin", {"session_id": sid, "ok": True, "client_id": "ok1"})
        flag = await patient.ok(
            "raise_flag",
            {
                "session_id": sid,
                "code": "breathing_difficulty",
                "note": "shallow",
                "client_id": "f1",
            },
        )
        flag_id = flag["event"]["data"]["flag_id"]
        await patient.ok("raise_flag", {"session_id": sid, "code": "numbness", "client_id": "f2"})
        await wait_phase(world, sid, "recovery")
        await patient.ok(
            "record_vitals",
            {
                "session_id": sid,
                "systolic": 124,
                "diastolic": 80,
                "heart_rate": 72,
                "client_id": "bp2",
            },
        )
        await viewer.call("leave", {"session_id": sid})
        await wait_phase(world, sid, "awaiting_signoff")

        # Sign-off is refused while a high-priority flag is open.
        status, body = await http(
            world, "POST", f"/api/sessions/{sid}/actions", "clin_a", {"action": "sign_off"}
        )
        assert status == 409 and body["error"]["code"] == "open_high_flags", body
        assert "breathing_difficulty" in body["error"]["message"]
        await doc.ok("clear_flag", {"session_id": sid, "flag_id": flag_id, "note": "settled"})
        # ... and while its latched high alarm is unresolved: a person must resolve it.
        status, body = await http(
            world, "POST", f"/api/sessions/{sid}/actions", "clin_a", {"action": "sign_off"}
        )
        assert status == 409 and body["error"]["code"] == "open_high_alarms", body
        board = (await http(world, "GET", "/api/alarms", "clin_a"))[1]["alarms"]
        high = next(a for a in board if a["session_id"] == sid and a["priority"] == "high")
        await doc.ok("resolve_alarm", {"alarm_id": high["alarm_id"], "note": "breathing normal"})
        state = await act(world, sid, "sign_off")
        assert state["phase"] == "completed"

        status, record = await http(world, "GET", f"/api/sessions/{sid}/record", "clin_a")
        assert status == 200, record
        assert record["session_id"] == sid and record["phase"] == "completed"
        assert record["patient"] == {"id": world.users["pat1"], "display_name": "Pat1"}
        times = record["times"]
        order = [
            "admitted_at",
            "dosed_at",
            "active_at",
            "recovery_at",
            "awaiting_signoff_at",
            "completed_at",
        ]
        stamps = [datetime.fromisoformat(times[k]) for k in order]
        assert stamps == sorted(stamps) and times["ended_at"] is None
        assert record["dose"]["dosed_at"] == times["dosed_at"]
        assert record["dose"]["override"] is None

        def minutes(a: str, b: str) -> float:
            gap = datetime.fromisoformat(times[b]) - datetime.fromisoformat(times[a])
            return gap.total_seconds() * RECORD_SCALE / 60

        assert minutes("dosed_at", "active_at") == pytest.approx(10, abs=0.1)
        assert minutes("dosed_at", "recovery_at") == pytest.approx(60, abs=0.1)
        assert minutes("dosed_at", "awaiting_signoff_at") == pytest.approx(75, abs=0.1)
        # Dose to sign-off: the 75 protocol minutes plus the moment it took to sign off.
        assert record["total_monitored_minutes"] == pytest.approx(75, abs=4)
        assert record["total_monitored_minutes"] >= 75

        bp = record["blood_pressure"]
        assert [(v["systolic"], v["diastolic"]) for v in bp["before"]] == [(128, 82)]
        assert [(v["systolic"], v["diastolic"]) for v in bp["during"]] == [(146, 88)]
        assert [(v["systolic"], v["diastolic"]) for v in bp["discharge"]] == [(124, 80)]
        assert bp["before"][0]["recorded_by"] == f"user:{world.users['pat1']}"
        assert record["side_effects"] == {
            "sedation": False,
            "dissociation": True,
            "breathing_problems": True,
        }
        flags = {f["code"]: f for f in record["flags"]}
        assert set(flags) == {"breathing_difficulty", "numbness"}
        assert flags["breathing_difficulty"]["priority"] == "high"
        assert flags["breathing_difficulty"]["cleared_by"] == f"user:{world.users['clin_a']}"
        assert flags["numbness"]["cleared_at"] is None
        answered = [c for c in record["checkins"] if c["status"] == "answered"]
        assert any(c["answered_by"] == f"user:{world.users['pat1']}" for c in answered)
        assert all(c["due_at"] for c in record["checkins"])
        # Who watched and when.
        watched = [(e["type"], e["data"]["who"], e["data"]["role"]) for e in record["watched"]]
        clinician = f"user:{world.users['clin_a']}"
        assert watched == [
            ("viewer_joined", clinician, "clinician"),
            ("viewer_left", clinician, "clinician"),
        ]
        assert record["signed_off_by"] == {"id": world.users["clin_a"], "display_name": "Clin_A"}
        # The flag's alarm latched (high) and was closed when the session completed.
        assert all(a["status"] == "resolved" for a in record["alarms"])
        assert any(a["detail"].get("code") == "breathing_difficulty" for a in record["alarms"])
        assert record["protocol"]["active_minutes_from_dose"] == 60

        # The patient reads their own record; a guide, another clinician and another patient
        # do not.
        status, mine = await http(world, "GET", f"/api/sessions/{sid}/record", "pat1")
        assert status == 200 and mine["session_id"] == sid
        guide = await world.invite("s1", "guide")
        for who in ("clin_b", "pat2", guide):
            status, body = await http(world, "GET", f"/api/sessions/{sid}/record", who)
            assert status == 403 and body["error"]["code"] == "forbidden"
    finally:
        watcher.stop()
        for c in (viewer, patient, doc):
            await c.close()
