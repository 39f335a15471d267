"""The media relay: a patient publishes once, any number of viewers receive.

One :class:`Publication` per session owns two :class:`Feed` s (audio, video). Whatever peer
connection the patient currently publishes on, its received tracks are *consumed* by a task
that pushes every decoded frame into the feed (a received track that nobody reads would fill
aiortc's unbounded receive queue). Each viewer gets a stable :class:`RelayTrack` per kind that
subscribes to the feed: when the patient reconnects with a new peer connection, only the feed's
source changes and viewers simply see the new video continue, without renegotiating.

Invariant 7: nothing here queues without bound. A viewer's track holds at most
``VIDEO_SLOT_FRAMES`` / ``AUDIO_SLOT_FRAMES`` frames; a viewer that is slow (its encoder or
network lags) loses the oldest frames, and one that is gone costs nothing once unsubscribed.

This relay decodes once per publisher and re-encodes once per viewer (aiortc's sender encodes
raw frames). A later issue replaces that with forwarding of encoded frames; the interface
(:meth:`Relay.attach`, :meth:`Relay.subscribe`, :meth:`Relay.health`) stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from signaling.health import MediaHealth, MediaHealthMeter
from signaling.thumbnail import Thumbnailer

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
# A viewer never holds more than this many undelivered frames: the newest wins.
VIDEO_SLOT_FRAMES = 1
# Audio tolerates a little jitter (5 × 20 ms) before the oldest frames are dropped.
AUDIO_SLOT_FRAMES = 5
STATS_INTERVAL_SECS = 1.0


class RelayTrack(MediaStreamTrack):
    """A viewer's stable track of one kind; its frames come from whatever the patient sends.

    The frame objects are shared by all viewers (encoders read them, never write them), so a
    track must not touch them; their timestamps were set once by the :class:`Feed`.
    """

    def __init__(self, feed: Feed) -> None:
        super().__init__()
        self.kind = feed.kind
        self._feed = feed
        self._frames: deque[Any] = deque(
            maxlen=VIDEO_SLOT_FRAMES if feed.kind == "video" else AUDIO_SLOT_FRAMES
        )
        self._ready = asyncio.Event()
        self.dropped = 0

    def offer(self, frame: Any) -> None:
        """Hand the viewer a frame; the oldest undelivered one is dropped when full."""
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    async def recv(self) -> Any:
        """The next frame for this viewer's encoder."""
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        return self._frames.popleft()

    def stop(self) -> None:
        """Unsubscribe from the feed and wake a waiting ``recv`` so it ends."""
        self._feed.unsubscribe(self)
        self._frames.clear()
        super().stop()
        self._ready.set()


class Feed:
    """Fan-out of one kind of media to the viewers' tracks.

    Timestamps are rewritten here, once per frame, so they keep increasing across a
    publisher's reconnection (a new source restarts its own timestamps at zero); an RTP sender
    only needs them to increase, whatever they start at.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._tracks: set[RelayTrack] = set()
        self._started_at = time.monotonic()
        self._last_pts = -1
        self._audio_samples = 0

    def subscribe(self) -> RelayTrack:
        """A new viewer track fed from this feed."""
        track = RelayTrack(self)
        self._tracks.add(track)
        return track

    def unsubscribe(self, track: RelayTrack) -> None:
        """Stop feeding *track* (idempotent)."""
        self._tracks.discard(track)

    def _stamp(self, frame: Any) -> None:
        if isinstance(frame, VideoFrame):
            pts = int((time.monotonic() - self._started_at) * VIDEO_CLOCK_RATE)
            pts = max(pts, self._last_pts + 1)
            self._last_pts = pts
            frame.pts = pts
            frame.time_base = VIDEO_TIME_BASE
        elif isinstance(frame, AudioFrame):
            frame.pts = self._audio_samples
            frame.time_base = fractions.Fraction(1, frame.sample_rate)
            self._audio_samples += frame.samples

    def push(self, frame: Any) -> None:
        """Give *frame* to every viewer (the same decoded frame: encoders do not modify it)."""
        self._stamp(frame)
        for track in self._tracks:
            track.offer(frame)

    @property
    def viewers(self) -> int:
        """How many viewer tracks are subscribed."""
        return len(self._tracks)


class Publication:
    """One session's media: its current source tracks, feeds, and health."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.feeds = {"audio": Feed("audio"), "video": Feed("video")}
        self.meter = MediaHealthMeter()
        self.thumbnails = Thumbnailer()
        self.pc: RTCPeerConnection | None = None
        self._consumers: dict[str, asyncio.Task[None]] = {}
        self._stats_task: asyncio.Task[None] | None = None

    def attach_track(self, track: MediaStreamTrack) -> None:
        """Make *track* the source of its kind, replacing (and cancelling) the previous one."""
        if track.kind not in self.feeds:
            return
        old = self._consumers.pop(track.kind, None)
        if old is not None:
            old.cancel()
        self._consumers[track.kind] = asyncio.create_task(
            self._consume(track), name=f"relay.consume.{self.session_id}.{track.kind}"
        )

    async def _consume(self, track: MediaStreamTrack) -> None:
        feed = self.feeds[track.kind]
        is_video = track.kind == "video"
        try:
            while True:
                frame = await track.recv()
                if is_video:
                    self.meter.video_frame(getattr(frame, "width", 0), getattr(frame, "height", 0))
                    self.thumbnails.offer(frame)
                else:
                    self.meter.audio_frame()
                feed.push(frame)
        except MediaStreamError:
            pass  # the publisher's connection ended; a new one will attach new tracks

    def set_pc(self, pc: RTCPeerConnection) -> None:
        """Record the patient's current peer connection and sample its transport statistics."""
        self.pc = pc
        if self._stats_task is None:
            self._stats_task = asyncio.create_task(self._sample_stats(), name="relay.stats")

    async def _sample_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_SECS)
            pc = self.pc
            if pc is None or pc.connectionState == "closed":
                continue
            try:
                report = await pc.getStats()
            except Exception:  # a closing peer connection may fail mid-way
                continue
            received = 0
            lost = 0
            packets = 0
            for stats in report.values():
                if stats.type == "transport":
                    received += getattr(stats, "bytesReceived", 0)
                elif stats.type == "inbound-rtp":
                    lost += getattr(stats, "packetsLost", 0)
                    packets += getattr(stats, "packetsReceived", 0)
            self.meter.transport_sample(id(pc), received, packets, lost)

    def subscribe(self) -> tuple[RelayTrack, RelayTrack]:
        """Stable (audio, video) tracks for a new viewer."""
        return self.feeds["audio"].subscribe(), self.feeds["video"].subscribe()

    @property
    def viewers(self) -> int:
        """Viewer count (video subscriptions)."""
        return self.feeds["video"].viewers

    async def close(self) -> None:
        """Stop consuming and sampling."""
        tasks = [*self._consumers.values()]
        if self._stats_task is not None:
            tasks.append(self._stats_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._consumers.clear()
        self._stats_task = None


class Relay:
    """All publications of this process (media is pinned to one node: DESIGN invariant 6)."""

    def __init__(self) -> None:
        self._publications: dict[str, Publication] = {}
        self._drains: set[asyncio.Task[None]] = set()

    def publication(self, session_id: str) -> Publication:
        """The session's publication, created on first use."""
        pub = self._publications.get(session_id)
        if pub is None:
            pub = self._publications[session_id] = Publication(session_id)
        return pub

    def attach(self, session_id: str, pc: RTCPeerConnection) -> None:
        """Route every track *pc* receives into the session's feeds."""
        pub = self.publication(session_id)
        pub.set_pc(pc)

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            pub.attach_track(track)

    def subscribe(self, session_id: str) -> tuple[RelayTrack, RelayTrack]:
        """Stable (audio, video) tracks for a viewer of *session_id*."""
        return self.publication(session_id).subscribe()

    def discard(self, track: MediaStreamTrack) -> None:
        """Read and drop a track nobody relays (a viewer that also sends media).

        aiortc queues received frames without bound until someone reads them.
        """

        async def drain() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()

        task = asyncio.create_task(drain(), name="relay.discard")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    def health(self, session_id: str) -> MediaHealth | None:
        """The publisher's media health, or None if nothing was ever published here."""
        pub = self._publications.get(session_id)
        return pub.meter.snapshot() if pub is not None else None

    def thumbnail(self, session_id: str) -> bytes | None:
        """A small JPEG of the publisher's latest picture, or None if there is none."""
        pub = self._publications.get(session_id)
        return pub.thumbnails.jpeg() if pub is not None else None

    def sessions(self) -> list[str]:
        """Sessions with a publication on this node."""
        return list(self._publications)

    @property
    def relayed_tracks(self) -> int:
        """Viewer tracks currently fed (audio and video)."""
        return sum(f.viewers for p in self._publications.values() for f in p.feeds.values())

    async def drop(self, session_id: str) -> None:
        """Forget a session's publication (it ended)."""
        pub = self._publications.pop(session_id, None)
        if pub is not None:
            await pub.close()

    async def close(self) -> None:
        """Stop everything (application shutdown)."""
        for session_id in list(self._publications):
            await self.drop(session_id)
        for task in list(self._drains):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
