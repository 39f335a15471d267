"""/signal over a real server: real Socket.IO clients and real aiortc peers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import numpy as np
import pytest
import socketio
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from server.db import for_writing
from signaling.client import SignalingClient, SignalingFailed
from signaling.namespace import MAX_SDP_CHARS
from signaling.synthetic import PatternVideoTrack, ToneAudioTrack
from tests.conftest import World

RED = (200, 20, 20)
BLUE = (20, 20, 200)


class Watcher:
    """A viewer that decodes what it receives and samples the picture's background colour."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.audio = 0
        self.tasks: list[asyncio.Task[None]] = []

    def on_track(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames.append(frame.to_ndarray(format="rgb24")[-2, -2].astype(int))
                else:
                    self.audio += 1

    async def until(self, predicate: Any, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)

    def sees(self, colour: tuple[int, int, int]) -> bool:
        return bool(self.frames) and bool(np.all(np.abs(self.frames[-1] - np.array(colour)) < 40))

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()


async def _client(world: World, who: str) -> SignalingClient:
    client = SignalingClient(world.url, world.tokens[who], reconnect=False)
    await client.connect()
    return client


async def test_publisher_two_viewers_late_viewer_and_reconnect(world: World) -> None:
    s1 = world.sessions["s1"]
    patient = await _client(world, "pat1")
    clinician = await _client(world, "clin_a")
    oncall = await _client(world, "oncall")
    w1, w2, w3 = Watcher(), Watcher(), Watcher()
    late: SignalingClient | None = None
    patient2: SignalingClient | None = None
    try:
        video = PatternVideoTrack("Pat One", background=RED, fps=20)
        await patient.publish(s1, [ToneAudioTrack(), video])
        viewer_pc = await clinician.view(s1, w1.on_track)
        await oncall.view(s1, w2.on_track)
        await w1.until(lambda: len(w1.frames) >= 10 and w1.sees(RED))
        await w2.until(lambda: len(w2.frames) >= 10 and w2.sees(RED))
        assert w1.audio > 0
        # The server forwards what the patient sends: every viewer track, nothing decoded.
        from server.keys import RELAY

        relay = world.app[RELAY]
        assert relay.forwarded_tracks == relay.relayed_tracks == 4
        assert not relay.publication(s1).feeds["video"].decoding

        # A viewer arriving later decodes as well (it was sent a key frame first).
        late = await _client(world, "admin")
        await late.view(s1, w3.on_track)
        await w3.until(lambda: len(w3.frames) >= 5)

        # The patient's network drops: the socket dies without a goodbye. They come back on
        # a new socket with a new peer connection and a different picture.
        await patient.sio.eio.disconnect(abort=True)
        await patient.close()
        patient2 = await _client(world, "pat1")
        await patient2.publish(
            s1, [ToneAudioTrack(), PatternVideoTrack("Pat One", background=BLUE)]
        )
        await w1.until(lambda: w1.sees(BLUE))
        await w2.until(lambda: w2.sees(BLUE))
        # The viewers did not renegotiate: still the same, still connected, peer connection.
        assert clinician.pcs[s1] is viewer_pc
        assert viewer_pc.connectionState == "connected"
        assert clinician.errors == [] and oncall.errors == []
    finally:
        for w in (w1, w2, w3):
            w.stop()
        for c in (patient, clinician, oncall, late, patient2):
            if c is not None:
                await c.close()


async def test_presence_and_media_health_reach_the_api(world: World) -> None:
    import aiohttp

    s1 = world.sessions["s1"]
    patient = await _client(world, "pat1")
    try:
        await patient.publish(s1, [ToneAudioTrack(), PatternVideoTrack("Pat One", fps=20)])
        headers = {"Authorization": f"Bearer {world.tokens['clin_a']}"}
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(20):
                while True:
                    async with http.get(f"{world.url}/api/sessions/{s1}", headers=headers) as r:
                        body = await r.json()
                    health = body["media_health"]
                    if health and health["video_fps"] >= 5:
                        break
                    await asyncio.sleep(0.2)
            assert body["presence"]["publisher_online"] is True
            assert health["seconds_since_video"] < 2
            async with http.get(f"{world.url}/metrics") as r:
                metrics = await r.text()
            assert "vigil_publishers 1.0" in metrics
    finally:
        await patient.close()


async def _refused(world: World, auth: Any, namespace: str = "/signal") -> dict[str, Any]:
    """Connect with *auth*; return the refusal the server sent in ``connect_error``."""
    sio = socketio.AsyncClient(reconnection=False)
    reasons: list[Any] = []
    sio.on("connect_error", reasons.append, namespace=namespace)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(world.url, namespaces=[namespace], auth=auth, transports=["websocket"])
    await sio.disconnect()
    assert len(reasons) == 1
    return reasons[0]["data"]


async def test_connection_without_a_valid_token_is_refused_with_a_reason(world: World) -> None:
    from datetime import timedelta

    from server.auth import Principal, issue_token
    from tests.conftest import TEST_SECRET

    no_token = await _refused(world, None)
    assert no_token["code"] == "auth_required"
    garbage = await _refused(world, {"token": "not-a-token"})
    assert garbage["code"] == "token_invalid"
    from server.keys import CLOCK

    now = world.app[CLOCK].now()
    expired = issue_token(
        Principal(subject=f"user:{world.users['clin_a']}", role="clinician", clinic_id=1, name="x"),
        TEST_SECRET,
        now - timedelta(hours=2),
        now - timedelta(hours=1),
    )
    assert (await _refused(world, {"token": expired}))["code"] == "token_expired"
    forged = issue_token(
        Principal(subject=f"user:{world.users['clin_a']}", role="clinician", clinic_id=1, name="x"),
        "another-secret-that-is-long-enough-to-sign-tokens-00000",
        now,
        now + timedelta(hours=1),
    )
    assert (await _refused(world, {"token": forged}))["code"] == "token_invalid"


async def test_authorisation_on_every_event(world: World) -> None:
    s1, s2 = world.sessions["s1"], world.sessions["s2"]
    pat1 = await _client(world, "pat1")
    clin_b = await _client(world, "clin_b")
    other = await _client(world, "oncall_other")
    try:
        # Another patient's session.
        with pytest.raises(SignalingFailed) as e:
            await pat1.join(s2, "publisher")
        assert e.value.code == "forbidden"
        # A patient may not view, not even their own session.
        with pytest.raises(SignalingFailed) as e:
            await pat1.join(s1, "viewer")
        assert e.value.code == "forbidden"
        # A clinician not assigned to the session; on-call of another clinic.
        for client in (clin_b, other):
            with pytest.raises(SignalingFailed) as e:
                await client.join(s1, "viewer")
            assert e.value.code == "forbidden"
        # Offer without joining first.
        with pytest.raises(SignalingFailed) as e:
            await clin_b.call("offer", {"session_id": s1, "type": "offer", "sdp": "v=0\r\n"})
        assert e.value.code == "not_joined"
        # A sitter's invite follows the session but neither publishes nor views; a guide views.
        sitter = SignalingClient(world.url, await world.invite("s1", "sitter"), reconnect=False)
        guide = SignalingClient(world.url, await world.invite("s1", "guide"), reconnect=False)
        await sitter.connect()
        await guide.connect()
        try:
            for as_ in ("publisher", "viewer"):
                with pytest.raises(SignalingFailed) as e:
                    await sitter.join(s1, as_)
                assert e.value.code == "forbidden"
            assert (await guide.join(s1, "viewer"))["as"] == "viewer"
            with pytest.raises(SignalingFailed) as e:
                await guide.join(s2, "viewer")
            assert e.value.code == "forbidden"
        finally:
            await sitter.close()
            await guide.close()
    finally:
        for c in (pat1, clin_b, other):
            await c.close()


async def test_revoked_invite_stops_working_on_the_next_event(world: World) -> None:
    from sqlalchemy import update

    from server.keys import CLOCK, SESSIONMAKER
    from server.models import Invite

    guide = SignalingClient(world.url, await world.invite("s1", "guide"), reconnect=False)
    await guide.connect()
    try:
        await guide.join(world.sessions["s1"], "viewer")
        async with world.app[SESSIONMAKER]() as db, db.begin():
            await for_writing(db)
            await db.execute(update(Invite).values(revoked_at=world.app[CLOCK].now()))
        with pytest.raises(SignalingFailed) as e:
            await guide.join(world.sessions["s1"], "viewer")
        assert e.value.code == "invite_revoked"
    finally:
        await guide.close()


async def test_bad_input_gets_an_error_and_the_server_keeps_serving(world: World) -> None:
    s1 = world.sessions["s1"]
    bad = await _client(world, "clin_a")
    good_patient = await _client(world, "pat1")
    watcher = Watcher()
    viewer = await _client(world, "oncall")
    try:
        await bad.join(s1, "viewer")
        cases: list[tuple[str, Any, str]] = [
            (
                "offer",
                {"session_id": s1, "type": "offer", "sdp": "v=0\r\nthis is not sdp"},
                "bad_sdp",
            ),
            ("offer", {"session_id": s1, "type": "offer", "sdp": "hello"}, "bad_sdp"),
            ("offer", {"session_id": s1, "type": "answer", "sdp": "v=0"}, "bad_request"),
            ("offer", {"session_id": s1, "type": "offer", "sdp": 42}, "bad_request"),
            (
                "offer",
                {"session_id": s1, "type": "offer", "sdp": "v=0" + "a" * MAX_SDP_CHARS},
                "payload_too_large",
            ),
            ("join", {"session_id": "no-such-session", "as": "viewer"}, "unknown_session"),
            ("join", {"session_id": s1, "as": "director"}, "bad_request"),
            ("join", {"session_id": s1}, "bad_request"),
            ("join", {"session_id": s1, "as": "viewer", "extra": 1}, "bad_request"),
            ("join", ["not", "an", "object"], "bad_request"),
            ("join", "s1", "bad_request"),
            ("fly_to_the_moon", {}, "unknown_event"),
            ("leave", {"session_id": s1 * 3}, "bad_request"),
        ]
        for event, data, code in cases:
            with pytest.raises(SignalingFailed) as e:
                await bad.call(event, data)
            assert e.value.code == code, (event, data)
        # An emit without an acknowledgement still gets an `error` event.
        await bad.sio.emit("join", {"session_id": 5, "as": "viewer"}, namespace="/signal")
        async with asyncio.timeout(5):
            while len(bad.errors) < len(cases) + 1:
                await asyncio.sleep(0.02)
        assert bad.errors[-1]["code"] == "bad_request" and bad.errors[-1]["event"] == "join"

        # Meanwhile everyone else is served: a patient publishes, a viewer receives.
        await good_patient.publish(s1, [ToneAudioTrack(), PatternVideoTrack("P", fps=20)])
        await viewer.view(s1, watcher.on_track)
        await watcher.until(lambda: len(watcher.frames) >= 5)
        # And the misbehaving client itself can still do the right thing.
        assert (await bad.join(s1, "viewer"))["ok"] is True
    finally:
        watcher.stop()
        for c in (bad, good_patient, viewer):
            await c.close()


async def test_oversized_socket_message_is_refused_without_harm(world: World) -> None:
    from server.app import MAX_MESSAGE_BYTES

    big = await _client(world, "clin_a")
    other = await _client(world, "oncall")
    try:
        with contextlib.suppress(Exception):
            await big.sio.call(
                "join",
                {"session_id": "x" * (MAX_MESSAGE_BYTES + 10), "as": "viewer"},
                namespace="/signal",
                timeout=3,
            )
        # Engine.IO closes the offending connection; others are unaffected.
        assert (await other.join(world.sessions["s1"], "viewer"))["ok"] is True
    finally:
        await big.close()
        await other.close()


async def test_ending_the_session_closes_everyones_media(world: World) -> None:
    from server.keys import LIFECYCLE, RELAY

    s1 = world.sessions["s1"]
    patient = await _client(world, "pat1")
    clinician = await _client(world, "clin_a")
    ended: list[Any] = []
    patient.sio.on("session_ended", ended.append, namespace="/signal")
    clinician.sio.on("session_ended", ended.append, namespace="/signal")
    watcher = Watcher()
    try:
        await patient.publish(s1, [ToneAudioTrack(), PatternVideoTrack("P", fps=20)])
        await clinician.view(s1, watcher.on_track)
        await watcher.until(lambda: len(watcher.frames) >= 3)
        await world.app[LIFECYCLE].end_early(s1, "patient asked to stop", actor="test")
        await watcher.until(lambda: len(ended) == 2, timeout=10)
        assert {e["phase"] for e in ended} == {"ended_early"}
        assert world.app[RELAY].relayed_tracks == 0 and s1 not in world.app[RELAY].sessions()
        for client, as_ in ((patient, "publisher"), (clinician, "viewer")):
            with pytest.raises(SignalingFailed) as e:
                await client.join(s1, as_)
            assert e.value.code == "session_ended"
    finally:
        watcher.stop()
        await patient.close()
        await clinician.close()


async def test_a_second_publisher_connection_replaces_the_first_and_tells_it(world: World) -> None:
    s1 = world.sessions["s1"]
    tab1 = await _client(world, "pat1")
    tab2 = await _client(world, "pat1")
    replaced: list[Any] = []
    tab1.sio.on("replaced", replaced.append, namespace="/signal")
    try:
        await tab1.publish(s1, [ToneAudioTrack(), PatternVideoTrack("P")])
        await tab2.publish(s1, [ToneAudioTrack(), PatternVideoTrack("P")])
        async with asyncio.timeout(5):
            while not replaced:
                await asyncio.sleep(0.02)
        assert replaced == [{"session_id": s1}]
        # The first tab is no longer joined; the second publishes.
        with pytest.raises(SignalingFailed) as e:
            await tab1.call("offer", {"session_id": s1, "type": "offer", "sdp": "v=0\r\n"})
        assert e.value.code == "not_joined"
        presence = await tab2.call("presence", {"session_id": s1})
        assert presence["publisher_online"] is True
    finally:
        await tab1.close()
        await tab2.close()


async def test_an_expired_token_stops_working_on_the_next_event(world: World) -> None:
    from datetime import timedelta

    from server.auth import Principal, issue_token
    from server.keys import CLOCK
    from tests.conftest import TEST_SECRET

    now = world.app[CLOCK].now()
    short = issue_token(
        Principal(subject=f"user:{world.users['clin_a']}", role="clinician", clinic_id=1, name="x"),
        TEST_SECRET,
        now,
        now + timedelta(seconds=2),
    )
    client = SignalingClient(world.url, short, reconnect=False)
    await client.connect()
    try:
        await client.join(world.sessions["s1"], "viewer")
        await asyncio.sleep(2.5)
        with pytest.raises(SignalingFailed) as e:
            await client.join(world.sessions["s2"], "viewer")
        assert e.value.code == "token_expired"
    finally:
        await client.close()


async def test_media_sent_by_a_viewer_is_read_and_dropped(world: World) -> None:
    from aiortc import RTCSessionDescription

    from server.keys import RELAY
    from signaling.peer import make_peer_connection

    s1 = world.sessions["s1"]
    patient = await _client(world, "pat1")
    clinician = await _client(world, "clin_a")
    watcher = Watcher()
    own_camera = PatternVideoTrack("clinician camera", fps=20)
    pc = make_peer_connection()
    try:
        await patient.publish(s1, [ToneAudioTrack(), PatternVideoTrack("P", fps=20)])
        await clinician.join(s1, "viewer")
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTrack(own_camera)  # sendrecv video: the clinician's camera is on
        pc.on("track", watcher.on_track)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await clinician.call(
            "offer", {"session_id": s1, "type": "offer", "sdp": pc.localDescription.sdp}
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await watcher.until(lambda: len(watcher.frames) >= 5)
        await watcher.until(lambda: own_camera.frames_sent >= 20)
        drains = world.app[RELAY]._drains
        assert len(drains) == 1 and not next(iter(drains)).done()
    finally:
        watcher.stop()
        await pc.close()
        await patient.close()
        await clinician.close()


async def test_a_viewer_that_cannot_take_vp8_is_served_by_re_encoding(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from aiortc import RTCRtpSender, RTCSessionDescription

    from server.keys import RELAY
    from signaling.peer import make_peer_connection

    s1 = world.sessions["s1"]
    patient = await _client(world, "pat1")
    clinician = await _client(world, "clin_a")
    watcher = Watcher()
    pc = make_peer_connection()
    try:
        await patient.publish(s1, [ToneAudioTrack(), PatternVideoTrack("P", background=RED)])
        await clinician.join(s1, "viewer")
        pc.addTransceiver("audio", direction="recvonly")
        video = pc.addTransceiver("video", direction="recvonly")
        video.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "H264"]
        )
        pc.on("track", watcher.on_track)
        await pc.setLocalDescription(await pc.createOffer())
        with caplog.at_level(logging.INFO, logger="signaling.relay"):
            answer = await clinician.call(
                "offer", {"session_id": s1, "type": "offer", "sdp": pc.localDescription.sdp}
            )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await watcher.until(lambda: len(watcher.frames) >= 5 and watcher.sees(RED))
        relay = world.app[RELAY]
        # Audio (Opus) is still forwarded; video is decoded once and re-encoded for this viewer.
        assert relay.relayed_tracks == 2 and relay.forwarded_tracks == 1
        assert relay.publication(s1).feeds["video"].decoding
        logged = [r for r in caplog.records if "re-encoding" in r.getMessage()]
        assert len(logged) == 1 and getattr(logged[0], "kind", None) == "video"
    finally:
        watcher.stop()
        await pc.close()
        await patient.close()
        await clinician.close()
