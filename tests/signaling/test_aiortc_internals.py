"""The relay forwards by reaching into aiortc: fail loudly when those internals change."""

from __future__ import annotations

import asyncio
import queue

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender

from signaling.passthrough import (
    AIORTC_VERSION,
    EncodedFrame,
    PassThroughQueue,
    aiortc_internals_problems,
    install_passthrough,
    is_keyframe,
    vp8_keyframe_size,
)
from signaling.peer import make_peer_connection


def test_aiortc_is_the_version_the_relay_was_written_for() -> None:
    assert aiortc.__version__ == AIORTC_VERSION, (
        f"aiortc {aiortc.__version__} is installed but signaling/passthrough.py relies on the "
        f"internals of aiortc {AIORTC_VERSION}: read the new RTCRtpReceiver/RTCRtpSender source, "
        "adapt passthrough.py, then change AIORTC_VERSION and the pin in pyproject.toml together"
    )


def test_the_internals_the_relay_patches_are_still_there() -> None:
    problems = aiortc_internals_problems()
    assert problems == [], "forwarding would break:\n" + "\n".join(problems)


async def test_a_real_receiver_accepts_the_passthrough_queue() -> None:
    pc = make_peer_connection()
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        receiver = transceiver.receiver
        assert isinstance(receiver, RTCRtpReceiver)
        assert type(receiver._RTCRtpReceiver__decoder_queue) is queue.Queue  # type: ignore[attr-defined]
        # The track exists once a remote description is applied; stand one in as aiortc would.
        from aiortc.rtcrtpreceiver import RemoteStreamTrack

        receiver._track = RemoteStreamTrack(kind="video")
        passthrough = install_passthrough(receiver)
        assert receiver._RTCRtpReceiver__decoder_queue is passthrough  # type: ignore[attr-defined]
        assert isinstance(passthrough, PassThroughQueue)

        # What _handle_rtp_packet queues comes out of the track, encoded; None ends it.
        from aiortc.codecs import CODECS
        from aiortc.jitterbuffer import JitterFrame

        vp8 = next(c for c in CODECS["video"] if c.name == "VP8")
        passthrough.put((vp8, JitterFrame(b"\x10\x02\x00\x9d\x01\x2a\x40\x01\xf0\x00", 3000)))
        item = await asyncio.wait_for(receiver.track.recv(), 1)
        assert isinstance(item, EncodedFrame)
        assert item.keyframe and item.timestamp == 3000 and item.codec is vp8
        passthrough.put(None)
        assert passthrough.get_nowait() is None

        # A sender still routes PLI/FIR through an overridable _send_keyframe.
        assert callable(transceiver.sender._send_keyframe)
        assert isinstance(transceiver.sender, RTCRtpSender)
    finally:
        await pc.close()


def test_vp8_key_frame_header() -> None:
    # Frame tag (key frame, shown), start code, 320 × 240 with no scaling.
    header = b"\x10\x02\x00\x9d\x01\x2a\x40\x01\xf0\x00"
    assert vp8_keyframe_size(header) == (320, 240)
    assert is_keyframe("VP8", header)
    interframe = b"\x11" + header[1:]
    assert vp8_keyframe_size(interframe) is None and not is_keyframe("VP8", interframe)
    # Scaling bits are not part of the size.
    scaled = header[:6] + b"\x40\x41\xf0\xc0"
    assert vp8_keyframe_size(scaled) == (320, 240)
    assert vp8_keyframe_size(b"\x10\x02") is None
    # The tail of a frame whose first packets were lost is no key frame, whatever its bit 0.
    assert not is_keyframe("VP8", b"\x10\x02\x00\x11\x22\x33\x40\x01\xf0\x00")
    assert is_keyframe("H264", b"\x00\x00\x00\x01\x67\x42") and not is_keyframe(
        "H264", b"\x00\x00\x00\x01\x41\x9a"
    )
    assert is_keyframe("opus", b"\x78")
