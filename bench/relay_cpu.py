"""Relay CPU benchmark: forwarding encoded VP8/Opus versus re-encoding per viewer.

Measures, through the real server (``python -m server run`` on SQLite, its own process) and the
real ``/signal`` protocol:

1. **Per viewer stream**: with one synthetic publisher (640×480, 30 fps, VP8 at ~1 Mbps, plus
   Opus) and 1, 2, 4, 8 viewers, the server's CPU (``/proc/<pid>/stat`` utime+stime, in % of
   one core) divided by the number of viewer video streams, and the frames per second each
   viewer decodes. All modes in the same run, back to back at each viewer count; what the
   clients offer decides how the unchanged server serves them:

   * ``forward``: ordinary viewers (their offers have VP8): the relay forwards the publisher's
     encoded frames (docs/protocol.md §5.7).
   * ``reencode``: viewers whose offer has only H.264 (codec preferences on the viewer's video
     transceiver, as ``tests/signaling/test_namespace.py`` does): the server decodes the VP8
     once and encodes H.264 once per viewer (``mode = "reencode"``). aiortc's H.264 encoder
     is libx264 at its default preset (~15 ms a 640×480 frame here, against ~2.5 ms for
     its VP8 encoder), so this mode overstates what re-encoding cost before forwarding.
   * ``reencode-vp8``: like-for-like with the relay before forwarding (decode once, encode
     VP8 per viewer): the publisher offers only H.264, so the server decodes it once and the
     ordinary (VP8) viewers' senders encode VP8 each. That publisher sends a pre-encoded
     one-second H.264 loop (same pictures and bitrate; key frame once a loop), because
     encoding H.264 live would take most of a shared core from the clients.

2. **Sessions per core**: sessions of one publisher and two forwarding viewers are added one
   at a time until the mean delivered frame rate falls below ``--min-fps`` (29) or
   ``--max-sessions`` is reached; sessions per core = sessions sustained / server cores used.

Publishers and viewers (which encode and decode) run in ``--client-procs`` separate worker
processes (this file with ``--worker``), so the server's CPU is measured alone; their CPU and
the whole machine's are reported too, with what limited each measurement.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python bench/relay_cpu.py            # full run, ~4-5 min on 2 cores
    PYTHONPATH=. .venv/bin/python bench/relay_cpu.py --quick    # 1 and 2 viewers, ~75 s
    PYTHONPATH=. .venv/bin/python bench/relay_cpu.py --viewers 1,4 --seconds 5 --max-sessions 4
    PYTHONPATH=. .venv/bin/python bench/relay_cpu.py --profile  # + py-spy flame graph (SVG)

It prints a table and writes ``bench/results/relay_cpu.json`` and ``relay_cpu.png`` (the plot
needs matplotlib, in the ``dev`` extra).

The publisher's bitrate. aiortc 1.16.0's ``Vp8Encoder`` has a ``target_bitrate`` property,
starting at the module's ``DEFAULT_BITRATE`` (500 kbps) and clamped to ``MIN_BITRATE`` ..
``MAX_BITRATE`` (250 kbps .. 1.5 Mbps); the sender sets it from each REMB the receiver sends
(here, the server), so a stream ramps and drifts. The worker processes set all three module
constants to ``--bitrate`` (1 Mbps) before any encoder exists: every publisher encodes CBR at
that rate from its first frame and REMB cannot move it. The synthetic picture
(:class:`signaling.synthetic.PatternVideoTrack`'s bar, label and clock) compresses to
~85 kbps, far from a camera's ~1 Mbps and with ten times fewer packets to relay, so the
benchmark adds faint noise (±4 levels), which makes the encoder actually spend the 1 Mbps.
The H.264 publisher's loop is encoded at the same bitrate. The measured bitrates are in the
output. The server's own encoders (re-encoding) run as the server runs them: aiortc's defaults
(VP8 from 500 kbps, H.264 from 1 Mbps), moved by the viewers' REMB.

Reading the figures. CPU per viewer stream includes the publisher's share (receiving,
decrypting, reassembling its stream), which every viewer count pays once: at one viewer it
dominates. ``marginal`` is the cost of one more viewer (largest minus smallest count). A point
whose viewers got fewer frames than the publisher sent used less CPU than full rate would
need; the ``@30fps`` column scales it up, and the goal verdicts use that column. Sessions per
core is an extrapolation: sessions sustained / (server CPU / 100); on a small shared machine
the clients (each viewer decodes, each publisher encodes) usually run out of CPU long before
the server does, which the "limited by" column says.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

THIS_FILE = Path(__file__).resolve()
ROOT = THIS_FILE.parents[1]
RESULTS = ROOT / "bench" / "results"
BENCH_SECRET = "bench-secret-key-that-is-long-enough-for-hs256-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
VIDEO_CLOCK_RATE = 90_000
WIDTH, HEIGHT, FPS = 640, 480, 30
# Distinct noisy pictures cycled by a publisher: each differs from the one before everywhere,
# so every frame costs the encoder (and the network) what a camera's would.
NOISE_POOL_FRAMES = 30
NOISE_LEVELS = 4
START_TIMEOUT_SECS = 30
FIRST_FRAME_TIMEOUT_SECS = 20
REQUEST_TIMEOUT_SECS = 60
# A process this busy (% of one core) cannot do more: its event loop is the bottleneck.
SATURATED_PROCESS_PCT = 90.0
# The machine is saturated when this share of all cores is busy (every process, not only ours):
# averaged over a window, 85 % on two cores already means frames queue in its busy bursts.
SATURATED_MACHINE_SHARE = 0.85

log = logging.getLogger("bench.relay_cpu")


@dataclass(frozen=True)
class Mode:
    """How the server serves the viewers of a point: decided by what the clients offer."""

    publisher_codec: str  # vp8: the server's preference (VP8); h264: an H.264-only offer
    viewer_codec: str  # vp8: any (VP8 is forwarded); h264: an H.264-only offer
    label: str


MODES = {
    # The relay forwards the publisher's VP8 packets: no decoding, no encoding.
    "forward": Mode("vp8", "vp8", "forwarding"),
    # H.264-only viewers: the server decodes the VP8 once, encodes H.264 (x264) per viewer.
    "reencode": Mode("vp8", "h264", "re-encoding to H.264"),
    # An H.264-only publisher: the server decodes it once and encodes VP8 (libvpx) per viewer,
    # which is what the relay did for every viewer before it forwarded (decode VP8, encode VP8).
    "reencode-vp8": Mode("h264", "vp8", "re-encoding to VP8"),
}


# ---------------------------------------------------------------------------------------------
# CPU accounting
# ---------------------------------------------------------------------------------------------


def process_cpu_secs(pid: int) -> float:
    """User + system CPU seconds of *pid*, all its threads (codec threads included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        # The command name (field 2) may contain spaces: split after its closing parenthesis.
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


@dataclass
class CpuSnapshot:
    """CPU counters of the server, the clients and the machine at one instant."""

    wall: float
    server: float
    clients: list[float]
    machine_busy: int
    machine_total: int

    @classmethod
    def take(cls, server_pid: int, client_pids: list[int]) -> CpuSnapshot:
        """Read every counter now."""
        busy, total = machine_ticks()
        return cls(
            time.monotonic(),
            process_cpu_secs(server_pid),
            [process_cpu_secs(p) for p in client_pids],
            busy,
            total,
        )


@dataclass
class CpuUsage:
    """CPU used between two snapshots, in % of one core (the machine's in % of all cores)."""

    server_pct: float
    clients_pct: float
    busiest_client_pct: float
    machine_pct: float

    @classmethod
    def between(cls, a: CpuSnapshot, b: CpuSnapshot) -> CpuUsage:
        """Usage from *a* to *b*."""
        wall = b.wall - a.wall
        clients = [(y - x) / wall * 100 for x, y in zip(a.clients, b.clients, strict=True)]
        ticks = b.machine_total - a.machine_total
        return cls(
            server_pct=(b.server - a.server) / wall * 100,
            clients_pct=sum(clients),
            busiest_client_pct=max(clients, default=0.0),
            machine_pct=(b.machine_busy - a.machine_busy) / ticks * 100 if ticks else 0.0,
        )


# ---------------------------------------------------------------------------------------------
# Worker process: synthetic publishers and viewers
# ---------------------------------------------------------------------------------------------


def pin_bitrate(bps: int) -> None:
    """Make every VP8 and H.264 encoder of this process encode at *bps*, from its first frame.

    aiortc's ``Vp8Encoder`` and ``H264Encoder`` read these module constants when created
    (``DEFAULT_BITRATE``) and whenever REMB sets ``target_bitrate`` (clamped to
    ``MIN_BITRATE``..``MAX_BITRATE``): all three equal means a fixed rate.
    """
    from aiortc.codecs import h264, vpx

    vpx.DEFAULT_BITRATE = vpx.MIN_BITRATE = vpx.MAX_BITRATE = bps
    h264.DEFAULT_BITRATE = h264.MIN_BITRATE = h264.MAX_BITRATE = bps


@functools.cache
def noisy_pictures() -> tuple[Any, ...]:
    """The publisher's pictures as yuv420p arrays: PatternVideoTrack's drawing plus noise."""
    import numpy as np
    from av import VideoFrame

    from signaling.synthetic import PatternVideoTrack

    pattern = PatternVideoTrack("vigil bench", width=WIDTH, height=HEIGHT, fps=FPS)
    rng = np.random.default_rng(5)
    pictures = []
    for _ in range(NOISE_POOL_FRAMES):
        rgb = np.asarray(pattern._draw()).astype(np.int16)
        pattern.frames_sent += 4  # move the bar a visible step between pictures
        noise = rng.integers(-NOISE_LEVELS, NOISE_LEVELS + 1, size=rgb.shape[:2])[..., None]
        rgb = np.clip(rgb + noise, 0, 255).astype(np.uint8)
        yuv = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        pictures.append(yuv.to_ndarray())
    return tuple(pictures)


def make_video_track() -> Any:
    """A 640×480 30 fps camera stand-in that encodes like a camera (see the module doc)."""
    from av import VideoFrame

    from signaling.synthetic import PatternVideoTrack

    class NoisyPatternTrack(PatternVideoTrack):
        """PatternVideoTrack's pacing, with pre-drawn noisy pictures (drawing is not measured)."""

        def __init__(self) -> None:
            super().__init__("vigil bench", width=WIDTH, height=HEIGHT, fps=FPS)
            self._pictures = noisy_pictures()

        def _picture(self) -> VideoFrame:
            # A new frame object each time: the encoder marks a frame it must make a key frame.
            picture = self._pictures[self.frames_sent % len(self._pictures)]
            return VideoFrame.from_ndarray(picture, format="yuv420p")

    return NoisyPatternTrack()


@functools.cache
def h264_loop(bitrate: int) -> tuple[bytes, ...]:
    """The noisy pictures encoded once as H.264 (aiortc's settings: libx264, Baseline,
    zerolatency), one IDR at the start: a loop a publisher can send again and again."""
    import av
    from av import VideoFrame

    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.time_base = fractions.Fraction(1, FPS)
    codec.gop_size = NOISE_POOL_FRAMES  # the loop's first frame is its only IDR
    codec.options = {"level": "31", "tune": "zerolatency"}
    codec.profile = "Baseline"
    packets: list[bytes] = []
    pictures = noisy_pictures()
    for i, picture in enumerate(pictures):
        frame = VideoFrame.from_ndarray(picture, format="yuv420p")
        frame.pts = i
        packets.append(b"".join(bytes(p) for p in codec.encode(frame)))
    packets[-1] += b"".join(bytes(p) for p in codec.encode(None))  # zerolatency: nothing left
    return tuple(packets)


def make_h264_loop_track(bitrate: int) -> Any:
    """A 640×480 30 fps H.264 source that sends pre-encoded packets (aiortc's sender only
    packetizes them): encoding H.264 live costs ~15 ms a frame, more than these shared
    cores can give each publisher. It ignores key-frame requests; a key frame comes every
    second, at the start of each loop."""
    import av
    from aiortc import MediaStreamTrack

    class H264LoopTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self._packets = h264_loop(bitrate)
            self.frames_sent = 0
            self._start: float | None = None

        async def recv(self) -> av.Packet:
            if self._start is None:
                self._start = time.monotonic()
            delay = self._start + self.frames_sent / FPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            packet = av.Packet(self._packets[self.frames_sent % len(self._packets)])
            packet.pts = self.frames_sent * VIDEO_CLOCK_RATE // FPS
            packet.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
            self.frames_sent += 1
            return packet

    return H264LoopTrack()


@dataclass
class ViewerCounts:
    """What one viewer received so far."""

    video_frames: int = 0
    audio_frames: int = 0
    codec: str = ""
    first_frame_at: float | None = None


class Worker:
    """Runs publishers and viewers on command (JSON lines on stdin, replies on stdout)."""

    def __init__(self, bitrate: int) -> None:
        self.bitrate = bitrate
        self.clients: list[Any] = []
        self.viewers: dict[str, ViewerCounts] = {}
        self.publishers: dict[str, Any] = {}  # key → (pc, video track)
        self.tasks: set[asyncio.Task[Any]] = set()

    async def publish(
        self, key: str, url: str, token: str, session_id: str, codec: str
    ) -> dict[str, Any]:
        """Start publishing synthetic audio and video to *session_id*, video in *codec*
        (``vp8``: whatever the server prefers, which is VP8; ``h264``: only H.264)."""
        from aiortc import RTCSessionDescription

        from signaling.client import SignalingClient
        from signaling.peer import make_peer_connection
        from signaling.synthetic import ToneAudioTrack

        client = SignalingClient(url, token, reconnect=False)
        self.clients.append(client)
        await client.connect()
        joined = await client.join(session_id, "publisher")
        pc = make_peer_connection(joined["ice_servers"])
        client.pcs[session_id] = pc  # closed with the client
        video = make_video_track() if codec == "vp8" else make_h264_loop_track(self.bitrate)
        pc.addTrack(ToneAudioTrack())
        sender = pc.addTrack(video)
        if codec == "h264":
            transceiver = next(t for t in pc.getTransceivers() if t.sender is sender)
            transceiver.setCodecPreferences(_h264_only())
        await pc.setLocalDescription(await pc.createOffer())
        answer = await client.call(
            "offer", {"session_id": session_id, "type": "offer", "sdp": pc.localDescription.sdp}
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self.publishers[key] = (pc, video)
        return {"codec": _answer_video_codec(answer["sdp"])}

    async def view(
        self, key: str, url: str, token: str, session_id: str, codec: str
    ) -> dict[str, Any]:
        """Start viewing *session_id*, offering only *codec* (``vp8`` = any, ``h264`` = only it)."""
        from aiortc import RTCSessionDescription
        from aiortc.mediastreams import MediaStreamError

        from signaling.client import SignalingClient
        from signaling.peer import make_peer_connection

        client = SignalingClient(url, token, reconnect=False)
        self.clients.append(client)
        await client.connect()
        joined = await client.join(session_id, "viewer")
        pc = make_peer_connection(joined["ice_servers"])
        client.pcs[session_id] = pc  # closed with the client
        pc.addTransceiver("audio", direction="recvonly")
        video = pc.addTransceiver("video", direction="recvonly")
        if codec == "h264":
            # The server cannot forward VP8 to this viewer: it re-encodes (docs/protocol.md §5.7).
            video.setCodecPreferences(_h264_only())
        counts = self.viewers[key] = ViewerCounts()

        async def consume(track: Any) -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()  # decoded by aiortc's receiver, as a viewer would
                    if track.kind == "video":
                        counts.video_frames += 1
                        if counts.first_frame_at is None:
                            counts.first_frame_at = time.monotonic()
                    else:
                        counts.audio_frames += 1

        @pc.on("track")
        def _on_track(track: Any) -> None:
            task = asyncio.create_task(consume(track))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        await pc.setLocalDescription(await pc.createOffer())
        answer = await client.call(
            "offer", {"session_id": session_id, "type": "offer", "sdp": pc.localDescription.sdp}
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        counts.codec = _answer_video_codec(answer["sdp"])
        return {"codec": counts.codec}

    async def stats(self) -> dict[str, Any]:
        """Cumulative counts of every viewer and publisher, with this process's clock."""
        publishers = {}
        for key, (pc, video) in self.publishers.items():
            sent = 0
            for report in (await pc.getStats()).values():
                if report.type == "outbound-rtp" and report.kind == "video":
                    sent += report.bytesSent
            publishers[key] = {
                "frames_sent": video.frames_sent,
                "video_bytes": sent,
                "codec": _answer_video_codec(pc.remoteDescription.sdp),
            }
        return {
            "time": time.monotonic(),
            "viewers": {k: asdict(v) for k, v in self.viewers.items()},
            "publishers": publishers,
        }

    async def close(self) -> dict[str, Any]:
        """Close every client (the server sees them leave)."""
        for client in self.clients:
            await client.close()
        for task in list(self.tasks):
            task.cancel()
        self.clients.clear()
        self.viewers.clear()
        self.publishers.clear()
        return {}


def _h264_only() -> list[Any]:
    """Codec preferences offering H.264 alone (no VP8, no RTX)."""
    from aiortc import RTCRtpSender

    return [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "H264"]


def _answer_video_codec(sdp: str) -> str:
    """The first codec of the video m-line of *sdp* (what was negotiated)."""
    in_video = False
    first_pt = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_video = line.startswith("m=video")
            first_pt = line.split()[3] if in_video and len(line.split()) > 3 else None
        elif in_video and first_pt and line.startswith(f"a=rtpmap:{first_pt} "):
            return line.split()[1].split("/")[0]
    return ""


async def worker_main(bitrate: int) -> None:
    """Serve commands until stdin closes: ``{"id", "op", ...}`` → ``{"id", "ok", ...}``."""
    pin_bitrate(bitrate)
    noisy_pictures()  # drawn once, before anything is measured
    worker = Worker(bitrate)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pending: set[asyncio.Task[None]] = set()

    def reply(msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    async def handle(msg: dict[str, Any]) -> None:
        op = msg.pop("op")
        rid = msg.pop("id")
        try:
            result = await getattr(worker, op)(**msg)
            reply({"id": rid, "ok": True, **result})
        except Exception as exc:
            log.exception("worker command %s failed", op)
            reply({"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    reply({"id": 0, "ok": True, "ready": True})
    while line := await reader.readline():
        # Concurrently: viewers of one point connect in parallel.
        task = asyncio.create_task(handle(json.loads(line)))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await worker.close()


# ---------------------------------------------------------------------------------------------
# Orchestrator: the server, the workers, the measurements
# ---------------------------------------------------------------------------------------------


class WorkerProcess:
    """One worker subprocess and its request/reply pipe."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._next = 1
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[0] = self.ready

    @classmethod
    async def start(cls, bitrate: int, stderr: Any) -> WorkerProcess:
        """Start a worker and wait until it has drawn its pictures."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(THIS_FILE),
            "--worker",
            "--bitrate",
            str(bitrate),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=_child_env(),
            cwd=ROOT,
        )
        worker = cls(proc)
        await asyncio.wait_for(worker.ready, START_TIMEOUT_SECS)
        return worker

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            fut = self._waiting.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RuntimeError("a benchmark worker exited (see its log)"))

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its reply; raise if it failed."""
        assert self.proc.stdin is not None
        rid = self._next
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self.proc.stdin.write((json.dumps({"id": rid, "op": op, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(fut, REQUEST_TIMEOUT_SECS)
        if not reply.get("ok"):
            raise RuntimeError(f"worker {op} failed: {reply.get('error')}")
        return reply

    async def stop(self) -> None:
        """Close its stdin (it closes its clients and exits); kill it if it hangs."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


def _child_env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Seeded:
    """People and sessions put into the benchmark's database."""

    viewer_token: str
    sessions: list[tuple[str, str]]  # (session id, its patient's token)


async def seed(db_url: str, n_sessions: int) -> Seeded:
    """A clinic, a clinician (the viewer of every session) and *n_sessions* sessions, each
    with its own patient (the publisher), written before the server starts."""
    from monitoring.bus import MemoryBus
    from monitoring.clock import Clock
    from monitoring.events import EventStore
    from server import accounts
    from server.auth import login_token
    from server.db import for_writing, make_engine, make_sessionmaker, migrate
    from server.models import Role

    engine = make_engine(db_url)
    try:
        await migrate(engine)
        store = EventStore(make_sessionmaker(engine), MemoryBus(), Clock(1.0))
        now = store.clock.now()
        async with store.sessionmaker() as db, db.begin():
            await for_writing(db)
            clinic = await accounts.get_or_create_clinic(db, "Bench clinic")
            doc = await accounts.create_user(
                db,
                clinic=clinic,
                username="doc",
                role=Role.CLINICIAN,
                display_name="Doc",
                password="bench password 123",
            )
            patients = [
                await accounts.create_user(
                    db,
                    clinic=clinic,
                    username=f"pat{i}",
                    role=Role.PATIENT,
                    display_name=f"Patient {i}",
                    password=None,
                )
                for i in range(n_sessions)
            ]
            clinic_id, doc_id = clinic.id, doc.id
            doc_token = login_token(doc, BENCH_SECRET, now)
            pat_tokens = [(p.id, login_token(p, BENCH_SECRET, now)) for p in patients]
        sessions = []
        for patient_id, token in pat_tokens:
            created = await accounts.create_session(
                store,
                clinic_id=clinic_id,
                patient_id=patient_id,
                clinician_id=doc_id,
                scheduled_start=now,
                actor="bench",
            )
            sessions.append((created["session_id"], token))
        return Seeded(doc_token, sessions)
    finally:
        await engine.dispose()


def _spawn(argv: list[str], env: dict[str, str], stderr: Any) -> subprocess.Popen[bytes]:
    # Popen returns at once (it does not wait for the child): harmless on the event loop.
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)


async def start_server(var_dir: Path, port: int, stderr: Any) -> subprocess.Popen[bytes]:
    """``python -m server run`` in its own process, returned once /healthz answers."""
    import aiohttp

    env = {k: v for k, v in _child_env().items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_DATABASE_URL=f"sqlite+aiosqlite:///{var_dir / 'vigil.sqlite3'}",
        VIGIL_VAR_DIR=str(var_dir),
        VIGIL_PORT=str(port),
        VIGIL_SECRET_KEY=BENCH_SECRET,
        VIGIL_LOG_LEVEL="WARNING",
    )
    proc = _spawn([sys.executable, "-m", "server", "run"], env, stderr)
    async with asyncio.timeout(START_TIMEOUT_SECS), aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the server exited during start-up (see its log)")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return proc
            await asyncio.sleep(0.1)


@dataclass
class Point:
    """One measurement: some publishers and viewers, the CPU they cost, the frames delivered."""

    mode: str  # forward or reencode
    sessions: int
    viewers: int  # viewer video streams the server sends
    seconds: float
    server_cpu_pct: float
    server_cpu_per_stream_pct: float
    # Scaled to the full frame rate when fewer frames were delivered: a server that only
    # managed 15 fps spent half the CPU a full-rate stream would need.
    server_cpu_per_stream_at_full_fps_pct: float
    clients_cpu_pct: float
    busiest_client_pct: float
    machine_cpu_pct: float
    fps_mean: float
    fps_min: float
    publisher_fps: float
    publisher_kbps: float
    publisher_codec: str
    viewer_codecs: list[str]
    limited_by: str = ""
    notes: list[str] = field(default_factory=list)


class Bench:
    """The server, the workers, and the sessions still unused."""

    def __init__(
        self,
        args: argparse.Namespace,
        server_pid: int,
        url: str,
        seeded: Seeded,
        workers: list[WorkerProcess],
    ) -> None:
        self.args = args
        self.server_pid = server_pid
        self.url = url
        self.seeded = seeded
        self.workers = workers
        self._free = list(seeded.sessions)
        self._keys = 0

    def take_session(self) -> tuple[str, str]:
        """A session nobody has published to yet (no state left over from earlier points)."""
        return self._free.pop(0)

    def _key(self, prefix: str) -> str:
        self._keys += 1
        return f"{prefix}{self._keys}"

    async def add_session(self, viewers: int, mode: Mode, first_worker: int) -> list[str]:
        """Publish a new session and attach *viewers* viewers; returns the viewers' keys.

        The publisher goes to worker *first_worker*, viewers to the following ones in turn, so
        the clients' work is spread over the worker processes.
        """
        session_id, pub_token = self.take_session()
        n = len(self.workers)
        pub = self.workers[first_worker % n]
        await pub.request(
            "publish",
            key=self._key("p"),
            url=self.url,
            token=pub_token,
            session_id=session_id,
            codec=mode.publisher_codec,
        )
        keys = [self._key("v") for _ in range(viewers)]
        await asyncio.gather(
            *(
                self.workers[(first_worker + 1 + i) % n].request(
                    "view",
                    key=k,
                    url=self.url,
                    token=self.seeded.viewer_token,
                    session_id=session_id,
                    codec=mode.viewer_codec,
                )
                for i, k in enumerate(keys)
            )
        )
        return keys

    async def stats(self) -> list[dict[str, Any]]:
        """Every worker's cumulative counts."""
        return list(await asyncio.gather(*(w.request("stats") for w in self.workers)))

    async def wait_first_frames(self) -> None:
        """Until every viewer has decoded a frame (it starts on a key frame)."""
        deadline = time.monotonic() + FIRST_FRAME_TIMEOUT_SECS
        while time.monotonic() < deadline:
            stats = await self.stats()
            viewers = [v for s in stats for v in s["viewers"].values()]
            if viewers and all(v["video_frames"] > 0 for v in viewers):
                return
            await asyncio.sleep(0.25)
        log.warning("some viewers decoded no frame in %s s", FIRST_FRAME_TIMEOUT_SECS)

    async def measure(self, mode: str, sessions: int, seconds: float, warmup: float) -> Point:
        """Warm up, then measure CPU and frames over *seconds* with what is running now."""
        await self.wait_first_frames()
        await asyncio.sleep(warmup)
        pids = [w.pid for w in self.workers]
        before_stats = await self.stats()
        before = CpuSnapshot.take(self.server_pid, pids)
        await asyncio.sleep(seconds)
        after = CpuSnapshot.take(self.server_pid, pids)
        after_stats = await self.stats()
        cpu = CpuUsage.between(before, after)

        fps: list[float] = []
        codecs: set[str] = set()
        pub_codecs: set[str] = set()
        pub_frames = pub_bytes = 0.0
        for a, b in zip(before_stats, after_stats, strict=True):
            span = b["time"] - a["time"]
            for key, vb in b["viewers"].items():
                va = a["viewers"].get(key, {"video_frames": 0})
                fps.append((vb["video_frames"] - va["video_frames"]) / span)
                codecs.add(vb["codec"])
            for key, pb in b["publishers"].items():
                pub_codecs.add(pb["codec"])
                pa = a["publishers"].get(key, {"frames_sent": 0, "video_bytes": 0})
                pub_frames += (pb["frames_sent"] - pa["frames_sent"]) / span
                pub_bytes += (pb["video_bytes"] - pa["video_bytes"]) / span
        n_pubs = max(1, sum(len(s["publishers"]) for s in after_stats))
        fps_mean = sum(fps) / len(fps) if fps else 0.0
        per_stream = cpu.server_pct / max(1, len(fps))
        point = Point(
            mode=mode,
            sessions=sessions,
            viewers=len(fps),
            seconds=round(after.wall - before.wall, 2),
            server_cpu_pct=round(cpu.server_pct, 2),
            server_cpu_per_stream_pct=round(per_stream, 2),
            server_cpu_per_stream_at_full_fps_pct=round(
                per_stream * max(1.0, FPS / max(fps_mean, 1.0)), 2
            ),
            clients_cpu_pct=round(cpu.clients_pct, 1),
            busiest_client_pct=round(cpu.busiest_client_pct, 1),
            machine_cpu_pct=round(cpu.machine_pct, 1),
            fps_mean=round(fps_mean, 2),
            fps_min=round(min(fps), 2) if fps else 0.0,
            publisher_fps=round(pub_frames / n_pubs, 2),
            publisher_kbps=round(pub_bytes * 8 / 1000 / n_pubs, 1),
            publisher_codec=",".join(sorted(pub_codecs)),
            viewer_codecs=sorted(codecs),
        )
        point.limited_by = self.limit(point)
        return point

    def limit(self, p: Point) -> str:
        """What held the frame rate back at *p*, if anything did."""
        cores = os.cpu_count() or 1
        if p.publisher_fps < self.args.min_fps:
            # The source itself is late: everything downstream is too.
            cause = "publisher(s) below the target rate"
        elif p.fps_mean >= self.args.min_fps:
            return "nothing (frame rate held)"
        elif p.server_cpu_pct >= SATURATED_PROCESS_PCT:
            return "server event loop (one core)"
        elif p.busiest_client_pct >= SATURATED_PROCESS_PCT:
            return "client worker process (one core)"
        elif p.machine_cpu_pct >= SATURATED_MACHINE_SHARE * 100:
            return f"machine CPU ({cores} cores incl. other users' load)"
        else:
            return "unknown (no process or core saturated)"
        if p.machine_cpu_pct >= SATURATED_MACHINE_SHARE * 100:
            cause += f"; machine CPU saturated ({cores} cores incl. other users' load)"
        elif p.busiest_client_pct >= SATURATED_PROCESS_PCT:
            cause += "; client worker process saturated"
        return cause

    async def close_clients(self) -> None:
        """Every publisher and viewer leaves; the server gets a moment to tear down."""
        await asyncio.gather(*(w.request("close") for w in self.workers))
        await asyncio.sleep(1.0)


def _py_spy() -> str | None:
    """The py-spy executable: on PATH or beside this Python (in its virtualenv)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


async def profile_server(pid: int, seconds: float, out: Path) -> str:
    """Record a flame graph of *pid* with py-spy for *seconds*; returns what happened."""
    exe = _py_spy()
    if exe is None:
        return "py-spy not installed (pip install py-spy): no profile"
    proc = await asyncio.create_subprocess_exec(
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "100",
        "--nonblocking",
        "--output",
        str(out),
        "--format",
        "flamegraph",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        return f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"
    return f"profile written to {out}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the results written to JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    var_dir = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    logs = (RESULTS / "relay_cpu_logs.txt").open("wb")
    n_sessions = (
        len(args.modes) * len(args.viewers) + args.max_sessions + (1 if args.profile else 0)
    )
    seeded = await seed(f"sqlite+aiosqlite:///{var_dir / 'vigil.sqlite3'}", n_sessions)
    port = free_port()
    server = await start_server(var_dir, port, logs)
    workers: list[WorkerProcess] = []
    started = time.monotonic()
    results: dict[str, Any] = {}
    try:
        workers = list(
            await asyncio.gather(
                *(WorkerProcess.start(args.bitrate, logs) for _ in range(args.client_procs))
            )
        )
        bench = Bench(args, server.pid, f"http://127.0.0.1:{port}", seeded, workers)

        idle = await idle_cpu(server.pid, [w.pid for w in workers])
        print(
            f"server idle: {idle.server_pct:.1f}% of a core; machine busy "
            f"{idle.machine_pct:.0f}% before the run",
            flush=True,
        )

        per_viewer: list[Point] = []
        for n in args.viewers:
            # Both modes at each count, back to back: other load on the machine then weighs
            # on both alike.
            for mode in args.modes:
                await bench.add_session(n, MODES[mode], first_worker=0)
                point = await bench.measure(mode, 1, args.seconds, args.warmup)
                await bench.close_clients()
                per_viewer.append(point)
                print(_row(point), flush=True)

        profile_note = None
        if args.profile:
            n = max(args.viewers)
            await bench.add_session(n, MODES["forward"], first_worker=0)
            await bench.wait_first_frames()
            await asyncio.sleep(args.warmup)
            profile_note = await profile_server(
                server.pid, args.seconds, RESULTS / "relay_cpu_profile.svg"
            )
            await bench.close_clients()
            print(profile_note, flush=True)

        sessions: list[Point] = []
        for s in range(1, args.max_sessions + 1):
            await bench.add_session(2, MODES["forward"], first_worker=s - 1)
            point = await bench.measure("forward", s, args.session_seconds, args.session_warmup)
            sessions.append(point)
            print(_row(point), flush=True)
            if point.fps_mean < args.min_fps:
                break
        await bench.close_clients()

        results = summarize(args, idle, per_viewer, sessions, profile_note)
        results["runtime_secs"] = round(time.monotonic() - started, 1)
        return results
    finally:
        for w in workers:
            await w.stop()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        logs.close()
        shutil.rmtree(var_dir, ignore_errors=True)


async def idle_cpu(server_pid: int, client_pids: list[int], seconds: float = 2.0) -> CpuUsage:
    """The server's CPU with nobody connected, and how busy the machine already is."""
    a = CpuSnapshot.take(server_pid, client_pids)
    await asyncio.sleep(seconds)
    return CpuUsage.between(a, CpuSnapshot.take(server_pid, client_pids))


def summarize(
    args: argparse.Namespace,
    idle: CpuUsage,
    per_viewer: list[Point],
    sessions: list[Point],
    profile_note: str | None,
) -> dict[str, Any]:
    """Ratios, sessions per core and the goals, next to the raw points."""
    by = {(p.mode, p.viewers): p for p in per_viewer}
    lo, hi = min(args.viewers), max(args.viewers)
    # Per re-encoding mode and viewer count: its server CPU per stream over forwarding's,
    # measured and scaled to the full frame rate (they differ where re-encoding fell behind).
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for mode in args.modes:
        if mode == "forward":
            continue
        for n in args.viewers:
            f, r = by.get(("forward", n)), by.get((mode, n))
            if f and r and f.server_cpu_per_stream_pct > 0:
                ratios.setdefault(mode, {})[str(n)] = {
                    "measured": round(r.server_cpu_per_stream_pct / f.server_cpu_per_stream_pct, 2),
                    "at_full_fps": round(
                        r.server_cpu_per_stream_at_full_fps_pct
                        / f.server_cpu_per_stream_at_full_fps_pct,
                        2,
                    ),
                }
    marginal = {}
    for mode in args.modes:
        a, b = by.get((mode, lo)), by.get((mode, hi))
        if a and b and hi > lo:
            # The cost of one more viewer, without the publisher's share that every viewer
            # count pays once.
            marginal[mode] = round((b.server_cpu_pct - a.server_cpu_pct) / (hi - lo), 2)
    sustained = [p for p in sessions if p.fps_mean >= args.min_fps]
    best = sustained[-1] if sustained else None
    per_core = (
        round(best.sessions / (best.server_cpu_pct / 100), 1)
        if best and best.server_cpu_pct > 0
        else None
    )
    at_hi = {m: r[str(hi)]["at_full_fps"] for m, r in ratios.items() if str(hi) in r}
    stopped = sessions[-1] if sessions else None
    return {
        "config": {
            "viewers": args.viewers,
            "seconds_per_point": args.seconds,
            "warmup_secs": args.warmup,
            "session_seconds": args.session_seconds,
            "max_sessions": args.max_sessions,
            "min_fps": args.min_fps,
            "client_procs": args.client_procs,
            "modes": {m: asdict(MODES[m]) for m in args.modes},
            "publisher": f"{WIDTH}x{HEIGHT} {FPS} fps at {args.bitrate} bit/s + Opus",
            "cores": os.cpu_count(),
        },
        "server_idle_cpu_pct": round(idle.server_pct, 2),
        "machine_busy_before_pct": round(idle.machine_pct, 1),
        "per_viewer": [asdict(p) for p in per_viewer],
        "reencode_over_forward_per_stream": ratios,
        "marginal_server_cpu_per_viewer_pct": marginal,
        "sessions": [asdict(p) for p in sessions],
        "sessions_sustained": best.sessions if best else 0,
        "sessions_sweep_stopped_by": (
            "max sessions reached"
            if stopped and stopped.fps_mean >= args.min_fps
            else (stopped.limited_by if stopped else "no sessions measured")
        ),
        "server_cpu_at_sustained_pct": best.server_cpu_pct if best else None,
        "sessions_per_core": per_core,
        "goals": {
            "reencode_over_forward_at_max_viewers_at_full_fps": at_hi,
            "four_times_less_cpu_per_stream": {m: r >= 4 for m, r in at_hi.items()},
            "ten_sessions_per_core_at_min_fps": per_core is not None and per_core >= 10,
            "ten_sessions_measured": bool(best and best.sessions >= 10),
        },
        "profile": profile_note,
    }


def _row(p: Point) -> str:
    return (
        f"{p.mode:<12} {p.sessions:>3} {p.viewers:>4} {p.server_cpu_pct:>8.1f} "
        f"{p.server_cpu_per_stream_pct:>9.2f} {p.server_cpu_per_stream_at_full_fps_pct:>8.2f} "
        f"{p.fps_mean:>6.1f} {p.fps_min:>6.1f} {p.publisher_kbps:>6.0f} "
        f"{p.clients_cpu_pct:>8.1f} {p.machine_cpu_pct:>6.0f}  "
        f"{p.publisher_codec + '>' + ','.join(p.viewer_codecs):<10} {p.limited_by}"
    )


HEADER = (
    f"{'mode':<12} {'ses':>3} {'view':>4} {'srv cpu%':>8} {'cpu%/strm':>9} {'@30fps':>8} "
    f"{'fps':>6} {'minfps':>6} {'kbps':>6} {'clients%':>8} {'mach%':>6}  {'codecs':<10} "
    "limited by"
)


def print_report(results: dict[str, Any]) -> None:
    """The table and the conclusions."""
    print()
    print("Server CPU is in % of one core; cpu%/strm = srv cpu% / viewer video streams, and")
    print("@30fps the same scaled to the full frame rate where fewer frames were delivered;")
    print("fps = frames decoded per viewer per second; clients% = all worker processes;")
    print("mach% = the whole machine (all cores, every user); kbps = publisher video bitrate;")
    print("codecs = publisher's > viewers' video codec.")
    print(HEADER)
    for p in results["per_viewer"]:
        print(_row(Point(**p)))
    print("-- sessions (1 publisher + 2 forwarding viewers each)")
    for p in results["sessions"]:
        print(_row(Point(**p)))
    print()
    print(f"server idle: {results['server_idle_cpu_pct']}% of a core")
    for mode, by_n in results["reencode_over_forward_per_stream"].items():
        cells = ", ".join(
            f"{n} viewers {r['measured']}× ({r['at_full_fps']}× at full fps)"
            for n, r in by_n.items()
        )
        print(f"{mode} / forward, server CPU per viewer stream: {cells}")
    print(
        f"marginal server CPU per added viewer (% of a core): "
        f"{results['marginal_server_cpu_per_viewer_pct']}"
    )
    print(
        f"sessions sustained at ≥{results['config']['min_fps']} fps: "
        f"{results['sessions_sustained']} (sweep stopped by: "
        f"{results['sessions_sweep_stopped_by']}); server CPU then "
        f"{results['server_cpu_at_sustained_pct']}% → sessions per core "
        f"{results['sessions_per_core']}"
    )
    print(f"goals: {results['goals']}")
    print(f"runtime: {results.get('runtime_secs')} s")


def plot(results: dict[str, Any], out: Path) -> str:
    """Write the PNG; returns what happened (matplotlib is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install -e '.[dev]'): no plot"
    fig, (ax_cpu, ax_fps, ax_ses) = plt.subplots(1, 3, figsize=(15, 4.5))
    colours = {"forward": "tab:green", "reencode": "tab:red", "reencode-vp8": "tab:purple"}
    for mode, spec in results["config"]["modes"].items():
        colour, label = colours.get(mode, "tab:grey"), spec["label"]
        pts = [p for p in results["per_viewer"] if p["mode"] == mode]
        xs = [p["viewers"] for p in pts]
        ax_cpu.plot(
            xs,
            [p["server_cpu_per_stream_pct"] for p in pts],
            "o-",
            color=colour,
            label=f"{label}: per viewer stream",
        )
        ax_cpu.plot(
            xs,
            [p["server_cpu_pct"] for p in pts],
            "s--",
            color=colour,
            alpha=0.5,
            label=f"{label}: total",
        )
        ax_fps.plot(xs, [p["fps_mean"] for p in pts], "o-", color=colour, label=f"{label} mean")
        ax_fps.plot(xs, [p["fps_min"] for p in pts], "v:", color=colour, label=f"{label} min")
    min_fps = results["config"]["min_fps"]
    ax_cpu.set(xlabel="viewers", ylabel="server CPU, % of one core", title="Server CPU")
    ax_fps.axhline(min_fps, color="grey", lw=0.8)
    ax_fps.set(
        xlabel="viewers", ylabel="frames/s decoded per viewer", title="Delivered fps", ylim=(0, 32)
    )
    ses = results["sessions"]
    xs = [p["sessions"] for p in ses]
    ax_ses.plot(
        xs, [p["server_cpu_pct"] for p in ses], "o-", color="tab:blue", label="server CPU %"
    )
    ax_ses.plot(
        xs, [p["clients_cpu_pct"] for p in ses], "s--", color="tab:orange", label="clients CPU %"
    )
    ax_ses.set(
        xlabel="sessions (1 publisher + 2 viewers)",
        ylabel="% of one core",
        title="Sessions (forwarding)",
    )
    twin = ax_ses.twinx()
    twin.plot(xs, [p["fps_mean"] for p in ses], "^-", color="tab:green", label="mean fps")
    twin.axhline(min_fps, color="grey", lw=0.8)
    twin.set(ylabel="frames/s", ylim=(0, 32))
    ax_cpu.set_ylim(bottom=0)
    ax_ses.set_ylim(bottom=0)
    for ax in (ax_cpu, ax_fps):
        ax.set_xticks(results["config"]["viewers"])
    if xs:
        ax_ses.set_xticks(xs)
    for ax in (ax_cpu, ax_fps, ax_ses):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Vigil relay CPU; publisher {results['config']['publisher']}; "
        f"{results['config']['cores']} cores"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"plot written to {out}"


def _counts(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or "forward" not in modes:
        raise argparse.ArgumentTypeError(f"modes among {','.join(MODES)}, forward included")
    return [m for m in MODES if m in modes]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="relay_cpu.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--viewers",
        type=_counts,
        default=[1, 2, 4, 8],
        help="viewer counts per mode (default 1,2,4,8)",
    )
    parser.add_argument(
        "--modes",
        type=_modes,
        default=list(MODES),
        help="modes compared at each viewer count (default all: " + ",".join(MODES) + ")",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="measurement window per viewer-count point (default 6)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds after every viewer's first frame before measuring (default 5)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=12,
        help="stop the sessions sweep here (default 12; 0 skips it)",
    )
    parser.add_argument(
        "--session-seconds",
        type=float,
        default=6.0,
        help="measurement window per sessions step (default 6)",
    )
    parser.add_argument(
        "--session-warmup", type=float, default=3.0, help="warm-up per sessions step (default 3)"
    )
    parser.add_argument(
        "--min-fps",
        type=float,
        default=29.0,
        help="the delivered frame rate a session must keep (default 29)",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="worker processes for publishers and viewers (default 2)",
    )
    parser.add_argument(
        "--bitrate",
        type=int,
        default=1_000_000,
        help="publisher VP8 bitrate in bit/s (default 1000000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 and 2 viewers, 4 s points, up to 2 sessions (~75 s)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record the server with py-spy at the largest forwarding "
        "point: bench/results/relay_cpu_profile.svg",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.worker:
        asyncio.run(worker_main(args.bitrate))
        return 0
    if args.quick:
        args.viewers, args.seconds, args.warmup = [1, 2], 4.0, 2.0
        args.max_sessions, args.session_seconds, args.session_warmup = 2, 4.0, 2.0
    print(HEADER, flush=True)
    results = asyncio.run(run(args))
    print_report(results)
    (RESULTS / "relay_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    print(plot(results, RESULTS / "relay_cpu.png"))
    print(f"results written to {RESULTS / 'relay_cpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
