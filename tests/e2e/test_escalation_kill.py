"""A real server process is killed (SIGKILL) in the middle of an alarm's escalation; a new one
fires the next step at the deadline the first one persisted, and no event is lost.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import socketio

from tests.e2e.process import api, free_port, provision, start_server, vigil_env

PASSWORD = "escalation test password"
# 60: a high-priority alarm's 2-minute escalation step lasts two real seconds.
SCALE = 60.0
STEP = timedelta(minutes=2 / SCALE)


async def _events(port: int, session_id: str, token: str) -> list[dict[str, Any]]:
    events = (await api(port, "GET", f"/api/sessions/{session_id}/events", token))["events"]
    # Gapless: every number from 1 on, each once, in order.
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


async def _raise_flag(port: int, token: str, session_id: str, client_id: str) -> dict[str, Any]:
    """The patient raises a flag over /monitor, with a real Socket.IO client."""
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        f"http://127.0.0.1:{port}",
        namespaces=["/monitor"],
        auth={"token": token},
        transports=["websocket"],
    )
    try:
        reply = await sio.call(
            "raise_flag",
            {"session_id": session_id, "code": "chest_pain", "client_id": client_id},
            namespace="/monitor",
            timeout=10,
        )
    finally:
        await sio.disconnect()
    assert reply["ok"], reply
    return reply


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_sigkill_mid_escalation_then_restart_fires_the_persisted_step(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = vigil_env(db_url, tmp_path, port, float(SCALE))
    session_id, patient_token = provision(env, PASSWORD)

    log = (tmp_path / "server.log").open("ab")
    proc = await start_server(env, port, log)
    try:
        token = (
            await api(port, "POST", "/api/login", body={"username": "doc", "password": PASSWORD})
        )["token"]
        client_id = uuid.uuid4().hex
        reply = await _raise_flag(port, patient_token, session_id, client_id)
        assert not reply["duplicate"] and reply["event"]["type"] == "flag_raised"
        before = await _events(port, session_id, token)
        triggered = [e for e in before if e["type"] == "alarm_triggered"]
        assert len(triggered) == 1
        alarm = triggered[0]["data"]
        alarm_id = alarm["alarm_id"]
        assert alarm["priority"] == "high" and alarm["paged"] == ["clinician"]
        # The deadline of the step to on-call, persisted before the kill.
        deadline = _at(alarm["next_step_at"])
        assert deadline == _at(alarm["triggered_at"]) + STEP
        assert not [e for e in before if e["type"] == "alarm_escalated"]

        # Killed without any chance to clean up, while the clinician is still being paged.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = datetime.now(UTC)
        assert killed_at < deadline, "the first process outlived the step it was to fire"

        # The step to on-call falls due while no process runs.
        await asyncio.sleep((deadline - datetime.now(UTC)).total_seconds() + 0.2)
        proc = await start_server(env, port, log)

        # Waiting for the step to the medical director, one step after on-call.
        async with asyncio.timeout(30):
            while not any(
                e["type"] == "alarm_escalated" and e["data"]["paged"] == ["admin"]
                for e in await _events(port, session_id, token)
            ):
                await asyncio.sleep(0.1)

        # A retry of the patient's command after the restart is stored once (invariant 3).
        again = await _raise_flag(port, patient_token, session_id, client_id)
        assert again["duplicate"] and again["event"]["seq"] == reply["event"]["seq"]

        events = await _events(port, session_id, token)
        assert len(events) >= len(before) + 2
        # Nothing from before the kill was lost or renumbered.
        assert events[: len(before)] == before
        alarm_events = [e for e in events if e["type"].startswith("alarm_")]
        assert {e["data"]["alarm_id"] for e in alarm_events} == {alarm_id}
        escalated = [e for e in alarm_events if e["type"] == "alarm_escalated"]
        assert [(e["data"]["paged"], e["data"]["reason"]) for e in escalated[:2]] == [
            (["oncall"], "not_acknowledged"),
            (["admin"], "not_acknowledged"),
        ]
        to_oncall, to_admin = escalated[:2]
        # On-call was paged once, by the new process, no earlier than the persisted deadline,
        # and the next step was timed from that deadline (not from the restart: a process that
        # started the escalation over would page on-call at restart + 2 minutes).
        assert sum(e["data"]["paged"] == ["oncall"] for e in escalated) == 1
        assert killed_at < deadline <= _at(to_oncall["at"])
        assert _at(to_oncall["data"]["next_step_at"]) == deadline + STEP
        assert _at(to_admin["at"]) >= deadline + STEP
        assert _at(to_admin["data"]["next_step_at"]) == deadline + 2 * STEP
        for k, e in enumerate(escalated, start=1):
            assert e["actor"] == "escalation"
            assert _at(e["data"]["next_step_at"]) == deadline + k * STEP

        board = (await api(port, "GET", "/api/alarms", token))["alarms"]
        assert [(a["alarm_id"], a["status"], a["level"]) for a in board] == [
            (alarm_id, "triggered", 2)
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        log.close()
    assert proc.returncode in (0, -signal.SIGTERM)
