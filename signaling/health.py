"""Per-publisher media health: frames per second, bitrate, seconds since the last frame.

The relay feeds a :class:`MediaHealthMeter` as frames arrive: encoded frames, as they are
forwarded (nothing is decoded for health; the relay reads the size from VP8 key frame headers).
The rest of the server reads immutable :class:`MediaHealth` snapshots (the monitoring issue
raises "video lost" from ``seconds_since_video``).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

# Frames per second is counted over this sliding window.
FPS_WINDOW_SECS = 2.0
# With no video for this long the last bitrate reading is stale, not a figure to show.
STALE_BITRATE_SECS = 2.0


@dataclass(frozen=True)
class MediaHealth:
    """A snapshot of one publisher's incoming media."""

    video_fps: float
    width: int
    height: int
    bitrate_kbps: float
    packets_lost: int
    seconds_since_video: float | None  # None: no video frame ever arrived
    seconds_since_audio: float | None
    video_frames: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API and the roster."""
        return asdict(self)


class MediaHealthMeter:
    """Collects frame arrivals and transport byte counts; cheap enough for every frame."""

    def __init__(self) -> None:
        self._video_times: deque[float] = deque()
        self._last_video: float | None = None
        self._last_audio: float | None = None
        self._size = (0, 0)
        self._frames = 0
        self._bitrate_kbps = 0.0
        self._lost = 0
        self._last_sample: tuple[int, float, int] | None = None  # (pc id, time, bytes)

    def video_frame(self, width: int, height: int) -> None:
        """A video frame arrived (*width* × *height*: the latest known size, 0 if unknown)."""
        now = time.monotonic()
        self._last_video = now
        self._frames += 1
        self._size = (width, height)
        self._video_times.append(now)
        while self._video_times and self._video_times[0] < now - FPS_WINDOW_SECS:
            self._video_times.popleft()

    def audio_frame(self) -> None:
        """An audio frame arrived."""
        self._last_audio = time.monotonic()

    def transport_sample(self, pc_id: int, bytes_received: int, packets: int, lost: int) -> None:
        """A periodic reading of the publisher transport's byte counter."""
        now = time.monotonic()
        last = self._last_sample
        if last is not None and last[0] == pc_id and now > last[1]:
            self._bitrate_kbps = max(0, bytes_received - last[2]) * 8 / 1000 / (now - last[1])
        self._last_sample = (pc_id, now, bytes_received)
        self._lost = lost

    def snapshot(self) -> MediaHealth:
        """The current figures."""
        now = time.monotonic()
        while self._video_times and self._video_times[0] < now - FPS_WINDOW_SECS:
            self._video_times.popleft()
        since_video = None if self._last_video is None else now - self._last_video
        if since_video is not None and since_video > STALE_BITRATE_SECS:
            bitrate = 0.0  # the byte counter stops too; do not report a stale figure
        else:
            bitrate = self._bitrate_kbps
        return MediaHealth(
            video_fps=round(len(self._video_times) / FPS_WINDOW_SECS, 1),
            width=self._size[0],
            height=self._size[1],
            bitrate_kbps=round(bitrate, 1),
            packets_lost=self._lost,
            seconds_since_video=None if since_video is None else round(since_video, 2),
            seconds_since_audio=None
            if self._last_audio is None
            else round(now - self._last_audio, 2),
            video_frames=self._frames,
        )
