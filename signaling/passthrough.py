"""Where the relay reaches into aiortc to forward encoded media instead of decoding it.

aiortc's sender already sends pre-encoded media: a track whose ``recv()`` returns an
:class:`av.Packet` is only packetized (``Encoder.pack``), never encoded. Its receiver, however,
always decodes: every frame the jitter buffer completes goes to a decoder thread through the
private queue ``RTCRtpReceiver.__decoder_queue``. :func:`install_passthrough` replaces that
queue, on one receiver, with a :class:`PassThroughQueue` that hands the encoded frame to the
receiver's track instead, as an :class:`EncodedFrame`. The decoder thread still runs but only
ever sees the end-of-stream marker, so the track ends exactly as before.

Key frames go the other way: :func:`on_keyframe_request` hooks a viewer-side sender's
``_send_keyframe`` (called when the viewer sends PLI or FIR) and :func:`request_keyframe` makes
a publisher-side receiver send a PLI on its next packet, through the flag aiortc itself uses to
ask for a key frame after a decoding error (it then sends the PLI with the right media SSRC).

Everything here depends on aiortc 1.16.0 internals. aiortc is pinned to that exact version and
:func:`aiortc_internals_problems` (run by a test, and logged when a relay starts) says loudly
what no longer matches. If the queue cannot be replaced, the receiver keeps decoding and the
relay falls back to re-encoding: slower, but viewers still see the patient.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender, rtcrtpreceiver
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

AIORTC_VERSION = "1.16.0"
# The codec of each kind that the relay forwards; anything else is decoded and re-encoded.
FORWARD_MIME = {"audio": "audio/opus", "video": "video/VP8"}
RTX_MIME = "video/rtx"

_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_DECODER_ERROR_ATTR = "_RTCRtpReceiver__decoder_error"


@dataclass(frozen=True)
class EncodedFrame:
    """One complete encoded frame as the publisher-side jitter buffer assembled it."""

    data: bytes
    timestamp: int  # RTP timestamp, starting at 0 for this receiver (aiortc maps it)
    codec: RTCRtpCodecParameters
    keyframe: bool


class PassThroughQueue(queue.Queue[Any]):
    """Stands in for a receiver's decoder queue: encoded frames go to the track undecoded.

    ``put`` is called on the event loop (from ``RTCRtpReceiver._handle_rtp_packet``), so the
    frame can go straight into the track's asyncio queue. ``None`` (the receiver stopping) is
    queued for the decoder thread, which then ends the track as it always does.
    """

    def __init__(self, output: asyncio.Queue[Any]) -> None:
        super().__init__()
        self._output = output
        self.frames = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Forward ``(codec, JitterFrame)`` to the track; queue the end marker for the thread."""
        if item is None:
            super().put(item, block, timeout)
            return
        codec, frame = item
        self.frames += 1
        self._output.put_nowait(
            EncodedFrame(
                data=frame.data,
                timestamp=frame.timestamp,
                codec=codec,
                keyframe=is_keyframe(codec.name, frame.data),
            )
        )


def install_passthrough(receiver: RTCRtpReceiver) -> PassThroughQueue:
    """Make *receiver* deliver :class:`EncodedFrame` s to its track instead of decoded frames.

    Must be called before the receiver starts (``receive()`` hands the queue to the decoder
    thread), i.e. in the peer connection's ``track`` event. Raises ``RuntimeError`` when the
    aiortc internals it relies on are not there.
    """
    current = getattr(receiver, _QUEUE_ATTR, None)
    track = receiver.track
    output = getattr(track, "_queue", None)
    if type(current) is not queue.Queue or not isinstance(output, asyncio.Queue):
        raise RuntimeError("aiortc's RTCRtpReceiver internals changed: cannot forward")
    if not current.empty():
        raise RuntimeError("the receiver already started decoding")
    passthrough = PassThroughQueue(output)
    setattr(receiver, _QUEUE_ATTR, passthrough)
    return passthrough


def request_keyframe(receiver: RTCRtpReceiver) -> None:
    """Make *receiver* send a PLI to its sender with its next video packet."""
    flag = getattr(receiver, _DECODER_ERROR_ATTR, None)
    if isinstance(flag, threading.Event):
        flag.set()


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call *callback* whenever the remote receiver asks *sender* for a key frame (PLI/FIR)."""
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()  # harmless for forwarded packets; keeps re-encoding correct
        callback()

    # An instance attribute: _handle_rtcp_packet calls self._send_keyframe().
    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether *data* (one depayloaded frame) decodes on its own.

    VP8: the frame tag's bit 0 is 0 for a key frame (RFC 6386 §9.1), and the key frame start
    code follows: the jitter buffer can emit a frame missing its first packets (when a stream
    is joined mid-frame), whose first byte is then arbitrary. H.264 (Annex B, as aiortc
    depayloads it): an IDR slice or a sequence parameter set. Audio frames always do.
    """
    name = codec_name.lower()
    if name == "vp8":
        return vp8_keyframe_size(data) is not None
    if name == "h264":
        for chunk in data.split(b"\x00\x00\x01")[1:]:
            if chunk and chunk[0] & 0x1F in (5, 7):
                return True
        return False
    return True


def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame's 10-byte header, or None for any other frame.

    Layout (RFC 6386 §9.1): 3-byte frame tag, start code 9d 01 2a, then 16-bit little-endian
    width and height whose top two bits are a scaling factor.
    """
    if len(data) < 10 or data[0] & 0x01 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", data, 6)
    return width & 0x3FFF, height & 0x3FFF


def offered_mimes(sdp: str) -> dict[str, set[str]]:
    """Lower-case MIME types offered in the first m-line of each kind of *sdp*."""
    offered: dict[str, set[str]] = {}
    for media in SessionDescription.parse(sdp).media:
        if media.kind in ("audio", "video") and media.kind not in offered:
            offered[media.kind] = {c.mimeType.lower() for c in media.rtp.codecs}
    return offered


def _capabilities(kind: str) -> list[RTCRtpCodecCapability]:
    capabilities = RTCRtpSender.getCapabilities(kind)
    return list(capabilities.codecs) if capabilities is not None else []


def forward_only(kind: str) -> list[RTCRtpCodecCapability]:
    """Codec preferences allowing only the forwarded codec of *kind* (and RTX for video)."""
    wanted = {FORWARD_MIME[kind].lower(), RTX_MIME}
    return [c for c in _capabilities(kind) if c.mimeType.lower() in wanted]


def forward_first(kind: str) -> list[RTCRtpCodecCapability]:
    """Every codec aiortc has for *kind*, the forwarded one first (a publisher's answer)."""
    caps = _capabilities(kind)
    first = [c for c in caps if c.mimeType.lower() == FORWARD_MIME[kind].lower()]
    return first + [c for c in caps if c not in first]


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def aiortc_internals_problems() -> list[str]:
    """What no longer matches the aiortc internals this module relies on (empty: all good)."""
    problems: list[str] = []
    if aiortc.__version__ != AIORTC_VERSION:
        problems.append(
            f"aiortc is {aiortc.__version__}, the relay was written against {AIORTC_VERSION}: "
            "re-check signaling/passthrough.py against the new source before changing the pin"
        )
    expectations: list[tuple[str, Any, str]] = [
        (
            "RTCRtpReceiver.__init__ creates the decoder queue",
            RTCRtpReceiver.__init__,
            "self.__decoder_queue: queue.Queue = queue.Queue()",
        ),
        (
            "RTCRtpReceiver.receive hands the decoder queue to the decoder thread",
            RTCRtpReceiver.receive,
            "self.__decoder_queue,",
        ),
        (
            "RTCRtpReceiver._handle_rtp_packet queues (codec, encoded_frame)",
            RTCRtpReceiver._handle_rtp_packet,
            "self.__decoder_queue.put((codec, encoded_frame))",
        ),
        (
            "RTCRtpReceiver._handle_rtp_packet sends a PLI when the decoder error flag is set",
            RTCRtpReceiver._handle_rtp_packet,
            "if self.__decoder_error.is_set():",
        ),
        (
            "RTCRtpReceiver stops its decoder thread by queueing None",
            getattr(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder", None),
            "self.__decoder_queue.put(None)",
        ),
        (
            "decoder_worker ends the track when it reads None",
            getattr(rtcrtpreceiver, "decoder_worker", None),
            "if task is None:",
        ),
        (
            "RTCRtpSender answers PLI/FIR through self._send_keyframe()",
            RTCRtpSender._handle_rtcp_packet,
            "self._send_keyframe()",
        ),
        (
            "RTCRtpSender packs av.Packets without encoding them",
            RTCRtpSender._next_encoded_frame,
            "self.__encoder.pack(data)",
        ),
        (
            "Vp8Encoder.pack takes the RTP timestamp from pts and time_base",
            Vp8Encoder.pack,
            "convert_timebase(packet.pts, packet.time_base, VIDEO_TIME_BASE)",
        ),
        (
            "OpusEncoder.pack takes the RTP timestamp from pts and time_base",
            OpusEncoder.pack,
            "convert_timebase(packet.pts, packet.time_base, TIME_BASE)",
        ),
    ]
    for what, obj, needle in expectations:
        if needle not in _source(obj):
            problems.append(f"aiortc internals changed: {what} (expected `{needle}`)")
    if list(inspect.signature(JitterFrame).parameters) != ["data", "timestamp"]:
        problems.append("aiortc internals changed: JitterFrame(data, timestamp)")
    for kind, mime in FORWARD_MIME.items():
        if not any(c.mimeType.lower() == mime.lower() for c in _capabilities(kind)):
            problems.append(f"aiortc no longer offers {mime}")
    return problems
