"""Relay tests with real aiortc peers in one process: publisher → relay → viewers."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from signaling.peer import make_peer_connection
from signaling.relay import Relay
from signaling.synthetic import PatternVideoTrack, ToneAudioTrack

RED = (200, 20, 20)
BLUE = (20, 20, 200)


async def _negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(
        RTCSessionDescription(answerer.localDescription.sdp, answerer.localDescription.type)
    )


class Publisher:
    """A patient: one peer connection to the relay's server-side peer connection."""

    def __init__(self, relay: Relay, session_id: str, background: tuple[int, int, int]) -> None:
        self.relay = relay
        self.session_id = session_id
        self.client = make_peer_connection()
        self.server = make_peer_connection()
        self.video = PatternVideoTrack("patient", background=background, fps=20)
        self.client.addTrack(ToneAudioTrack())
        self.client.addTrack(self.video)

    async def connect(self) -> None:
        self.relay.attach(self.session_id, self.server)
        await _negotiate(self.client, self.server)

    async def close(self) -> None:
        await self.client.close()
        await self.server.close()


class Viewer:
    """A clinician: receives audio and video from the relay and decodes them."""

    def __init__(self, relay: Relay, session_id: str) -> None:
        self.client = make_peer_connection()
        self.server = make_peer_connection()
        self.frames: list[np.ndarray] = []
        self.audio_frames = 0
        self.tracks = relay.subscribe(session_id)
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
                else:
                    self.audio_frames += 1

    async def connect(self) -> None:
        self.client.addTransceiver("audio", direction="recvonly")
        self.client.addTransceiver("video", direction="recvonly")
        await self.client.setLocalDescription(await self.client.createOffer())
        await self.server.setRemoteDescription(self.client.localDescription)
        for track in self.tracks:
            self.server.addTrack(track)
        await self.server.setLocalDescription(await self.server.createAnswer())
        await self.client.setRemoteDescription(self.server.localDescription)

    async def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        for track in self.tracks:
            track.stop()
        await self.client.close()
        await self.server.close()
        for task in self._tasks:
            task.cancel()


def _close_to(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(np.abs(pixel - np.array(colour)) < 40))


async def test_two_viewers_late_viewer_and_publisher_reconnect() -> None:
    relay = Relay()
    pub = Publisher(relay, "s1", RED)
    v1, v2 = Viewer(relay, "s1"), Viewer(relay, "s1")
    late: Viewer | None = None
    pub2: Publisher | None = None
    try:
        await pub.connect()
        await v1.connect()
        await v2.connect()
        await v1.wait_frames(10)
        await v2.wait_frames(10)
        assert _close_to(v1.frames[-1], RED) and _close_to(v2.frames[-1], RED)
        assert v1.audio_frames > 0 and v2.audio_frames > 0

        # A viewer joining later decodes too: its first frame must have been a key frame,
        # or the VP8 decoder would produce nothing.
        late = Viewer(relay, "s1")
        await late.connect()
        await late.wait_frames(5)

        health = relay.health("s1")
        assert health is not None and health.video_fps > 5 and health.seconds_since_video < 1

        # The patient's connection drops; a new peer connection publishes a blue picture.
        await pub.close()
        pub2 = Publisher(relay, "s1", BLUE)
        await pub2.connect()
        # The viewers keep their peer connections: no renegotiation, the video continues.
        async with asyncio.timeout(20):
            while not (_close_to(v1.frames[-1], BLUE) and _close_to(v2.frames[-1], BLUE)):
                await asyncio.sleep(0.05)
        assert v1.client.connectionState == "connected"
        assert relay.relayed_tracks == 6
    finally:
        for peer in (v1, v2, late, pub, pub2):
            if peer is not None:
                await peer.close()
        await relay.close()
    assert relay.relayed_tracks == 0


async def test_stalled_viewer_holds_at_most_one_frame() -> None:
    relay = Relay()
    pub = Publisher(relay, "s2", RED)
    audio, video = relay.subscribe("s2")  # a viewer whose encoder never reads
    try:
        await pub.connect()
        async with asyncio.timeout(20):
            while (h := relay.health("s2")) is None or h.video_frames < 20:
                await asyncio.sleep(0.05)
        assert len(video._frames) == 1
        assert video.dropped >= 18
        assert len(audio._frames) <= 5
        video.stop()
        audio.stop()
        assert relay.relayed_tracks == 0
    finally:
        await pub.close()
        await relay.close()
