"""Roster thumbnails: a small JPEG of a publisher's latest picture, made on demand.

A clinician watching many sessions does not need live video in every tile (each live tile is a
viewer stream the relay must serve, and a decoder in the clinician's browser); the roster shows
thumbnails refreshed every few seconds instead and live video for the session in focus.

The relay forwards encoded video without decoding it, so it hands the thumbnailer each VP8
key frame (:meth:`Thumbnailer.offer_keyframe`: keeping a reference costs nothing); when a page
asks, the newest key frame is decoded by a fresh decoder (a key frame needs no earlier frame)
and made a JPEG, at most once per ``MIN_INTERVAL_SECS``, so ten clinicians polling cost one
decode and one encode. The picture is as old as the last key frame; the relay asks the
publisher for a new one when a thumbnail is requested and the newest is older than a few
seconds.
When the relay does decode (a publisher codec it does not forward), :meth:`Thumbnailer.offer`
takes decoded frames instead.
"""

from __future__ import annotations

import io
import time
from typing import Any

from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame

THUMBNAIL_WIDTH = 320
JPEG_QUALITY = 70
MIN_INTERVAL_SECS = 2.0


class Thumbnailer:
    """The latest picture of one publisher, as a JPEG when asked."""

    def __init__(self) -> None:
        self._frame: Any = None  # an av.VideoFrame
        self._keyframe: tuple[Any, bytes] | None = None  # (codec parameters, VP8 data)
        self._jpeg: bytes | None = None
        self._made_at = 0.0
        self.taken_at: float | None = None  # monotonic time of the picture

    def offer(self, frame: Any) -> None:
        """A decoded video frame arrived (the newest replaces the older)."""
        self._frame = frame
        self.taken_at = time.monotonic()

    def offer_keyframe(self, codec: Any, data: bytes) -> None:
        """An encoded key frame arrived (*codec*: its RTCRtpCodecParameters)."""
        self._keyframe = (codec, data)
        self._frame = None
        self.taken_at = time.monotonic()

    def _decode_keyframe(self) -> Any:
        if self._keyframe is None:
            return None
        codec, data = self._keyframe
        self._keyframe = None
        try:
            frames = get_decoder(codec).decode(JitterFrame(data=data, timestamp=0))
        except Exception:  # a corrupt frame gives no thumbnail, never an error page
            return None
        return frames[0] if frames else None

    def jpeg(self) -> bytes | None:
        """A JPEG of the newest picture (cached for ``MIN_INTERVAL_SECS``), or None."""
        now = time.monotonic()
        if self._jpeg is not None and now - self._made_at < MIN_INTERVAL_SECS:
            return self._jpeg
        frame = self._frame if self._frame is not None else self._decode_keyframe()
        if frame is None:
            return self._jpeg
        image = frame.to_image()  # Pillow: RGB conversion of one frame, not every frame
        if image.width > THUMBNAIL_WIDTH:
            height = max(1, round(image.height * THUMBNAIL_WIDTH / image.width))
            image = image.resize((THUMBNAIL_WIDTH, height))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
        self._jpeg = out.getvalue()
        self._made_at = now
        self._frame = None  # encoded: keep only the JPEG until a newer picture arrives
        return self._jpeg
