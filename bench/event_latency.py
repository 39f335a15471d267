"""Flag storm: how fast a patient's flag reaches the clinician's roster and the on-call board.

Usage (from the repository root, PostgreSQL and Redis as for the tests)::

    python -m bench.event_latency                       # 1,000 sessions, memory and Redis bus
    python -m bench.event_latency --sessions 50 --storm 5 --bus memory    # a quick look
    python -m bench.event_latency --profile             # also a py-spy flame graph of the server

For each bus (``--bus memory|redis|both``) it makes a fresh database, seeds one clinic with N
sessions in the lobby (one patient each), one clinician per 10 sessions and a few on-call
staff, and starts ``python -m server run`` as a subprocess (``VIGIL_REDIS_URL`` set for the
Redis bus, which also makes Socket.IO use its Redis manager). Client processes then connect:

* every patient opens a ``/monitor`` socket and follows their session (as the patient page does);
* every clinician follows their 10 sessions (the roster's live form, docs/protocol.md §6.10);
* every on-call console calls ``watch_board``.

During the storm every patient sends ``raise_flag`` once (code ``anxiety_panic``, medium: it
triggers an alarm that pages the clinician and so reaches the board), at a uniformly random
moment within ``--storm`` seconds. Latencies are wall-clock differences between processes of
this one machine (``time.time()``): from just before the patient's emit to the moment the
receiving client's handler runs —

* *clinician*: the ``flag_raised`` event at the assigned clinician;
* *on-call*: the ``alarm_triggered`` ``board`` message at each console.

An expected message (``flag_raised`` and ``alarm_triggered`` at the clinician, the board
message at every console, for each flag the server acknowledged) that has not arrived when
everything else has, or ``--drain`` seconds after the storm, is *lost*; the same session and
``seq`` twice at one client is *duplicated*. Server CPU is read from ``/proc/<pid>/stat``
from the start of the storm to the end of the drain. Results are printed as a table and
written to ``bench/results/event_latency.json``.

Sessions stay in the lobby: ``raise_flag`` is accepted in every phase before the end, and the
path of a flag (command, transaction, bus, fan-out) does not depend on the phase. What the
lobby leaves out is the background work of live sessions: in ``dosing``/``active`` the
technical monitor judges every session each second and check-ins fall due — and patients
who do not publish video would raise a ``patient_disconnected`` alarm each.

Patients and receivers run in separate processes (``--patient-procs`` for more senders) so
that a busy sender loop does not delay the receivers' time stamps; on a 2-core machine the
server, the senders and the receivers still share the cores, which the figures include.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from multiprocessing.connection import Connection
from typing import Any

from bench._harness import (
    DEFAULT_PG_ADMIN_URL,
    DEFAULT_REDIS_URL,
    RESULTS_DIR,
    cpu_delta,
    cpu_of_matching,
    cpu_seconds,
    free_port,
    fresh_database,
    log,
    machine,
    profiled,
    raise_fd_limit,
    running_server,
    seed,
    server_env,
    summarize_ms,
    table,
    write_results,
)

NAMESPACE = "/monitor"
# Medium priority in the default catalogue: an alarm pages the clinician, so it is on the
# board. (Low priority would reach the board too but never pages; high latches.)
FLAG_CODE = "anxiety_panic"
SESSIONS_PER_CLINICIAN = 10
# Opening hundreds of sockets at once only measures the accept queue; a few dozen at a time
# is how fast a real clinic's clients would arrive anyway.
CONNECT_CONCURRENCY = 40
CALL_TIMEOUT_SECS = 60.0
READY_TIMEOUT_SECS = 600.0


# -- client processes ---------------------------------------------------------------------------


async def _connect(url: str, token: str) -> Any:
    import socketio

    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        url,
        namespaces=[NAMESPACE],
        auth={"token": token},
        transports=["websocket"],
        wait_timeout=60,
    )
    return sio


async def _call(sio: Any, event: str, data: dict[str, Any]) -> dict[str, Any]:
    reply = await sio.call(event, data, namespace=NAMESPACE, timeout=CALL_TIMEOUT_SECS)
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise RuntimeError(f"{event} refused: {reply!r}")
    return reply


async def _open_all(coros: list[Any]) -> tuple[list[Any], list[str]]:
    """Run connection coroutines a few dozen at a time; (results or None, error texts)."""
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    errors: list[str] = []

    async def one(coro: Any) -> Any:
        async with sem:
            try:
                return await coro
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                return None

    return list(await asyncio.gather(*(one(c) for c in coros))), errors


def _ready(conn: Connection, clients: list[Any], errors: list[str], started: float) -> None:
    """Tell the conductor how many of this worker's sockets connected, and how fast."""
    conn.send(
        (
            "ready",
            {
                "connected": sum(c is not None for c in clients),
                "errors": errors,
                "connect_secs": time.monotonic() - started,
            },
        )
    )


async def _patients(spec: dict[str, Any], conn: Connection) -> None:
    """Connect every patient, follow, wait for ``go``, raise one flag each at its moment."""
    url = spec["url"]
    items: list[tuple[str, str, float]] = spec["patients"]

    async def open_patient(session_id: str, token: str) -> Any:
        sio = await _connect(url, token)
        if spec["patients_follow"]:
            await _call(sio, "follow", {"session_id": session_id})
        return sio

    started = time.monotonic()
    clients, errors = await _open_all([open_patient(s, t) for s, t, _ in items])
    _ready(conn, clients, errors, started)
    kind, t0 = await asyncio.to_thread(conn.recv)
    assert kind == "go"

    async def storm(sio: Any, session_id: str, offset: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, t0 + offset - time.time()))
        sent = time.time()
        out: dict[str, Any] = {"session_id": session_id, "sent": sent}
        try:
            reply = await _call(
                sio,
                "raise_flag",
                {
                    "session_id": session_id,
                    "code": FLAG_CODE,
                    "client_id": uuid.uuid4().hex,
                    "note": f"bench sent at {sent:.6f}",
                },
            )
            out["acked"] = time.time()
            out["seq"] = reply["event"]["seq"]
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return out

    results = await asyncio.gather(
        *(storm(c, s, off) for c, (s, _, off) in zip(clients, items, strict=True) if c is not None)
    )
    conn.send(("done", {"sends": list(results)}))
    await asyncio.gather(*(c.disconnect() for c in clients if c is not None))


async def _receivers(spec: dict[str, Any], conn: Connection) -> None:
    """Clinicians follow their sessions, on-call consoles watch the board; record arrivals."""
    url = spec["url"]
    # (channel, receiver index, session id, seq, type, arrival time)
    records: list[tuple[str, int, str, int, str, float]] = []
    got: set[tuple[str, int, str, str]] = set()

    async def open_clinician(idx: int, token: str, sessions: list[str]) -> Any:
        sio = await _connect(url, token)

        async def on_event(ev: dict[str, Any]) -> None:
            now = time.time()
            records.append(("event", idx, ev["session_id"], ev["seq"], ev["type"], now))
            got.add(("event", idx, ev["session_id"], ev["type"]))

        sio.on("event", on_event, namespace=NAMESPACE)
        for session_id in sessions:
            await _call(sio, "follow", {"session_id": session_id})
        return sio

    async def open_console(idx: int, token: str) -> Any:
        sio = await _connect(url, token)

        async def on_board(ev: dict[str, Any]) -> None:
            now = time.time()
            records.append(("board", idx, ev["session_id"], ev["seq"], ev["type"], now))
            got.add(("board", idx, ev["session_id"], ev["type"]))

        sio.on("board", on_board, namespace=NAMESPACE)
        await _call(sio, "watch_board", {})
        return sio

    started = time.monotonic()
    clinicians: list[tuple[str, list[str]]] = spec["clinicians"]
    coros = [open_clinician(i, t, ss) for i, (t, ss) in enumerate(clinicians)]
    coros += [open_console(i, t) for i, t in enumerate(spec["oncall"])]
    clients, errors = await _open_all(coros)
    _ready(conn, clients, errors, started)
    kind, _t0 = await asyncio.to_thread(conn.recv)
    assert kind == "go"
    kind, payload = await asyncio.to_thread(conn.recv)
    assert kind == "expect"
    expected: set[tuple[str, int, str, str]] = set(payload["expected"])
    deadline = time.time() + payload["drain_secs"]
    # Stop as soon as every expected message is in (duplicates arrive with their originals).
    while time.time() < deadline and not expected <= got:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    conn.send(("done", {"records": records}))
    await asyncio.gather(*(c.disconnect() for c in clients if c is not None))


def _worker_main(role: str, spec: dict[str, Any], conn: Connection) -> None:
    """Entry point of a client process (multiprocessing, spawn)."""
    import logging

    # python-socketio logs every refused call and disconnect at INFO; keep the run quiet.
    logging.basicConfig(level=logging.WARNING)
    body = _patients if role == "patients" else _receivers
    try:
        asyncio.run(body(spec, conn))
    except Exception as exc:
        conn.send(("failed", f"{role}: {type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


# -- one run ------------------------------------------------------------------------------------


class Worker:
    """A client process and the parent's end of its pipe."""

    def __init__(self, role: str, spec: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.role = role
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(role, spec, child), daemon=True)
        self.proc.start()
        child.close()

    async def expect(self, kind: str, timeout: float) -> Any:
        """The next message, which must be *kind*."""
        ready = await asyncio.to_thread(self.conn.poll, timeout)
        if not ready:
            raise RuntimeError(f"{self.role} process: no {kind!r} within {timeout:.0f} s")
        got, payload = self.conn.recv()
        if got != kind:
            raise RuntimeError(f"{self.role} process: expected {kind!r}, got {got!r}: {payload}")
        return payload

    def cpu(self) -> float:
        """CPU seconds the client process has used so far."""
        try:
            return cpu_seconds(self.proc.pid or 0)
        except OSError:
            return 0.0

    def stop(self) -> None:
        """Wait briefly for the process to end, then terminate it."""
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


async def run_one(args: argparse.Namespace, bus: str) -> dict[str, Any]:
    """Seed, start a server with *bus*, run the storm, and summarise what arrived."""
    clinicians = max(1, -(-args.sessions // SESSIONS_PER_CLINICIAN))
    log(
        f"[{bus}] {args.sessions} sessions, {clinicians} clinicians, {args.oncall} on-call, "
        f"{args.db}"
    )
    async with fresh_database(args.db, bus, args.pg_admin_url) as db:
        seeded = await seed(
            db.url, sessions=args.sessions, clinicians=clinicians, oncall=args.oncall
        )
        port = free_port()
        env = server_env(db, port, redis_url=args.redis_url if bus == "redis" else None)
        async with running_server(env, port, db.var_dir) as server:
            log(f"  server pid {server.pid} on {server.url}")
            rng = random.Random(args.seed)
            patients = [(s, tok, rng.uniform(0, args.storm)) for s, tok, _ in seeded.sessions]
            owned: dict[int, list[str]] = defaultdict(list)
            for session_id, _, owner in seeded.sessions:
                owned[owner].append(session_id)
            owner_of = {s: owner for s, _, owner in seeded.sessions}
            receivers_spec = {
                "url": server.url,
                "clinicians": [(t, owned[i]) for i, t in enumerate(seeded.clinician_tokens)],
                "oncall": seeded.oncall_tokens,
            }
            chunks = [patients[i :: args.patient_procs] for i in range(args.patient_procs)]
            workers = [Worker("receivers", receivers_spec)] + [
                Worker(
                    "patients",
                    {
                        "url": server.url,
                        "patients": chunk,
                        "patients_follow": not args.no_patient_follow,
                    },
                )
                for chunk in chunks
            ]
            try:
                return await _drive(args, bus, server, workers, owner_of, clinicians, db.pg_name)
            finally:
                for w in workers:
                    await asyncio.to_thread(w.stop)


async def _drive(
    args: argparse.Namespace,
    bus: str,
    server: Any,
    workers: list[Worker],
    owner_of: dict[str, int],
    clinicians: int,
    pg_name: str | None,
) -> dict[str, Any]:
    """Connect the clients, start the storm, tell the receivers what to expect, summarise."""
    receivers, senders = workers[0], workers[1:]
    ready = await asyncio.gather(*(w.expect("ready", READY_TIMEOUT_SECS) for w in workers))
    connect_errors = [e for r in ready for e in r["errors"]]
    connected = sum(r["connected"] for r in ready)
    log(
        f"  {connected} sockets connected in {max(r['connect_secs'] for r in ready):.1f} s"
        + (f", {len(connect_errors)} failed: {connect_errors[:2]}" if connect_errors else "")
    )
    t0 = time.time() + 1.0
    # PostgreSQL backends (named by the database in their command line) and redis-server
    # work for the server too, outside its own CPU time.
    pg_before = cpu_of_matching(pg_name) if pg_name else {}
    redis_before = cpu_of_matching("redis-server") if bus == "redis" else {}
    cpu_before = server.cpu()
    client_cpu_before = sum(w.cpu() for w in workers)
    for w in workers:
        w.conn.send(("go", t0))
    # The storm and a little of the backlog it leaves; one flame graph per bus.
    profile_out = RESULTS_DIR / f"event_latency_{bus}.svg"
    with profiled(server.pid if args.profile else None, profile_out, int(args.storm) + 3):
        done = await asyncio.gather(
            *(w.expect("done", args.storm + CALL_TIMEOUT_SECS + 30) for w in senders)
        )
        sends = [s for d in done for s in d["sends"]]
        acked = [s for s in sends if "acked" in s]
        log(f"  storm over: {len(acked)}/{len(sends)} flags acknowledged")
        expected: list[tuple[str, int, str, str]] = []
        for s in acked:
            owner = owner_of[s["session_id"]]
            expected.append(("event", owner, s["session_id"], "flag_raised"))
            expected.append(("event", owner, s["session_id"], "alarm_triggered"))
            for console in range(args.oncall):
                expected.append(("board", console, s["session_id"], "alarm_triggered"))
        receivers.conn.send(("expect", {"expected": expected, "drain_secs": args.drain}))
        received = await receivers.expect("done", args.drain + 60)
    cpu_used = server.cpu() - cpu_before
    client_cpu = sum(w.cpu() for w in workers) - client_cpu_before
    pg_cpu = cpu_delta(pg_before, cpu_of_matching(pg_name)) if pg_name else None
    redis_cpu = cpu_delta(redis_before, cpu_of_matching("redis-server")) if bus == "redis" else None
    window = time.time() - t0
    return _summarise(
        bus,
        args,
        sends,
        received["records"],
        owner_of,
        cpu_used,
        client_cpu,
        window,
        connected,
        connect_errors,
        clinicians,
    ) | {
        # Approximate: a backend that closed before the end of the drain is not counted.
        "connect_secs": round(max(r["connect_secs"] for r in ready), 1),
        "postgres_cpu_secs": None if pg_cpu is None else round(pg_cpu, 2),
        "redis_cpu_secs": None if redis_cpu is None else round(redis_cpu, 2),
    }


def _summarise(
    bus: str,
    args: argparse.Namespace,
    sends: list[dict[str, Any]],
    records: list[tuple[str, int, str, int, str, float]],
    owner_of: dict[str, int],
    server_cpu: float,
    client_cpu: float,
    window: float,
    connected: int,
    connect_errors: list[str],
    clinicians: int,
) -> dict[str, Any]:
    sent_at = {s["session_id"]: s["sent"] for s in sends if "acked" in s}
    seen: Counter[tuple[str, int, str, int]] = Counter()
    clin_lat: list[float] = []
    board_lat: list[float] = []
    arrived: set[tuple[str, int, str, str]] = set()
    for channel, idx, session_id, seq, etype, at in records:
        seen[(channel, idx, session_id, seq)] += 1
        if seen[(channel, idx, session_id, seq)] > 1 or session_id not in sent_at:
            continue
        if channel == "event" and owner_of.get(session_id) != idx:
            continue
        arrived.add((channel, idx, session_id, etype))
        if channel == "event" and etype == "flag_raised":
            clin_lat.append(at - sent_at[session_id])
        elif channel == "board" and etype == "alarm_triggered":
            board_lat.append(at - sent_at[session_id])
    lost_clin = sum(
        (("event", owner_of[s], s, t) not in arrived)
        for s in sent_at
        for t in ("flag_raised", "alarm_triggered")
    )
    lost_board = sum(
        (("board", c, s, "alarm_triggered") not in arrived)
        for s in sent_at
        for c in range(args.oncall)
    )
    dup_clin = sum(n - 1 for k, n in seen.items() if k[0] == "event" and n > 1)
    dup_board = sum(n - 1 for k, n in seen.items() if k[0] == "board" and n > 1)
    ack_lat = [s["acked"] - s["sent"] for s in sends if "acked" in s]
    errors = Counter(s["error"].split(":")[0] for s in sends if "error" in s)
    return {
        "bus": bus,
        "db": args.db,
        "sessions": args.sessions,
        "clinicians": clinicians,
        "oncall_consoles": args.oncall,
        "storm_secs": args.storm,
        "sockets_connected": connected,
        "connect_errors": connect_errors[:10],
        "flags_sent": len(sends),
        "flags_acked": len(sent_at),
        "flag_errors": dict(errors),
        "ack": summarize_ms(ack_lat),
        "clinician_flag_raised": summarize_ms(clin_lat),
        "oncall_board": summarize_ms(board_lat),
        "lost_clinician": lost_clin,
        "lost_oncall": lost_board,
        "duplicated_clinician": dup_clin,
        "duplicated_oncall": dup_board,
        "server_cpu_secs": round(server_cpu, 2),
        "client_cpu_secs": round(client_cpu, 2),
        "window_secs": round(window, 1),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    """The results as one row per bus."""
    headers = [
        "bus",
        "sessions",
        "flags",
        "acked",
        "clin p50",
        "clin p99",
        "clin max",
        "oncall p50",
        "oncall p99",
        "oncall max",
        "lost",
        "dup",
        "srv cpu s",
        "pg cpu s",
        "redis cpu s",
        "window s",
    ]
    rows = [
        [
            r["bus"],
            r["sessions"],
            r["flags_sent"],
            r["flags_acked"],
            r["clinician_flag_raised"]["p50_ms"],
            r["clinician_flag_raised"]["p99_ms"],
            r["clinician_flag_raised"]["max_ms"],
            r["oncall_board"]["p50_ms"],
            r["oncall_board"]["p99_ms"],
            r["oncall_board"]["max_ms"],
            r["lost_clinician"] + r["lost_oncall"],
            r["duplicated_clinician"] + r["duplicated_oncall"],
            r["server_cpu_secs"],
            r["postgres_cpu_secs"],
            r["redis_cpu_secs"],
            r["window_secs"],
        ]
        for r in results
    ]
    print()
    print("flag -> clinician (flag_raised event) and flag -> on-call board (alarm_triggered), ms;")
    print("lost/dup: clinician and on-call together; CPU seconds from the storm to the drain's end")
    print(table(headers, rows))
    print()
    for r in results:
        print(
            f"{r['bus']}: flag ack p50/p99 {r['ack']['p50_ms']}/{r['ack']['p99_ms']} ms; "
            f"lost clinician {r['lost_clinician']}, on-call {r['lost_oncall']}; "
            f"client CPU {r['client_cpu_secs']} s; errors {r['flag_errors'] or 'none'}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m bench.event_latency",
        description="Flag storm: flag -> clinician roster and on-call board latency.",
    )
    p.add_argument("--sessions", type=int, default=1000, help="live sessions (default 1000)")
    p.add_argument("--oncall", type=int, default=3, help="on-call consoles (default 3)")
    p.add_argument("--storm", type=float, default=10.0, help="storm length, s (default 10)")
    p.add_argument("--bus", choices=["memory", "redis", "both"], default="both")
    p.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument(
        "--drain",
        type=float,
        default=30.0,
        help="longest wait for late messages after the storm, s (default 30)",
    )
    p.add_argument("--patient-procs", type=int, default=1, help="sender processes (default 1)")
    p.add_argument(
        "--no-patient-follow",
        action="store_true",
        help="patients only send (by default they follow their session)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the send times")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graph of the server during the storm (bench/results/)",
    )
    p.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = p.parse_args(argv)
    if args.sessions < 1 or args.oncall < 0 or args.storm <= 0 or args.patient_procs < 1:
        p.error("sessions and patient-procs must be at least 1, storm positive")
    return args


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every requested bus, one after the other, each on a fresh database and server."""
    buses = ["memory", "redis"] if args.bus == "both" else [args.bus]
    return [await run_one(args, bus) for bus in buses]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    raise_fd_limit()
    started = time.time()
    env = machine()
    results = asyncio.run(main_async(args))
    print_table(results)
    print(f"load average before the run: {env['loadavg_at_start']} on {env['cpus']} CPUs")
    path = write_results(
        "event_latency",
        {
            "benchmark": "event_latency",
            "started": started,
            "machine": env,
            "args": vars(args),
            "results": results,
        },
    )
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
