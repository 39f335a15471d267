"""What the benchmarks share: a database to seed, a real ``vigil run`` subprocess, statistics.

The server always runs as its own process (``python -m server run``), configured only through
``VIGIL_*`` variables like an operator would, so the clients driving it never share its event
loop or its CPU time accounting. People and sessions are seeded straight into the database
with the server's own modules before it starts (what the CLI does, without a process per
account), and tokens are signed with the secret the server is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
# A fixed secret: the benchmark signs tokens the server must accept. Never used elsewhere.
BENCH_SECRET = "bench-secret-key-not-for-production-0123456789abcdef"
DEFAULT_PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Redis pub/sub channels are global to a Redis server (not per database number), and the
# bus's channel name is fixed. An unusual clinic id keeps our board messages out of the
# on-call rooms of anyone else's Vigil sharing this Redis (their clinics count from 1).
BENCH_CLINIC_ID = 7_700_001
START_TIMEOUT_SECS = 60
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        raw = fh.read()
    # The command name (field 2) may contain spaces; fields after it are space-separated.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def cpu_of_matching(needle: str) -> dict[int, float]:
    """CPU seconds of every process whose command line contains *needle*, by pid.

    Used for the helpers a server leans on and that its own CPU time does not include:
    PostgreSQL backends (their command line names the database) and ``redis-server``.
    """
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if needle in cmdline:
                out[int(entry.name)] = cpu_seconds(int(entry.name))
        except OSError:
            continue  # the process ended while we looked
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two :func:`cpu_of_matching` readings by the processes alive at the
    second (a process that ended in between is missed: an approximation, said so where shown)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def percentile(values: Sequence[float], q: float) -> float | None:
    """The *q*-th percentile (0-100) by the nearest-rank method; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50, p95, p99 and max of latencies given in seconds, as milliseconds."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "n": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p95_ms": ms(percentile(seconds, 95)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


def fmt(value: Any) -> str:
    """A table cell: numbers compact, missing values as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write *payload* as ``bench/results/<name>.json``; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it): a
    thousand sockets on each side do not fit the common default of 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> dict[str, Any]:
    """What the figures depend on besides the code: cores and how busy the machine already was."""
    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


# -- databases ------------------------------------------------------------------------------


@dataclass
class Database:
    """A fresh database for one server run: a SQLite file or a PostgreSQL database."""

    kind: str
    url: str
    var_dir: Path
    pg_admin_url: str | None = None
    pg_name: str | None = None


async def _pg_admin(admin_url: str, sql: str) -> None:
    from server.db import make_engine

    engine = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def fresh_database(kind: str, tag: str, pg_admin_url: str) -> AsyncIterator[Database]:
    """A new, migrated database (dropped afterwards) and a var dir for the server's files."""
    from server.db import make_engine, migrate

    var_dir = Path(tempfile.mkdtemp(prefix=f"vigil-bench-{tag}-"))
    try:
        if kind == "sqlite":
            db = Database(kind, f"sqlite+aiosqlite:///{var_dir / 'vigil.sqlite3'}", var_dir)
        elif kind == "postgresql":
            name = f"vigil_bench_{tag}_{os.getpid()}"
            await _pg_admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await _pg_admin(pg_admin_url, f'CREATE DATABASE "{name}"')
            url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
            db = Database(kind, url, var_dir, pg_admin_url, name)
        else:
            raise ValueError(f"unknown database kind {kind!r}")
        engine = make_engine(db.url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
        try:
            yield db
        finally:
            if db.pg_name and db.pg_admin_url:
                with contextlib.suppress(Exception):
                    await _pg_admin(
                        db.pg_admin_url, f'DROP DATABASE IF EXISTS "{db.pg_name}" WITH (FORCE)'
                    )
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


# -- seeding --------------------------------------------------------------------------------


@dataclass
class Seeded:
    """Who was seeded: tokens per role and each session with its patient's token."""

    clinic_id: int
    clinician_tokens: list[str] = field(default_factory=list)
    oncall_tokens: list[str] = field(default_factory=list)
    # (session id, the patient's token, index of the assigned clinician in clinician_tokens)
    sessions: list[tuple[str, str, int]] = field(default_factory=list)


async def seed(
    db_url: str, *, sessions: int, clinicians: int, oncall: int, progress: bool = True
) -> Seeded:
    """One clinic: *clinicians* clinicians, *oncall* on-call staff and *sessions* sessions in
    the lobby, one patient each, assigned round-robin to the clinicians.

    Sessions are made with ``accounts.create_session`` (the path the API and CLI take: protocol
    snapshot and a ``session_created`` event). Staff share one argon2 hash: hashing is
    deliberately slow (tens of ms) and nobody here signs in with a password.
    """
    from monitoring.bus import MemoryBus
    from monitoring.clock import Clock
    from monitoring.events import EventStore
    from server import accounts
    from server.auth import hash_password, login_token
    from server.db import for_writing, make_engine, make_sessionmaker
    from server.models import Clinic, Role, User

    engine = make_engine(db_url)
    store = EventStore(make_sessionmaker(engine), MemoryBus(), Clock(1.0))
    now = store.clock.now()
    out = Seeded(clinic_id=BENCH_CLINIC_ID)
    started = time.monotonic()
    try:
        async with store.sessionmaker() as s, s.begin():
            await for_writing(s)
            clinic = Clinic(id=BENCH_CLINIC_ID, name="Bench Clinic", protocol=None)
            s.add(clinic)
            await s.flush()
            staff_hash = hash_password("bench password, never used")
            staff: list[User] = []
            for i in range(clinicians):
                staff.append(_user(clinic.id, f"clin{i:04d}", Role.CLINICIAN, staff_hash))
            for i in range(oncall):
                staff.append(_user(clinic.id, f"oncall{i:02d}", Role.ONCALL, staff_hash))
            patients = [
                _user(clinic.id, f"pat{i:05d}", Role.PATIENT, None) for i in range(sessions)
            ]
            s.add_all(staff + patients)
            await s.flush()
            for user in staff:
                tok = login_token(user, BENCH_SECRET, now)
                if user.role == Role.CLINICIAN.value:
                    out.clinician_tokens.append(tok)
                else:
                    out.oncall_tokens.append(tok)
            patient_rows = [(p.id, login_token(p, BENCH_SECRET, now)) for p in patients]
            clinician_ids = [u.id for u in staff if u.role == Role.CLINICIAN.value]
        for i, (patient_id, token) in enumerate(patient_rows):
            owner = i % clinicians
            created = await accounts.create_session(
                store,
                clinic_id=BENCH_CLINIC_ID,
                patient_id=patient_id,
                clinician_id=clinician_ids[owner],
                scheduled_start=now,
                actor="bench",
            )
            out.sessions.append((created["session_id"], token, owner))
            if progress and (i + 1) % 250 == 0:
                log(f"  seeded {i + 1}/{sessions} sessions")
    finally:
        await engine.dispose()
    if progress:
        log(f"  seeding took {time.monotonic() - started:.1f} s")
    return out


def _user(clinic_id: int, username: str, role: Any, password_hash: str | None) -> Any:
    from server.models import User

    return User(
        clinic_id=clinic_id,
        username=username,
        role=role.value,
        display_name=username.title(),
        password_hash=password_hash,
    )


# -- the server process -----------------------------------------------------------------------


def server_env(
    db: Database, port: int, *, redis_url: str | None = None, log_level: str = "WARNING"
) -> dict[str, str]:
    """This process's environment without VIGIL_* settings, plus the server's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_DATABASE_URL=db.url,
        VIGIL_VAR_DIR=str(db.var_dir),
        VIGIL_HOST="127.0.0.1",
        VIGIL_PORT=str(port),
        VIGIL_SECRET_KEY=BENCH_SECRET,
        VIGIL_LOG_LEVEL=log_level,
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    if redis_url:
        env["VIGIL_REDIS_URL"] = redis_url
    return env


@dataclass
class ServerProcess:
    """A running ``vigil run`` and where its log goes."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        """The server's process id (for CPU accounting and py-spy)."""
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds the server has used so far."""
        return cpu_seconds(self.proc.pid)

    def tail(self, lines: int = 20) -> str:
        """The end of the server's log, for error reports."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn_server(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    log_fh = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log_fh,
    )
    return proc, log_fh


@contextlib.asynccontextmanager
async def running_server(
    env: dict[str, str], port: int, log_dir: Path
) -> AsyncIterator[ServerProcess]:
    """``python -m server run`` until the block ends; yields once ``/healthz`` answers 200."""
    log_path = log_dir / "server.log"
    proc, log_fh = _spawn_server(env, log_path)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        async with asyncio.timeout(START_TIMEOUT_SECS), aiohttp.ClientSession() as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited during start-up:\n{server.tail()}")
                try:
                    async with http.get(f"{server.url}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            # SIGINT: aiohttp's graceful stop closes every realtime connection first.
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        log_fh.close()


@contextlib.contextmanager
def profiled(pid: int | None, out: Path, duration: int) -> Iterator[None]:
    """Record a py-spy flame graph of *pid* for *duration* seconds while the block runs."""
    if pid is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("  --profile: py-spy not found (pip install py-spy); not profiling")
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [py_spy, "record", "-o", str(out), "--pid", str(pid), "--duration", str(duration)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield
    finally:
        try:
            _, err = spy.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode == 0:
            log(f"  profile written to {out}")
        else:
            log(f"  py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-400:]}")


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the results table."""
    print(message, file=sys.stderr, flush=True)
