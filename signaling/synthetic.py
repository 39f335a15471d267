"""Generated media for simulated patients, tests and benchmarks.

:class:`PatternVideoTrack` draws a moving bar, a label (the patient's name) and the wall clock,
so a viewer can see at a glance that the picture is live. :class:`ToneAudioTrack` sends a quiet
tone. Both pace themselves in real time like a camera and a microphone would.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from datetime import datetime

import numpy as np
from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame
from PIL import Image, ImageDraw, ImageFont

VIDEO_CLOCK_RATE = 90_000
AUDIO_RATE_HZ = 48_000
AUDIO_PTIME_SECS = 0.020
TONE_HZ = 330.0
# Quiet: the demo should be audible only if you turn it up.
TONE_AMPLITUDE = 600


class PatternVideoTrack(MediaStreamTrack):
    """A camera stand-in: background colour, moving bar, label and clock."""

    kind = "video"

    def __init__(
        self,
        label: str,
        *,
        width: int = 320,
        height: int = 240,
        fps: float = 15.0,
        background: tuple[int, int, int] = (24, 64, 96),
    ) -> None:
        super().__init__()
        self.label = label
        self.width = width
        self.height = height
        self.fps = fps
        self.background = background
        self.frames_sent = 0
        self._start: float | None = None
        self._font = ImageFont.load_default(size=max(12, height // 12))

    def _draw(self) -> Image.Image:
        img = Image.new("RGB", (self.width, self.height), self.background)
        draw = ImageDraw.Draw(img)
        x = int((self.frames_sent * 4) % self.width)
        draw.rectangle([x, 0, x + self.width // 16, self.height], fill=(230, 230, 230))
        draw.text((10, 10), self.label, fill=(255, 255, 255), font=self._font)
        stamp = datetime.now().strftime("%H:%M:%S")
        draw.text((10, self.height - self.height // 8), stamp, fill=(255, 255, 0), font=self._font)
        return img

    def _picture(self) -> VideoFrame:
        """This frame's picture (a subclass may supply pictures drawn in advance)."""
        return VideoFrame.from_ndarray(np.asarray(self._draw()), format="rgb24")

    async def recv(self) -> VideoFrame:
        """The next frame, paced at ``fps``."""
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.frames_sent / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = self._picture()
        frame.pts = int(self.frames_sent * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        self.frames_sent += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A microphone stand-in: a quiet sine tone in 20 ms frames."""

    kind = "audio"

    def __init__(self, frequency_hz: float = TONE_HZ) -> None:
        super().__init__()
        self.frequency_hz = frequency_hz
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        """The next 20 ms of tone, paced in real time."""
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._samples / AUDIO_RATE_HZ
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        n = int(AUDIO_RATE_HZ * AUDIO_PTIME_SECS)
        t = (np.arange(n) + self._samples) / AUDIO_RATE_HZ
        wave = (TONE_AMPLITUDE * np.sin(2 * math.pi * self.frequency_hz * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE_HZ
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE_HZ)
        self._samples += n
        return frame
