"""Real ``vigil`` processes for end-to-end tests: the CLI, a server, its HTTP API."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import aiohttp

from tests.conftest import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECS = 30


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vigil_env(db_url: str, var_dir: Path, port: int, time_scale: float) -> dict[str, str]:
    """This process's environment without VIGIL_* settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_DATABASE_URL=db_url,
        VIGIL_VAR_DIR=str(var_dir),
        VIGIL_PORT=str(port),
        VIGIL_TIME_SCALE=str(time_scale),
        VIGIL_SECRET_KEY=TEST_SECRET,
        VIGIL_LOG_LEVEL="WARNING",
    )
    return env


def cli(env: dict[str, str], *args: str) -> str:
    """Run ``vigil ARGS``; it must succeed; returns its standard output."""
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


async def start_server(
    env: dict[str, str], port: int, log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """``vigil run`` in a subprocess, returned once /healthz answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log if log is not None else subprocess.DEVNULL,
    )
    async with asyncio.timeout(START_TIMEOUT_SECS), aiohttp.ClientSession() as http:
        while True:
            assert proc.poll() is None, "server exited during start-up"
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def api(port: int, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
    """One HTTP API call that must succeed; returns the JSON body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers
        ) as r:
            data = await r.json()
            assert r.status < 300, data
            return data


def provision(env: dict[str, str], doc_password: str) -> tuple[str, str]:
    """With the CLI: a clinic K with clinician ``doc`` and patient ``pat``, and a session of
    theirs (the database is migrated first on PostgreSQL). Returns (session id, the patient's
    invite token)."""
    if not env["VIGIL_DATABASE_URL"].startswith("sqlite"):
        assert "newest schema" in cli(env, "migrate")
    cli(env, "create-user", "--username", "doc", "--role", "clinician", "--clinic", "K",
        "--password", doc_password)  # fmt: skip
    cli(env, "create-user", "--username", "pat", "--role", "patient", "--clinic", "K")
    out = cli(env, "create-session", "--patient", "pat", "--clinician", "doc")
    assert "/patient/#token=" in out
    return out.split()[1], out.split("#token=", 1)[1].split()[0]
