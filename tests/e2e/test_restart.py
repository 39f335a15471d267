"""A real server process is killed (SIGKILL) in the middle of a phase; a new one resumes it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "restart test password"
# 600: the 10-minute dosing phase lasts one real second, the whole active phase six.
SCALE = "600"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(db_url: str, tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_DATABASE_URL=db_url,
        VIGIL_VAR_DIR=str(tmp_path),
        VIGIL_PORT=str(port),
        VIGIL_TIME_SCALE=SCALE,
        VIGIL_SECRET_KEY=TEST_SECRET,
        VIGIL_LOG_LEVEL="WARNING",
    )
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "server", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def _start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with asyncio.timeout(30), aiohttp.ClientSession() as http:
        while True:
            assert proc.poll() is None, "server exited during start-up"
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def _api(
    port: int, method: str, path: str, token: str | None = None, body: Any = None
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers
        ) as r:
            data = await r.json()
            assert r.status < 300, data
            return data


async def test_sigkill_mid_phase_then_restart_resumes_the_clock(
    db_url: str, tmp_path: Path
) -> None:
    port = _free_port()
    env = _env(db_url, tmp_path, port)
    if not db_url.startswith("sqlite"):
        assert "newest schema" in _cli(env, "migrate")
    _cli(
        env,
        "create-user",
        "--username",
        "doc",
        "--role",
        "clinician",
        "--clinic",
        "K",
        "--password",
        PASSWORD,
    )
    _cli(env, "create-user", "--username", "pat", "--role", "patient", "--clinic", "K")
    out = _cli(env, "create-session", "--patient", "pat", "--clinician", "doc")
    session_id = out.split()[1]
    assert "/patient/#token=" in out

    proc = await _start(env, port)
    token = (
        await _api(port, "POST", "/api/login", body={"username": "doc", "password": PASSWORD})
    )["token"]
    await _api(port, "POST", f"/api/sessions/{session_id}/actions", token, {"action": "admit"})
    state = (
        await _api(
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
    proc = await _start(env, port)
    try:
        async with asyncio.timeout(30):
            while (await _api(port, "GET", f"/api/sessions/{session_id}", token))[
                "phase"
            ] != "awaiting_signoff":
                await asyncio.sleep(0.2)
        events = (await _api(port, "GET", f"/api/sessions/{session_id}/events", token))["events"]
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
