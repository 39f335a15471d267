"""Wall-clock time and the time scale (invariant 4: time lives in the database).

Everything stored is real UTC wall-clock time. The time scale only shortens *durations*: with a
scale of 60 a 60-minute phase lasts 60 real seconds. Because stored instants are real, a
restarted process (even with another scale) resumes every deadline exactly where it was.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    """Injected everywhere the server asks for "now" or for "N protocol minutes later"."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        return datetime.now(UTC)

    def after(self, start: datetime, minutes: float) -> datetime:
        """The instant *minutes* protocol minutes after *start* (real time divided by the scale)."""
        return start + timedelta(minutes=minutes / self.scale)

    def protocol_minutes(self, start: datetime, end: datetime | None = None) -> float:
        """How many protocol minutes have passed from *start* to *end* (default now)."""
        end = end or self.now()
        return (end - start).total_seconds() * self.scale / 60.0
