"""The media relay: a patient publishes once, any number of viewers receive.

One :class:`Publication` per session owns two :class:`Feed` s (audio, video). Whatever peer
connection the patient currently publishes on, its received tracks are *consumed* by a task
that pushes every frame into the feed (a received track that nobody reads would fill aiortc's
unbounded receive queue). Each viewer gets a stable :class:`RelayTrack` per kind that
subscribes to the feed: when the patient reconnects with a new peer connection, only the feed's
source changes and viewers simply see the video continue, without renegotiating.

Forwarding, not re-encoding. The publisher-side receiver does not decode
(:mod:`signaling.passthrough`): the consumer gets each encoded frame the jitter buffer
completed, and the feed hands the same :class:`av.Packet` to every viewer whose track is in
``"forward"`` mode; aiortc's sender then only packetizes it. A viewer's offer decides its mode
(:meth:`Relay.serve_viewer`): one that can receive the forwarded codec (VP8, Opus) gets an
answer restricted to it; one that cannot gets ``"reencode"``: for such tracks, and only while
one exists, the feed decodes on a worker thread and the viewer's sender encodes as before.

Key frames. A viewer can only start decoding forwarded video at a key frame, so a forward
track drops everything before its first key frame and asks for one (through the publication's
:class:`KeyframeLimiter`) whenever its sender is waiting for one: when it starts, after it
overflowed, after the publisher's source changed. A viewer's own PLI/FIR (received by its
sender) is passed on too. The limiter sends at most one request to the publisher per
``KEYFRAME_INTERVAL_SECS``: later requests in the interval are answered by one request at its
end (or by any key frame arriving meanwhile), so ten viewers cause one key frame, not ten.

Timestamps are rewritten once per frame by the feed, so they keep increasing across a
publisher's reconnection: a new source is placed after the last forwarded frame (and not before
the wall clock), then keeps its own spacing. aiortc's sender computes RTP timestamps from the
packet's ``pts`` and ``time_base``.

Health without pixels: frames per second and "seconds since video" come from encoded frame
arrivals, width and height from each VP8 key frame's header (:func:`vp8_keyframe_size`),
bitrate and loss from the transport's statistics. Nothing is decoded for health. Roster
thumbnails decode the newest key frame, on demand and at most once per 2 s, with a fresh
decoder (:mod:`signaling.thumbnail`).

Invariant 7: nothing here queues without bound. A forward video track holds at most
``FORWARD_VIDEO_SLOT_FRAMES`` frames; when a slow viewer overflows it, every queued frame goes
(each P-frame depends on the one before it, so dropping only the oldest would break the decode
chain) and the track waits for the next key frame. Audio tracks drop their oldest frame beyond
``AUDIO_SLOT_FRAMES``, re-encoding video tracks beyond ``VIDEO_SLOT_FRAMES``; the decoder for
re-encoding viewers drops (and waits for a key frame) beyond ``DECODE_QUEUE_FRAMES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from signaling.health import MediaHealth, MediaHealthMeter
from signaling.passthrough import (
    FORWARD_MIME,
    EncodedFrame,
    aiortc_internals_problems,
    forward_first,
    forward_only,
    install_passthrough,
    offered_mimes,
    on_keyframe_request,
    request_keyframe,
    vp8_keyframe_size,
)
from signaling.thumbnail import Thumbnailer

log = logging.getLogger(__name__)

CLOCK_RATES = {"video": 90_000, "audio": 48_000}
# A re-encoding viewer never holds more than this many undelivered frames: the newest wins.
VIDEO_SLOT_FRAMES = 1
# A forwarding viewer absorbs this much send jitter (~0.3-0.7 s) before it must resynchronise
# on a key frame, which costs a freeze of up to KEYFRAME_INTERVAL_SECS.
FORWARD_VIDEO_SLOT_FRAMES = 10
# Audio tolerates a little jitter (5 × 20 ms) before the oldest frames are dropped.
AUDIO_SLOT_FRAMES = 5
# Frames waiting for the decoder that serves re-encoding viewers.
DECODE_QUEUE_FRAMES = 10
# At most one key-frame request to a publisher per interval, whatever the number of viewers.
KEYFRAME_INTERVAL_SECS = 1.0
# A track waiting for a key frame asks again this often (a PLI can be lost like any packet).
KEYFRAME_RETRY_SECS = 1.0
STATS_INTERVAL_SECS = 1.0
# A thumbnail older than this asks the publisher for a new key frame (the picture it decodes).
THUMBNAIL_FRESH_SECS = 4.0

MODES = ("forward", "reencode")


@functools.cache
def _internals_problems() -> tuple[str, ...]:
    return tuple(aiortc_internals_problems())


class KeyframeLimiter:
    """Passes key-frame requests on to the publisher, at most one per *interval*.

    No request is lost: one made during the interval is sent when the interval ends, together
    with every other made meanwhile, unless a key frame arrives first (:meth:`satisfied`).
    """

    def __init__(self, send: Callable[[], None], interval: float = KEYFRAME_INTERVAL_SECS) -> None:
        self._send = send
        self.interval = interval
        self._last: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.requested = 0
        self.sent = 0

    def request(self) -> None:
        """Someone needs a key frame."""
        self.requested += 1
        if self._timer is not None:
            return  # the request already due answers this one too
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval:
            self._fire()
        else:
            self._timer = asyncio.get_running_loop().call_later(
                self._last + self.interval - now, self._fire
            )

    def satisfied(self) -> None:
        """A key frame arrived: it answers every request still due."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._last = time.monotonic()
        self.sent += 1
        self._send()

    def close(self) -> None:
        """Cancel a request still due."""
        self.satisfied()


class RelayTrack(MediaStreamTrack):
    """A viewer's stable track of one kind; its frames come from whatever the patient sends.

    ``mode`` is ``"forward"`` (the viewer's sender gets encoded packets to packetize) or
    ``"reencode"`` (it gets decoded frames to encode). A forward track also takes decoded
    frames when the publisher's codec is not the forwarded one: its sender encodes them.
    The packet and frame objects are shared by all viewers (senders read them, never write
    them), so a track must not touch them.
    """

    def __init__(self, feed: Feed, mode: str = "reencode") -> None:
        super().__init__()
        self.kind = feed.kind
        self._feed = feed
        self.mode = mode
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._packets = False  # whether _items holds encoded packets (else decoded frames)
        self._waiting_key = feed.kind == "video"
        self.dropped = 0
        self.keyframe_requests = 0

    def set_mode(self, mode: str) -> None:
        """Choose how this viewer is served (before its sender starts reading)."""
        if mode not in MODES:
            raise ValueError(f"unknown relay mode {mode!r}")
        self.mode = mode
        self._items.clear()
        self._waiting_key = self.kind == "video"

    def forwards(self, codec_name: str) -> bool:
        """Whether frames of *codec_name* go to this viewer encoded."""
        return self.mode == "forward" and codec_name.lower() == self._feed.forward_codec

    @property
    def waiting_for_keyframe(self) -> bool:
        """Whether forwarded video is held back until the next key frame."""
        return self._waiting_key

    def restart(self) -> None:
        """The source changed: forwarded video resumes at the new source's first key frame."""
        if self.kind == "video" and self._packets:
            self._waiting_key = True

    def offer_packet(self, packet: av.Packet, keyframe: bool) -> None:
        """Hand the viewer an encoded frame, keeping its decode chain intact."""
        if not self._packets:
            # Switching from decoded frames: the viewer's decoder needs a key frame first.
            self._items.clear()
            self._packets = True
            self._waiting_key = self.kind == "video"
        if self.kind != "video":
            if len(self._items) >= AUDIO_SLOT_FRAMES:
                self._items.popleft()
                self.dropped += 1
        else:
            if self._waiting_key and not keyframe:
                return
            self._waiting_key = False
            if len(self._items) >= FORWARD_VIDEO_SLOT_FRAMES:
                # Every queued P-frame depends on the one before it: all of them go, and so
                # does everything until the next key frame (requested when recv() waits).
                self.dropped += len(self._items)
                self._items.clear()
                if not keyframe:
                    self.dropped += 1
                    self._waiting_key = True
                    return
        self._items.append(packet)
        self._ready.set()

    def offer_frame(self, frame: Any) -> None:
        """Hand the viewer a decoded frame; the oldest undelivered one is dropped when full."""
        if self._packets:
            self._items.clear()
            self._packets = False
        self._waiting_key = False
        limit = VIDEO_SLOT_FRAMES if self.kind == "video" else AUDIO_SLOT_FRAMES
        if len(self._items) >= limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(frame)
        self._ready.set()

    def keyframe_requested(self) -> None:
        """The viewer sent PLI/FIR: pass it on to the publisher (rate-limited)."""
        self.keyframe_requests += 1
        if self.mode == "forward":
            self._feed.request_keyframe()

    async def recv(self) -> Any:
        """The next packet or frame for this viewer's sender."""
        while not self._items:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            timeout = None
            if self._waiting_key and self.mode == "forward":
                # Asked here, not when the frames were dropped: a viewer that stopped reading
                # altogether must not make the patient send key frames forever.
                self._feed.request_keyframe()
                timeout = KEYFRAME_RETRY_SECS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        if self.readyState != "live":
            raise MediaStreamError
        return self._items.popleft()

    def stop(self) -> None:
        """Unsubscribe from the feed and wake a waiting ``recv`` so it ends."""
        self._feed.unsubscribe(self)
        self._items.clear()
        super().stop()
        self._ready.set()


class FrameDecoder:
    """Decodes a feed's frames on a worker thread, for the viewers that need pixels.

    Runs only while such a viewer exists. Its queue is bounded: when decoding falls behind,
    the queue is emptied and decoding resumes at the next key frame (requested).
    """

    def __init__(
        self,
        kind: str,
        deliver: Callable[[Any], None],
        request_keyframe: Callable[[], None],
        name: str,
    ) -> None:
        self.kind = kind
        self._deliver = deliver
        self._request_keyframe = request_keyframe
        self._time_base = fractions.Fraction(1, CLOCK_RATES[kind])
        self._pending: deque[tuple[EncodedFrame, int]] = deque()
        self._wake = asyncio.Event()
        self._waiting_key = kind == "video"
        self.dropped = 0
        self.decoded = 0
        self._task = asyncio.create_task(self._run(), name=name)

    def restart(self) -> None:
        """The source changed: decode from its first key frame."""
        if self.kind == "video":
            self._waiting_key = True

    def submit(self, frame: EncodedFrame, pts: int) -> None:
        """Queue *frame* (with the feed's *pts*) for decoding."""
        if self._waiting_key:
            if not frame.keyframe:
                self._request_keyframe()
                return
            self._waiting_key = False
        if len(self._pending) >= DECODE_QUEUE_FRAMES:
            self.dropped += len(self._pending)
            self._pending.clear()
            if self.kind == "video" and not frame.keyframe:
                self._waiting_key = True
                self._request_keyframe()
                return
        self._pending.append((frame, pts))
        self._wake.set()

    async def _run(self) -> None:
        decoder: Any = None
        codec_name = None
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            frame, pts = self._pending.popleft()
            if frame.codec.name != codec_name:
                decoder = get_decoder(frame.codec)
                codec_name = frame.codec.name
            try:
                # A thread, like aiortc's own decoder: decoding must not stall the event loop.
                decoded = await asyncio.to_thread(
                    decoder.decode, JitterFrame(frame.data, frame.timestamp)
                )
            except av.FFmpegError:
                log.debug("relay decoder failed", extra={"kind": self.kind})
                if self.kind == "video":
                    self._waiting_key = True
                    self._request_keyframe()
                continue
            for out in decoded:
                out.pts = pts
                out.time_base = self._time_base
                self.decoded += 1
                self._deliver(out)

    async def close(self) -> None:
        """Stop decoding."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Feed:
    """Fan-out of one kind of media to the viewers' tracks.

    Timestamps are rewritten here, once per frame, so they keep increasing across a
    publisher's reconnection (a new source restarts its own timestamps at zero).
    """

    def __init__(
        self,
        kind: str,
        request_keyframe: Callable[[], None] | None = None,
        keyframe_arrived: Callable[[], None] | None = None,
        name: str = "",
    ) -> None:
        self.kind = kind
        self.forward_codec = FORWARD_MIME[kind].split("/")[1].lower()
        self.clock_rate = CLOCK_RATES[kind]
        self.time_base = fractions.Fraction(1, self.clock_rate)
        self.name = name or kind
        self._request_keyframe = request_keyframe
        self._keyframe_arrived = keyframe_arrived
        self._tracks: set[RelayTrack] = set()
        self._started_at = time.monotonic()
        self._last_pts = -1
        self._source: object | None = None
        self._offset = 0
        self._decoder: FrameDecoder | None = None
        self.codec: str | None = None  # the source's codec name, once a frame arrived
        self.keyframes_received = 0

    def subscribe(self, mode: str = "reencode") -> RelayTrack:
        """A new viewer track fed from this feed."""
        track = RelayTrack(self, mode)
        self._tracks.add(track)
        return track

    def unsubscribe(self, track: RelayTrack) -> None:
        """Stop feeding *track* (idempotent)."""
        self._tracks.discard(track)

    def request_keyframe(self) -> None:
        """A viewer needs a key frame from the publisher (video only; rate-limited)."""
        if self._request_keyframe is not None:
            self._request_keyframe()

    def source_changed(self) -> None:
        """The publisher's track was replaced: video restarts at the new source's key frame."""
        for track in self._tracks:
            track.restart()
        if self._decoder is not None:
            self._decoder.restart()

    def _stamp(self, source: object, source_pts: int) -> int:
        if source is not self._source:
            # A new source: place it after the last frame sent and not before the wall clock,
            # then keep its own spacing.
            self._source = source
            now = int((time.monotonic() - self._started_at) * self.clock_rate)
            self._offset = max(now, self._last_pts + 1) - source_pts
        pts = source_pts + self._offset
        if pts <= self._last_pts:  # the source's timestamps went back: stay monotonic
            self._offset += self._last_pts + 1 - pts
            pts = self._last_pts + 1
        self._last_pts = pts
        return pts

    def push_encoded(self, frame: EncodedFrame, source: object) -> None:
        """Forward *frame* to forwarding viewers, decode it for the others (if any)."""
        self.codec = frame.codec.name.lower()
        rate = frame.codec.clockRate or self.clock_rate
        source_pts = frame.timestamp * self.clock_rate // rate
        pts = self._stamp(source, source_pts)
        if frame.keyframe and self.kind == "video":
            self.keyframes_received += 1
            if self._keyframe_arrived is not None:
                self._keyframe_arrived()
        packet: av.Packet | None = None
        needs_pixels = False
        for track in self._tracks:
            if track.forwards(self.codec):
                if packet is None:
                    packet = av.Packet(frame.data)
                    packet.pts = pts
                    packet.time_base = self.time_base
                track.offer_packet(packet, frame.keyframe)
            else:
                needs_pixels = True
        if needs_pixels:
            if self._decoder is None:
                self._decoder = FrameDecoder(
                    self.kind,
                    self._deliver_decoded,
                    self.request_keyframe,
                    name=f"relay.decode.{self.name}",
                )
            self._decoder.submit(frame, pts)
        elif self._decoder is not None:
            self._close_decoder()

    def _deliver_decoded(self, frame: Any) -> None:
        codec = self.codec or ""
        for track in self._tracks:
            if not track.forwards(codec):
                track.offer_frame(frame)

    def push_frame(self, frame: Any, source: object) -> None:
        """Give an already decoded *frame* to every viewer (a receiver that was not switched
        to forwarding: their senders encode it)."""
        if frame.pts is not None and frame.time_base is not None:
            source_pts = int(frame.pts * frame.time_base * self.clock_rate)
        else:
            source_pts = int(time.monotonic() * self.clock_rate)
        frame.pts = self._stamp(source, source_pts)
        frame.time_base = self.time_base
        for track in self._tracks:
            track.offer_frame(frame)

    def _close_decoder(self) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            task = asyncio.ensure_future(decoder.close())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def close(self) -> None:
        """Stop decoding (if anything was)."""
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            await decoder.close()

    @property
    def viewers(self) -> int:
        """How many viewer tracks are subscribed."""
        return len(self._tracks)

    @property
    def forwarding(self) -> int:
        """How many viewer tracks are in forward mode."""
        return sum(1 for t in self._tracks if t.mode == "forward")

    @property
    def decoding(self) -> bool:
        """Whether this feed currently decodes (for re-encoding viewers)."""
        return self._decoder is not None


# Tasks that close decoders in the background: kept referenced until they finish.
_background: set[asyncio.Future[None]] = set()


class Publication:
    """One session's media: its current source tracks, feeds, and health."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.keyframes = KeyframeLimiter(self._send_keyframe_request)
        self.feeds = {
            "audio": Feed("audio", name=f"{session_id}.audio"),
            "video": Feed(
                "video",
                self.keyframes.request,
                self.keyframes.satisfied,
                name=f"{session_id}.video",
            ),
        }
        self.meter = MediaHealthMeter()
        self.thumbnails = Thumbnailer()
        self.pc: RTCPeerConnection | None = None
        self._video_receiver: RTCRtpReceiver | None = None
        self._size = (0, 0)
        self._consumers: dict[str, asyncio.Task[None]] = {}
        self._stats_task: asyncio.Task[None] | None = None

    def _send_keyframe_request(self) -> None:
        if self._video_receiver is not None:
            request_keyframe(self._video_receiver)

    def attach_track(self, track: MediaStreamTrack, receiver: RTCRtpReceiver | None = None) -> None:
        """Make *track* the source of its kind, replacing (and cancelling) the previous one.

        With its *receiver*, the track is switched to delivering encoded frames; call this in
        the peer connection's ``track`` event, before the receiver starts.
        """
        if track.kind not in self.feeds:
            return
        if receiver is not None:
            try:
                install_passthrough(receiver)
            except RuntimeError as exc:
                # The receiver decodes as it always did; viewers get re-encoded media.
                log.warning(
                    "cannot forward, re-encoding",
                    extra={"session": self.session_id, "kind": track.kind, "error": str(exc)},
                )
            if track.kind == "video":
                self._video_receiver = receiver
        old = self._consumers.pop(track.kind, None)
        if old is not None:
            old.cancel()
        self.feeds[track.kind].source_changed()
        if track.kind == "video":
            # The new source's first key frame may be lost; ask for one (sent with its first
            # packet) rather than leave every viewer frozen until the next natural one.
            self.keyframes.request()
        self._consumers[track.kind] = asyncio.create_task(
            self._consume(track), name=f"relay.consume.{self.session_id}.{track.kind}"
        )

    async def _consume(self, track: MediaStreamTrack) -> None:
        feed = self.feeds[track.kind]
        is_video = track.kind == "video"
        try:
            while True:
                item = await track.recv()
                if isinstance(item, EncodedFrame):
                    if is_video:
                        if item.keyframe and item.codec.name.lower() == "vp8":
                            self._size = vp8_keyframe_size(item.data) or self._size
                            self.thumbnails.offer_keyframe(item.codec, item.data)
                        self.meter.video_frame(*self._size)
                    else:
                        self.meter.audio_frame()
                    feed.push_encoded(item, track)
                else:
                    if is_video:
                        self._size = (getattr(item, "width", 0), getattr(item, "height", 0))
                        self.meter.video_frame(*self._size)
                        self.thumbnails.offer(item)
                    else:
                        self.meter.audio_frame()
                    feed.push_frame(item, track)
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
        """Stable (audio, video) tracks for a new viewer (re-encoding until told otherwise)."""
        tracks = self.feeds["audio"].subscribe(), self.feeds["video"].subscribe()
        self.keyframes.request()
        return tracks

    @property
    def viewers(self) -> int:
        """Viewer count (video subscriptions)."""
        return self.feeds["video"].viewers

    async def close(self) -> None:
        """Stop consuming, decoding and sampling."""
        self.keyframes.close()
        tasks = [*self._consumers.values()]
        if self._stats_task is not None:
            tasks.append(self._stats_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for feed in self.feeds.values():
            await feed.close()
        self._consumers.clear()
        self._stats_task = None
        self._video_receiver = None


class Relay:
    """All publications of this process (media is pinned to one node: DESIGN invariant 6)."""

    def __init__(self) -> None:
        self._publications: dict[str, Publication] = {}
        self._drains: set[asyncio.Task[None]] = set()
        problems = _internals_problems()
        if problems:
            log.warning("relay forwarding may fail: %s", "; ".join(problems))

    def publication(self, session_id: str) -> Publication:
        """The session's publication, created on first use."""
        pub = self._publications.get(session_id)
        if pub is None:
            pub = self._publications[session_id] = Publication(session_id)
        return pub

    def attach(self, session_id: str, pc: RTCPeerConnection, offer_sdp: str | None = None) -> None:
        """Route every track *pc* receives into the session's feeds.

        Call before ``setRemoteDescription``. With the publisher's *offer_sdp*, the answer
        prefers the forwarded codecs (VP8, Opus) when the offer has them, whatever their order
        in the offer: a publisher sending anything else is decoded for every viewer.
        """
        pub = self.publication(session_id)
        pub.set_pc(pc)
        if offer_sdp is not None:
            for kind in offered_mimes(offer_sdp):
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(forward_first(kind))

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            receiver = next(
                (t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None
            )
            pub.attach_track(track, receiver)

    def subscribe(self, session_id: str) -> tuple[RelayTrack, RelayTrack]:
        """Stable (audio, video) tracks for a viewer of *session_id*.

        They re-encode until :meth:`serve_viewer` finds that the viewer can take forwarded
        media (re-encoding is what any negotiated codec can receive).
        """
        return self.publication(session_id).subscribe()

    def serve_viewer(
        self,
        session_id: str,
        pc: RTCPeerConnection,
        tracks: tuple[RelayTrack, RelayTrack],
        offer_sdp: str,
    ) -> dict[str, str]:
        """Add *tracks* to a viewer's *pc* for the kinds its *offer_sdp* has; choose each mode.

        Call before ``setRemoteDescription``: codec preferences only shape the answer when set
        before the offer is applied. A kind whose offer has the forwarded codec gets an answer
        with only that codec and forwarded packets; otherwise the viewer's sender re-encodes.
        Returns ``{kind: mode}``.
        """
        offered = offered_mimes(offer_sdp)
        modes: dict[str, str] = {}
        for track in tracks:
            mimes = offered.get(track.kind)
            if mimes is None:
                continue
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            if FORWARD_MIME[track.kind].lower() in mimes:
                transceiver.setCodecPreferences(forward_only(track.kind))
                track.set_mode("forward")
                on_keyframe_request(transceiver.sender, track.keyframe_requested)
            else:
                track.set_mode("reencode")
                log.info(
                    "viewer cannot receive the forwarded codec: re-encoding",
                    extra={"session": session_id, "kind": track.kind},
                )
            modes[track.kind] = track.mode
        return modes

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
        if pub is None:
            return None
        taken = pub.thumbnails.taken_at
        if taken is not None and time.monotonic() - taken > THUMBNAIL_FRESH_SECS:
            # Publishers (Chromium's included) send key frames mostly when asked: ask, so the
            # roster's next refresh shows a current picture (one request per second at most).
            pub.keyframes.request()
        return pub.thumbnails.jpeg()

    def sessions(self) -> list[str]:
        """Sessions with a publication on this node."""
        return list(self._publications)

    @property
    def relayed_tracks(self) -> int:
        """Viewer tracks currently fed (audio and video)."""
        return sum(f.viewers for p in self._publications.values() for f in p.feeds.values())

    @property
    def forwarded_tracks(self) -> int:
        """Viewer tracks currently fed in forward mode (the rest re-encode)."""
        return sum(f.forwarding for p in self._publications.values() for f in p.feeds.values())

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
