"""Join time: from a patient's ``join`` to the first decoded video frame at a watching viewer.

Usage (from the repository root; PostgreSQL as for the tests, or ``--db sqlite``)::

    python -m bench.join_time                 # 20 joins
    python -m bench.join_time --joins 3       # a quick look

It seeds one clinic (a clinician, a patient, one session in the lobby) into a fresh database
and starts ``python -m server run`` as a subprocess. A viewer (``signaling.client`` as the
clinician, decoding what it receives) joins the session and watches it for the whole run.
Then, ``--joins`` times, a patient client connects to ``/signal`` (not timed), and the clock
starts just before its ``join``: join, offer with a 640x480 pattern video and a tone
(``signaling.synthetic``), answer, ICE and DTLS, the server forwards the publisher's first key
frame, the viewer decodes it. The patient then leaves and disconnects.

Each join's picture has its own background colour, and before each join the viewer must have
seen no video for ``--quiet`` seconds, so the frame that stops the clock is the new publisher's
(a frame is counted only if its background matches). Reported: p50 / p95 / max of
join → answer applied (the patient's signalling) and join → first decoded frame at the viewer;
printed as a table and written to ``bench/results/join_time.json``.

The patient and the viewer are one client process (aiortc encodes and decodes on worker
threads). Two things to know when reading the figures: aiortc's jitter buffer completes a
frame only when the first packet of the *next* frame arrives, and it sits both in the server's
publisher-side receiver and in this viewer, so about two frame intervals (2/15 s at the default
``--fps 15``) are part of every figure; a browser viewer completes a frame on the RTP marker
bit. That is also why, right after a join, this viewer usually first decodes one frame of the
*previous* publisher (its last frame, released by the new one's first packet): such frames are
listed per join as ``stale_frames`` and never stop the clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench._harness import (
    DEFAULT_PG_ADMIN_URL,
    free_port,
    fresh_database,
    log,
    machine,
    raise_fd_limit,
    running_server,
    seed,
    server_env,
    summarize_ms,
    table,
    write_results,
)

WIDTH, HEIGHT = 640, 480
# Backgrounds of successive joins: each far from the next and from the pattern's light-grey
# bar, so a decoded frame tells which publisher it came from.
PALETTE = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 160, 40), (160, 40, 200)]
# VP8 and the YUV 4:2:0 round trip move colours a little; the palette is far further apart.
COLOUR_TOLERANCE = 50
FRAME_TIMEOUT_SECS = 30.0
QUIET_TIMEOUT_SECS = 15.0


@dataclass
class Viewer:
    """The watching clinician's decoding side: when each video frame arrived, and whether it
    is the colour being waited for."""

    last_frame_at: float = 0.0
    frames: int = 0
    want: tuple[int, int, int] | None = None
    matched_at: float | None = None
    tasks: list[asyncio.Future[None]] = field(default_factory=list)
    # (arrival, a background pixel) of frames seen while armed that were not the new colour
    stale: list[tuple[float, list[int]]] = field(default_factory=list)

    def on_track(self, track: Any) -> None:
        """``pc.on("track")``: read every track so aiortc keeps decoding."""
        self.tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind != "video":
                    continue
                now = time.time()
                self.last_frame_at = now
                self.frames += 1
                if self.want is not None and self.matched_at is None:
                    if _matches(frame, self.want):
                        self.matched_at = now
                    else:
                        img = frame.to_ndarray(format="rgb24")
                        self.stale.append((now, img[img.shape[0] // 2, -4].tolist()))

    def arm(self, colour: tuple[int, int, int]) -> None:
        """Wait for the first frame with *colour* as its background."""
        self.want, self.matched_at = colour, None
        self.stale.clear()

    def stop(self) -> None:
        """Stop reading the tracks."""
        for task in self.tasks:
            task.cancel()


def _matches(frame: Any, colour: tuple[int, int, int]) -> bool:
    """Whether the decoded *frame*'s background is *colour*: two points on the middle row,
    right of the label, far enough apart that the moving bar covers at most one of them."""
    img = frame.to_ndarray(format="rgb24")
    h, w = img.shape[0], img.shape[1]
    for x in (w * 3 // 4, w - 4):
        px = img[h // 2, x]
        if all(abs(int(px[i]) - colour[i]) <= COLOUR_TOLERANCE for i in range(3)):
            return True
    return False


async def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def one_join(
    url: str, token: str, session_id: str, viewer: Viewer, i: int, quiet: float, fps: float
) -> dict[str, Any]:
    """Connect a patient, time join → answer → first matching frame at *viewer*, leave."""
    from signaling.client import SignalingClient
    from signaling.synthetic import PatternVideoTrack, ToneAudioTrack

    # The previous publisher's last frames must be over, so the next one seen is the new one.
    if not await _until(lambda: time.time() - viewer.last_frame_at >= quiet, QUIET_TIMEOUT_SECS):
        return {"join": i, "error": f"viewer still receiving video after {QUIET_TIMEOUT_SECS} s"}
    colour = PALETTE[i % len(PALETTE)]
    patient = SignalingClient(url, token, reconnect=False)
    c0 = time.time()
    await patient.connect()
    video = PatternVideoTrack(f"join {i}", width=WIDTH, height=HEIGHT, fps=fps, background=colour)
    audio = ToneAudioTrack()
    out: dict[str, Any] = {"join": i, "connect_ms": round((time.time() - c0) * 1000, 1)}
    try:
        viewer.arm(colour)
        t0 = time.time()
        await patient.publish(session_id, [video, audio])
        out["answer_ms"] = round((time.time() - t0) * 1000, 1)
        if await _until(lambda: viewer.matched_at is not None, FRAME_TIMEOUT_SECS):
            assert viewer.matched_at is not None
            out["first_frame_ms"] = round((viewer.matched_at - t0) * 1000, 1)
            # Typically one frame of the previous join's colour, some 100-200 ms after the join:
            # the old publication's last frame, released when the new one's packets arrive.
            out["stale_frames"] = [(round(t - t0, 3), px) for t, px in viewer.stale]
            viewer.stale.clear()
        else:
            out["error"] = f"no frame of the new publisher within {FRAME_TIMEOUT_SECS} s"
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        viewer.want = None
        with contextlib.suppress(Exception):
            await patient.call("leave", {"session_id": session_id}, wait_secs=10)
        await patient.close()
        video.stop()
        audio.stop()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Seed, start the server, keep a viewer watching, time every join."""
    from signaling.client import SignalingClient

    async with fresh_database(args.db, "join", args.pg_admin_url) as db:
        seeded = await seed(db.url, sessions=1, clinicians=1, oncall=0, progress=False)
        session_id, patient_token, _ = seeded.sessions[0]
        port = free_port()
        async with running_server(server_env(db, port), port, db.var_dir) as server:
            log(f"server pid {server.pid} on {server.url}")
            viewer = Viewer()
            watching = SignalingClient(server.url, seeded.clinician_tokens[0], reconnect=False)
            await watching.connect()
            await watching.view(session_id, viewer.on_track)
            cpu_before = server.cpu()
            samples = []
            try:
                for i in range(args.joins):
                    sample = await one_join(
                        server.url, patient_token, session_id, viewer, i, args.quiet, args.fps
                    )
                    samples.append(sample)
                    log(
                        f"  join {i + 1}/{args.joins}: answer {sample.get('answer_ms', '-')} ms, "
                        f"first frame {sample.get('first_frame_ms', '-')} ms"
                        + (f" ({sample['error']})" if "error" in sample else "")
                    )
            finally:
                cpu_used = server.cpu() - cpu_before
                viewer.stop()
                await watching.close()
    ok = [s for s in samples if "first_frame_ms" in s]
    return {
        "db": args.db,
        "joins": args.joins,
        "succeeded": len(ok),
        "failed": [s for s in samples if "error" in s],
        "size": f"{WIDTH}x{HEIGHT}",
        "fps": args.fps,
        "join_to_answer": summarize_ms(
            [s["answer_ms"] / 1000 for s in samples if "answer_ms" in s]
        ),
        "join_to_first_frame": summarize_ms([s["first_frame_ms"] / 1000 for s in ok]),
        "joins_with_stale_frame": sum(bool(s.get("stale_frames")) for s in ok),
        "server_cpu_secs": round(cpu_used, 2),
        "samples": samples,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m bench.join_time",
        description="Patient join -> first decoded frame at a watching viewer.",
    )
    p.add_argument("--joins", type=int, default=20, help="how many joins (default 20)")
    p.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument(
        "--quiet",
        type=float,
        default=0.5,
        help="seconds without video at the viewer before each join (default 0.5)",
    )
    p.add_argument("--fps", type=float, default=15.0, help="the patient's frame rate (default 15)")
    p.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    args = p.parse_args(argv)
    if args.joins < 1:
        p.error("--joins must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    raise_fd_limit()
    started = time.time()
    env = machine()
    result = asyncio.run(run(args))
    a, f = result["join_to_answer"], result["join_to_first_frame"]
    print()
    print(f"patient join -> viewer's first decoded {result['size']} frame, {result['db']}")
    print(
        table(
            ["", "n", "p50 ms", "p95 ms", "max ms"],
            [
                ["join -> answer", a["n"], a["p50_ms"], a["p95_ms"], a["max_ms"]],
                ["join -> first frame", f["n"], f["p50_ms"], f["p95_ms"], f["max_ms"]],
            ],
        )
    )
    print(
        f"\n{result['succeeded']}/{result['joins']} joins reached the viewer; "
        f"server CPU {result['server_cpu_secs']} s; {result['joins_with_stale_frame']} first "
        "showed a frame of the previous publisher (not counted)"
    )
    print(f"load average before the run: {env['loadavg_at_start']} on {env['cpus']} CPUs")
    for failure in result["failed"]:
        print(f"  join {failure['join']}: {failure['error']}")
    path = write_results(
        "join_time",
        {
            "benchmark": "join_time",
            "started": started,
            "machine": env,
            "args": vars(args),
            "result": result,
        },
    )
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
