"""Relay tests with real aiortc peers in one process: publisher → relay → viewers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from signaling.peer import make_peer_connection
from signaling.relay import (
    AUDIO_SLOT_FRAMES,
    FORWARD_VIDEO_SLOT_FRAMES,
    VIDEO_SLOT_FRAMES,
    KeyframeLimiter,
    Relay,
)
from signaling.synthetic import PatternVideoTrack, ToneAudioTrack
from tests.helpers import until

RED = (200, 20, 20)
BLUE = (20, 20, 200)


def _caps(kind: str, mime: str) -> list[Any]:
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() == mime]


class Publisher:
    """A patient: one peer connection to the relay's server-side peer connection."""

    def __init__(
        self,
        relay: Relay,
        session_id: str,
        background: tuple[int, int, int],
        video_codecs: list[Any] | None = None,
    ) -> None:
        self.relay = relay
        self.session_id = session_id
        self.client = make_peer_connection()
        self.server = make_peer_connection()
        self.video = PatternVideoTrack("patient", background=background, fps=20)
        self.client.addTrack(ToneAudioTrack())
        video = self.client.addTransceiver(self.video, direction="sendonly")
        if video_codecs is not None:
            video.setCodecPreferences(video_codecs)

    async def connect(self) -> str:
        """Negotiate as the namespace does; returns the server's answer SDP."""
        await self.client.setLocalDescription(await self.client.createOffer())
        self.relay.attach(self.session_id, self.server, offer_sdp=self.client.localDescription.sdp)
        await self.server.setRemoteDescription(self.client.localDescription)
        await self.server.setLocalDescription(await self.server.createAnswer())
        answer = self.server.localDescription
        await self.client.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))
        return answer.sdp

    async def close(self) -> None:
        await self.client.close()
        await self.server.close()


class Viewer:
    """A clinician: receives audio and video from the relay and decodes them."""

    def __init__(
        self, relay: Relay, session_id: str, video_codecs: list[Any] | None = None
    ) -> None:
        self.relay = relay
        self.session_id = session_id
        self.client = make_peer_connection()
        self.server = make_peer_connection()
        self.frames: list[np.ndarray] = []
        self.sizes: list[tuple[int, int]] = []
        self.pts: list[int] = []
        self.audio_frames = 0
        self.tracks = relay.subscribe(session_id)
        self.modes: dict[str, str] = {}
        self.video_codecs = video_codecs
        self._tasks: list[asyncio.Task[None]] = []

        @self.client.on("track")
        def on_track(track):  # type: ignore[no-untyped-def]
            self._tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    # Keep only a tiny sample of the picture: the background colour.
                    self.frames.append(frame.to_ndarray(format="rgb24")[-2, -2].astype(int))
                    self.sizes.append((frame.width, frame.height))
                    self.pts.append(frame.pts)
                else:
                    self.audio_frames += 1

    async def connect(self) -> None:
        """Negotiate as the namespace does (modes chosen before the offer is applied)."""
        self.client.addTransceiver("audio", direction="recvonly")
        video = self.client.addTransceiver("video", direction="recvonly")
        if self.video_codecs is not None:
            video.setCodecPreferences(self.video_codecs)
        await self.client.setLocalDescription(await self.client.createOffer())
        offer = self.client.localDescription.sdp
        self.modes = self.relay.serve_viewer(self.session_id, self.server, self.tracks, offer)
        await self.server.setRemoteDescription(self.client.localDescription)
        await self.server.setLocalDescription(await self.server.createAnswer())
        await self.client.setRemoteDescription(self.server.localDescription)

    async def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        await until(lambda: len(self.frames) >= count, timeout, f"{count} video frames")

    async def close(self) -> None:
        for track in self.tracks:
            track.stop()
        await self.client.close()
        await self.server.close()
        for task in self._tasks:
            task.cancel()


def _close_to(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(np.abs(pixel - np.array(colour)) < 40))


def _first_video_codec(sdp: str) -> str:
    media = next(m for m in SessionDescription.parse(sdp).media if m.kind == "video")
    return str(media.rtp.codecs[0].mimeType)


async def test_viewers_get_forwarded_frames_late_viewer_and_publisher_reconnect() -> None:
    relay = Relay()
    pub = Publisher(relay, "s1", RED)
    v1, v2 = Viewer(relay, "s1"), Viewer(relay, "s1")
    late: Viewer | None = None
    pub2: Publisher | None = None
    try:
        await pub.connect()
        await v1.connect()
        await v2.connect()
        assert v1.modes == {"audio": "forward", "video": "forward"}
        await v1.wait_frames(10)
        await v2.wait_frames(10)
        assert _close_to(v1.frames[-1], RED) and _close_to(v2.frames[-1], RED)
        assert v1.sizes[-1] == (320, 240)
        assert v1.audio_frames > 0 and v2.audio_frames > 0

        publication = relay.publication("s1")
        video_feed = publication.feeds["video"]
        # Forwarded as received: the server has not decoded a single frame.
        assert video_feed.codec == "vp8" and publication.feeds["audio"].codec == "opus"
        assert not video_feed.decoding and not publication.feeds["audio"].decoding
        assert relay.forwarded_tracks == 4

        # A viewer joining later decodes too: aiortc's publisher sends a key frame only when
        # asked (every 3000 frames otherwise), so this needs the forwarded key-frame request.
        late = Viewer(relay, "s1")
        await late.connect()
        await late.wait_frames(5)

        # Health from encoded frames: size from the VP8 key frame header, no decoding.
        health = relay.health("s1")
        assert health is not None and health.video_fps > 5 and health.seconds_since_video < 1
        assert (health.width, health.height) == (320, 240)

        # The patient's connection drops; a new peer connection publishes a blue picture.
        await pub.close()
        pub2 = Publisher(relay, "s1", BLUE)
        await pub2.connect()
        # The viewers keep their peer connections: no renegotiation, the video continues.
        await until(
            lambda: _close_to(v1.frames[-1], BLUE) and _close_to(v2.frames[-1], BLUE),
            20,
            "the new picture at both viewers",
        )
        assert v1.client.connectionState == "connected"
        assert relay.relayed_tracks == 6 and relay.forwarded_tracks == 6
        # RTP timestamps kept increasing across the swap (a step back would show as a jump
        # of about 2^32 in the viewer's mapped timestamps).
        steps = np.diff(np.array(v1.pts, dtype=np.int64))
        assert steps.min() > 0 and steps.max() < 30 * 90_000
    finally:
        for peer in (v1, v2, late, pub, pub2):
            if peer is not None:
                await peer.close()
        await relay.close()
    assert relay.relayed_tracks == 0


async def test_a_viewers_picture_loss_request_reaches_the_publisher() -> None:
    relay = Relay()
    pub = Publisher(relay, "s3", RED)
    viewer = Viewer(relay, "s3")
    try:
        await pub.connect()
        await viewer.connect()
        await viewer.wait_frames(5)
        feed = relay.publication("s3").feeds["video"]
        keyframes = feed.keyframes_received
        # The viewer reports picture loss (RTCP PLI) as a decoder would.
        receiver = next(t.receiver for t in viewer.client.getTransceivers() if t.kind == "video")
        sender = next(t.sender for t in viewer.server.getTransceivers() if t.kind == "video")
        await receiver._send_rtcp_pli(sender._ssrc)
        await until(lambda: viewer.tracks[1].keyframe_requests >= 1, 10, "the PLI at the relay")
        await until(lambda: feed.keyframes_received > keyframes, 10, "a new key frame")
    finally:
        await viewer.close()
        await pub.close()
        await relay.close()


async def test_a_viewer_without_the_publishers_codec_gets_reencoded_media(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = Relay()
    pub = Publisher(relay, "s4", RED)
    h264 = Viewer(relay, "s4", video_codecs=_caps("video", "video/h264"))
    vp8 = Viewer(relay, "s4")
    try:
        await pub.connect()
        with caplog.at_level(logging.INFO, logger="signaling.relay"):
            await h264.connect()
        assert h264.modes == {"audio": "forward", "video": "reencode"}
        assert any("re-encoding" in r.getMessage() for r in caplog.records)
        assert all(getattr(r, "session", None) == "s4" for r in caplog.records)
        assert "H264" in _first_video_codec(h264.server.localDescription.sdp)
        await vp8.connect()
        assert vp8.modes["video"] == "forward"
        await h264.wait_frames(5)
        await vp8.wait_frames(5)
        assert _close_to(h264.frames[-1], RED) and _close_to(vp8.frames[-1], RED)
        # Only the H.264 viewer costs a decoder; the VP8 viewer is still forwarded.
        assert relay.publication("s4").feeds["video"].decoding
        assert relay.forwarded_tracks == 3
        h264.tracks[1].stop()
        await vp8.wait_frames(len(vp8.frames) + 3)
        assert not relay.publication("s4").feeds["video"].decoding
    finally:
        await h264.close()
        await vp8.close()
        await pub.close()
        await relay.close()


async def test_publisher_answer_prefers_vp8_whatever_the_offer_order() -> None:
    relay = Relay()
    h264_first = _caps("video", "video/h264") + _caps("video", "video/vp8")
    pub = Publisher(relay, "s5", RED, video_codecs=h264_first)
    try:
        answer = await pub.connect()
        assert "H264" in _first_video_codec(pub.client.localDescription.sdp)
        assert _first_video_codec(answer) == "video/VP8"
    finally:
        await pub.close()
        await relay.close()


async def test_stalled_viewers_hold_bounded_queues_and_ask_for_no_key_frames() -> None:
    relay = Relay()
    pub = Publisher(relay, "s2", RED)
    # Viewers whose senders never read: one forwarding, one re-encoding.
    audio, video = relay.subscribe("s2")
    video.set_mode("forward")
    audio.set_mode("forward")
    _, slow_reencode = relay.subscribe("s2")
    try:
        await pub.connect()
        await until(
            lambda: (h := relay.health("s2")) is not None and h.video_frames >= 40,
            20,
            "40 video frames",
        )
        await until(lambda: slow_reencode.dropped > 0, 20, "the re-encoding track to overflow")
        assert len(video._items) <= FORWARD_VIDEO_SLOT_FRAMES
        assert len(slow_reencode._items) <= VIDEO_SLOT_FRAMES
        assert len(audio._items) <= AUDIO_SLOT_FRAMES
        # Requests came from the two subscriptions and the source attaching, none from the
        # stalled tracks (they never asked for a frame).
        assert relay.publication("s2").keyframes.requested <= 3
        for track in (audio, video, slow_reencode):
            track.stop()
        assert relay.relayed_tracks == 1  # the re-encoding viewer's audio track
    finally:
        await pub.close()
        await relay.close()


async def test_forward_track_drops_whole_chains_and_waits_for_a_key_frame() -> None:
    relay = Relay()
    audio, video = relay.subscribe("s6")
    video.set_mode("forward")
    requests = relay.publication("s6").keyframes
    before = requests.requested

    def packet(keyframe: bool) -> av.Packet:
        p = av.Packet(b"\x00" if keyframe else b"\x01")
        p.is_keyframe = keyframe
        return p

    video.offer_packet(packet(False), False)  # before any key frame: useless to a decoder
    assert len(video._items) == 0 and video.waiting_for_keyframe
    video.offer_packet(packet(True), True)
    for _ in range(FORWARD_VIDEO_SLOT_FRAMES - 1):
        video.offer_packet(packet(False), False)
    assert len(video._items) == FORWARD_VIDEO_SLOT_FRAMES
    video.offer_packet(packet(False), False)  # overflow: the whole chain goes
    assert len(video._items) == 0 and video.waiting_for_keyframe
    assert video.dropped == FORWARD_VIDEO_SLOT_FRAMES + 1
    # The sender asks for a frame: the track requests a key frame and delivers the next one.
    reader = asyncio.create_task(video.recv())
    await until(lambda: requests.requested > before, 5, "a key-frame request")
    video.offer_packet(packet(False), False)
    video.offer_packet(packet(True), True)
    got = await asyncio.wait_for(reader, 5)
    assert got.is_keyframe
    audio.stop()
    video.stop()
    await relay.close()


async def test_keyframe_requests_are_rate_limited() -> None:
    sent: list[float] = []
    limiter = KeyframeLimiter(lambda: sent.append(0), interval=0.3)
    for _ in range(50):  # ten viewers, five requests each
        limiter.request()
    assert len(sent) == 1  # the first goes at once
    await until(lambda: len(sent) == 2, 5, "the deferred request")
    # All 49 others were answered by that one request: nothing else is sent.
    await asyncio.sleep(0.7)
    assert len(sent) == 2 and limiter.requested == 50

    # A key frame arriving while a request is deferred answers it.
    limiter.request()  # the interval has passed: sent at once
    limiter.request()  # deferred
    sent_before = len(sent)
    limiter.satisfied()
    await asyncio.sleep(0.7)
    assert len(sent) == sent_before == 3
    limiter.close()
