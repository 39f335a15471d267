"""A real server process is killed (SIGKILL) in the middle of a phase; a new one resumes it."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.process import api, free_port, provision, start_server, vigil_env

PASSWORD = "restart test password"
# 600: the 10-minute dosing phase lasts one real second, the whole active phase six.
SCALE = "600"


async def test_sigkill_mid_phase_then_restart_resumes_the_clock(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = vigil_env(db_url, tmp_path, port, float(SCALE))
    session_id, _ = provision(env, PASSWORD)

    proc = await start_server(env, port)
    token = (await api(port, "POST", "/api/login", body={"username": "doc", "password": PASSWORD}))[
        "token"
    ]
    await api(port, "POST", f"/api/sessions/{session_id}/actions", token, {"action": "admit"})
    state = (
        await api(
            port,
            "POST",
            f"/api/sessions/{session_id}/actions",
            token,
            {"action": "start_dosing", "reason": "test: no pre-check needed"},
        )
    )["state"]
    dissolve_deadline = datetime.fromisoformat(state["phase_deadline"])
    # Killed without any chance to clean up, before the tablet has dissolved.
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    await asyncio.sleep(1.5)  # the dissolve deadline passes while no process runs
    proc = await start_server(env, port)
    try:
        async with asyncio.timeout(30):
            while (await api(port, "GET", f"/api/sessions/{session_id}", token))[
                "phase"
            ] != "awaiting_signoff":
                await asyncio.sleep(0.2)
        events = (await api(port, "GET", f"/api/sessions/{session_id}/events", token))["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        moves = [
            (e["data"]["from"], e["data"]["to"]) for e in events if e["type"] == "phase_changed"
        ]
        assert moves == [
            ("lobby", "pre_check"),
            ("pre_check", "dosing"),
            ("dosing", "active"),
            ("active", "recovery"),
            ("recovery", "awaiting_signoff"),
        ]
        # The new process fired the deadline the old one persisted, at its persisted time.
        active = next(
            e for e in events if e["type"] == "phase_changed" and e["data"]["to"] == "active"
        )
        assert datetime.fromisoformat(active["data"]["phase_started_at"]) == dissolve_deadline
        started = {
            e["data"]["to"]: datetime.fromisoformat(e["data"]["phase_started_at"])
            for e in events
            if e["type"] == "phase_changed"
        }
        # Dose + 60 protocol minutes active + 15 recovery, whatever the outage.
        elapsed = (
            (started["awaiting_signoff"] - started["dosing"]).total_seconds() * float(SCALE) / 60
        )
        assert elapsed == pytest.approx(75, abs=0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode in (0, -signal.SIGTERM)
