"""A clinic's protocol as data: the numbers of CLINICAL.md are defaults, never constants in code.

A protocol is a plain JSON object; :meth:`Protocol.from_dict` validates it with an error that
names the offending field and fills what it does not say from the defaults. A clinic keeps its
protocol in the database (``vigil set-protocol --clinic NAME --file protocol.json`` loads one
from a file); each session stores a snapshot taken when it was created, so editing a protocol
never moves a running session.

Units are in the names. ``*_minutes`` are *protocol* minutes, shortened by the time scale
(``VIGIL_TIME_SCALE``); ``*_seconds`` are real seconds, because they describe the network and
the people watching (a video gap of 15 s is 15 s whatever the demo's speed).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class ProtocolError(ValueError):
    """A protocol document that cannot be used; the message names the field."""


class Priority(enum.StrEnum):
    """IEC 60601-1-8 alarm priorities."""

    HIGH = "high"  # immediate response
    MEDIUM = "medium"  # prompt response
    LOW = "low"  # awareness: shown, never pages
    INFO = "info"  # logged only

    @property
    def rank(self) -> int:
        """Sort key: high first."""
        return ("high", "medium", "low", "info").index(self.value)


class Level(enum.StrEnum):
    """Who an escalation step pages."""

    CLINICIAN = "clinician"  # the session's assigned clinician
    ONCALL = "oncall"  # the clinic's on-call staff
    DIRECTOR = "admin"  # the medical director / clinic admins


@dataclass(frozen=True)
class FlagType:
    """One entry of the side-effect catalogue."""

    code: str
    label: str
    priority: Priority


@dataclass(frozen=True)
class Escalation:
    """How an alarm of one priority escalates.

    ``step_minutes``: an unacknowledged alarm moves to the next level after this long.
    ``ack_minutes``: an acknowledged alarm that nobody resolved triggers again after this long.
    """

    step_minutes: float
    ack_minutes: float
    levels: tuple[Level, ...] = (Level.CLINICIAN, Level.ONCALL, Level.DIRECTOR)


DEFAULT_FLAGS: tuple[FlagType, ...] = (
    FlagType("numbness", "Numbness of limbs", Priority.LOW),
    FlagType("blurred_vision", "Blurred vision", Priority.LOW),
    FlagType("dizziness", "Dizziness", Priority.LOW),
    FlagType("nausea", "Nausea", Priority.LOW),
    FlagType("light_noise_sensitivity", "Light or noise sensitivity", Priority.LOW),
    FlagType("confusion", "Confusion", Priority.MEDIUM),
    FlagType("anxiety_panic", "Anxiety or panic", Priority.MEDIUM),
    FlagType("vomiting", "Vomiting", Priority.MEDIUM),
    FlagType("bp_above_threshold", "Blood pressure above the clinic threshold", Priority.MEDIUM),
    FlagType("heart_rate_high", "Heart rate above the clinic threshold", Priority.MEDIUM),
    FlagType("breathing_difficulty", "Breathing difficulty", Priority.HIGH),
    FlagType("chest_pain", "Chest pain", Priority.HIGH),
    FlagType("unresponsive", "Unresponsive to name", Priority.HIGH),
    FlagType("suicidal_thoughts", "Suicidal thoughts", Priority.HIGH),
    FlagType("bp_severe", "Blood pressure dangerously high", Priority.HIGH),
)

# Raised by the server itself from vital signs; every catalogue must define them.
REQUIRED_FLAGS = ("bp_above_threshold", "bp_severe", "heart_rate_high")

DEFAULT_ESCALATION: dict[Priority, Escalation] = {
    Priority.HIGH: Escalation(step_minutes=2, ack_minutes=5),
    Priority.MEDIUM: Escalation(step_minutes=5, ack_minutes=10),
}

_LIMIT_MINUTES = 24 * 60


@dataclass(frozen=True)
class Protocol:
    """Everything a clinic decides about a dosing session."""

    # The clock.
    dosing_minutes: float = 10.0  # tablet under the tongue until dissolved
    active_minutes_from_dose: float = 60.0  # the active phase ends this long after the dose
    recovery_minutes: float = 15.0
    # Check-ins: from the dose, every N minutes while active or recovering; unanswered after
    # the grace period they are missed (a dead-man's switch).
    checkin_every_minutes: float = 15.0
    checkin_grace_minutes: float = 2.0
    missed_checkin_priority: Priority = Priority.MEDIUM
    # Blood pressure is asked for at these times after the dose (it peaks around +40).
    vitals_at_minutes: tuple[float, ...] = (40.0,)
    # Vital signs: above "max" dosing is blocked (pre-check) or a medium flag is raised;
    # above "severe" twice within severe_repeat_minutes, or above "critical" once: high.
    max_systolic: int = 160
    max_diastolic: int = 90
    max_heart_rate: int = 100
    severe_systolic: int = 180
    severe_diastolic: int = 110
    severe_repeat_minutes: float = 5.0
    critical_systolic: int = 200
    critical_diastolic: int = 120
    # Technical alarms, in real seconds.
    video_lost_seconds: float = 15.0
    unwatched_seconds: float = 60.0
    disconnected_seconds: float = 30.0
    flags: tuple[FlagType, ...] = DEFAULT_FLAGS
    escalation: dict[Priority, Escalation] = field(default_factory=lambda: dict(DEFAULT_ESCALATION))

    def __post_init__(self) -> None:
        for name in (
            "dosing_minutes",
            "active_minutes_from_dose",
            "recovery_minutes",
            "checkin_every_minutes",
            "checkin_grace_minutes",
            "severe_repeat_minutes",
        ):
            _positive(name, getattr(self, name), _LIMIT_MINUTES)
        for name in ("video_lost_seconds", "unwatched_seconds", "disconnected_seconds"):
            _positive(name, getattr(self, name), 3600)
        for name in (
            "max_systolic",
            "max_diastolic",
            "max_heart_rate",
            "severe_systolic",
            "severe_diastolic",
            "critical_systolic",
            "critical_diastolic",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 30 <= value <= 300:
                raise ProtocolError(f"protocol.{name}: expected a whole number from 30 to 300")
        if self.active_minutes_from_dose <= self.dosing_minutes:
            raise ProtocolError(
                "protocol.active_minutes_from_dose must be longer than protocol.dosing_minutes"
            )
        if not self.max_systolic <= self.severe_systolic <= self.critical_systolic:
            raise ProtocolError("protocol: max ≤ severe ≤ critical systolic is required")
        if not self.max_diastolic <= self.severe_diastolic <= self.critical_diastolic:
            raise ProtocolError("protocol: max ≤ severe ≤ critical diastolic is required")
        for i, minutes in enumerate(self.vitals_at_minutes):
            _positive(f"vitals_at_minutes[{i}]", minutes, _LIMIT_MINUTES)
        codes = [f.code for f in self.flags]
        if len(set(codes)) != len(codes):
            raise ProtocolError("protocol.flags: codes must be unique")
        missing = [c for c in REQUIRED_FLAGS if c not in codes]
        if missing:
            # Out-of-range vital signs raise these by code: without them a reading is lost.
            raise ProtocolError(f"protocol.flags: the catalogue needs {', '.join(missing)}")
        for priority in (Priority.HIGH, Priority.MEDIUM):
            if priority not in self.escalation:
                raise ProtocolError(f"protocol.escalation.{priority.value}: required")

    def flag(self, code: str) -> FlagType | None:
        """The catalogue entry for *code*, if the clinic has one."""
        return next((f for f in self.flags if f.code == code), None)

    def escalation_for(self, priority: Priority) -> Escalation | None:
        """The escalation of *priority*; None for low and info (they never page)."""
        if priority in (Priority.LOW, Priority.INFO):
            return None
        return self.escalation.get(priority)

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
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name == "flags":
                kwargs[name] = _flags(value)
            elif name == "escalation":
                kwargs[name] = _escalation(value)
            elif name == "vitals_at_minutes":
                if not isinstance(value, list):
                    raise ProtocolError("protocol.vitals_at_minutes: expected a list of minutes")
                kwargs[name] = tuple(value)
            elif name == "missed_checkin_priority":
                kwargs[name] = _priority("protocol.missed_checkin_priority", value)
            else:
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - from_dict filters unknown names
            raise ProtocolError(f"protocol: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form stored on each session."""
        out = asdict(self)
        out["vitals_at_minutes"] = list(self.vitals_at_minutes)
        out["missed_checkin_priority"] = self.missed_checkin_priority.value
        out["flags"] = [
            {"code": f.code, "label": f.label, "priority": f.priority.value} for f in self.flags
        ]
        out["escalation"] = {
            p.value: {
                "step_minutes": e.step_minutes,
                "ack_minutes": e.ack_minutes,
                "levels": [lv.value for lv in e.levels],
            }
            for p, e in self.escalation.items()
        }
        return out


def _positive(name: str, value: Any, limit: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"protocol.{name}: expected a number")
    if not 0 < value <= limit:
        raise ProtocolError(f"protocol.{name}: must be above 0 and at most {limit:g}")


def _priority(where: str, value: Any) -> Priority:
    try:
        return Priority(value)
    except ValueError:
        raise ProtocolError(f"{where}: expected high, medium, low or info") from None


def _flags(value: Any) -> tuple[FlagType, ...]:
    if not isinstance(value, list) or not value:
        raise ProtocolError("protocol.flags: expected a non-empty list")
    out = []
    for i, item in enumerate(value):
        where = f"protocol.flags[{i}]"
        if not isinstance(item, dict) or set(item) != {"code", "label", "priority"}:
            raise ProtocolError(f"{where}: expected {{code, label, priority}}")
        code, label = item["code"], item["label"]
        if not isinstance(code, str) or not code.isidentifier() or len(code) > 50:
            raise ProtocolError(f"{where}.code: expected a short identifier like chest_pain")
        if not isinstance(label, str) or not label.strip() or len(label) > 100:
            raise ProtocolError(f"{where}.label: expected 1-100 characters")
        out.append(FlagType(code, label, _priority(f"{where}.priority", item["priority"])))
    return tuple(out)


def _escalation(value: Any) -> dict[Priority, Escalation]:
    if not isinstance(value, dict):
        raise ProtocolError("protocol.escalation: expected an object keyed by priority")
    out: dict[Priority, Escalation] = {}
    for key, item in value.items():
        where = f"protocol.escalation.{key}"
        priority = _priority(where, key)
        if priority in (Priority.LOW, Priority.INFO):
            raise ProtocolError(f"{where}: low and info priorities never page")
        if (
            not isinstance(item, dict)
            or not {"step_minutes", "ack_minutes"} <= set(item)
            or not set(item) <= {"step_minutes", "ack_minutes", "levels"}
        ):
            raise ProtocolError(f"{where}: expected {{step_minutes, ack_minutes, levels?}}")
        _positive(f"escalation.{key}.step_minutes", item["step_minutes"], _LIMIT_MINUTES)
        _positive(f"escalation.{key}.ack_minutes", item["ack_minutes"], _LIMIT_MINUTES)
        levels = item.get("levels", [lv.value for lv in Level])
        if not isinstance(levels, list) or not levels:
            raise ProtocolError(f"{where}.levels: expected a non-empty list")
        try:
            parsed = tuple(Level(lv) for lv in levels)
        except ValueError:
            raise ProtocolError(f"{where}.levels: each is clinician, oncall or admin") from None
        out[priority] = Escalation(item["step_minutes"], item["ack_minutes"], parsed)
    return out
