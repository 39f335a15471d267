"""A clinic's protocol as data: the numbers of CLINICAL.md are defaults, never constants in code.

A protocol is a plain JSON object; :func:`Protocol.from_dict` validates it with a clear error
and fills what it does not say from the defaults. Sessions store a snapshot of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


class ProtocolError(ValueError):
    """A protocol document that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Protocol:
    """Durations of one dosing session, in protocol minutes (scaled by the clock's time scale)."""

    # Tablet under the tongue until it has dissolved.
    dosing_minutes: float = 10.0
    # The active (monitored) phase ends this long after the dose, not after dissolving.
    active_minutes_from_dose: float = 60.0
    recovery_minutes: float = 15.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ProtocolError(f"protocol.{f.name}: expected a number of minutes")
            if not 0 < value <= 24 * 60:
                raise ProtocolError(f"protocol.{f.name}: must be between 0 and 1440 minutes")
        if self.active_minutes_from_dose <= self.dosing_minutes:
            raise ProtocolError(
                "protocol.active_minutes_from_dose must be longer than protocol.dosing_minutes"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Protocol:
        """Validate *data*, filling missing fields from the defaults; unknown keys are errors."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ProtocolError("protocol: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProtocolError(f"protocol: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form stored on each session."""
        return asdict(self)
