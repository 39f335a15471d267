"""The protocol as data: defaults from CLINICAL.md, validation with a clear error, a file CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import monitoring.protocol as protocol_module
from monitoring.protocol import Level, Priority, Protocol, ProtocolError

# The codes the server raises from vital signs; every catalogue needs them.
REQUIRED_FLAGS = [
    {"code": c, "label": c, "priority": "medium"} for c in protocol_module.REQUIRED_FLAGS
]


def test_defaults_follow_the_clinical_setting() -> None:
    p = Protocol()
    assert (p.dosing_minutes, p.active_minutes_from_dose, p.recovery_minutes) == (10, 60, 15)
    assert (p.checkin_every_minutes, p.checkin_grace_minutes) == (15, 2)
    assert p.vitals_at_minutes == (40,)
    assert (p.max_systolic, p.max_diastolic, p.max_heart_rate) == (160, 90, 100)
    assert p.flag("chest_pain").priority is Priority.HIGH  # type: ignore[union-attr]
    assert p.flag("confusion").priority is Priority.MEDIUM  # type: ignore[union-attr]
    assert p.flag("numbness").priority is Priority.LOW  # type: ignore[union-attr]
    assert p.escalation_for(Priority.HIGH).step_minutes == 2  # type: ignore[union-attr]
    assert p.escalation_for(Priority.MEDIUM).step_minutes == 5  # type: ignore[union-attr]
    assert p.escalation_for(Priority.LOW) is None and p.escalation_for(Priority.INFO) is None
    assert p.escalation[Priority.HIGH].levels == (Level.CLINICIAN, Level.ONCALL, Level.DIRECTOR)


def test_round_trip_and_partial_documents() -> None:
    p = Protocol.from_dict(
        {
            "recovery_minutes": 30,
            "flags": [
                {"code": "itch", "label": "Itching", "priority": "info"},
                *REQUIRED_FLAGS,
            ],
        }
    )
    assert p.recovery_minutes == 30 and p.dosing_minutes == 10
    assert Protocol.from_dict(p.as_dict()) == p
    assert Protocol.from_dict(json.loads(json.dumps(Protocol().as_dict()))) == Protocol()


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"dosing_minutes": "ten"}, "protocol.dosing_minutes"),
        ({"dosing_minutes": 0}, "protocol.dosing_minutes"),
        ({"dosing_minutes": 70}, "active_minutes_from_dose"),
        ({"coffee_minutes": 5}, "unknown field"),
        ({"max_systolic": 170, "severe_systolic": 160}, "systolic"),
        ({"flags": []}, "protocol.flags"),
        ({"flags": [{"code": "x y", "label": "X", "priority": "high"}]}, "flags[0].code"),
        ({"flags": [{"code": "x", "label": "X", "priority": "urgent"}]}, "flags[0].priority"),
        ({"flags": [{"code": "x", "label": "X", "priority": "low"}] * 2}, "unique"),
        ({"escalation": {"low": {"step_minutes": 1, "ack_minutes": 1}}}, "never page"),
        ({"escalation": {"high": {"step_minutes": 1}}}, "escalation.high"),
        (
            {"escalation": {"high": {"step_minutes": 1, "ack_minutes": 1, "levels": ["boss"]}}},
            "levels",
        ),
        ({"escalation": {"high": {"step_minutes": 1, "ack_minutes": 1}}}, "escalation.medium"),
        ({"missed_checkin_priority": "urgent"}, "missed_checkin_priority"),
        ({"vitals_at_minutes": 40}, "vitals_at_minutes"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_documents_name_the_field(doc: object, fragment: str) -> None:
    with pytest.raises(ProtocolError) as e:
        Protocol.from_dict(doc)  # type: ignore[arg-type]
    assert fragment in str(e.value)


def test_set_protocol_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from sqlalchemy import select

    from server.__main__ import main
    from server.db import make_engine, make_sessionmaker
    from server.models import Clinic

    monkeypatch.setenv("VIGIL_VAR_DIR", str(tmp_path))
    # The CLI installs its JSON log handler on the root logger; keep pytest's own instead.
    monkeypatch.setattr("server.__main__.configure_logging", lambda level: None)
    good = tmp_path / "protocol.json"
    good.write_text(json.dumps({"checkin_every_minutes": 10, "missed_checkin_priority": "high"}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"checkin_every_minutes": -1}))
    assert main(["set-protocol", "--clinic", "North", "--file", str(bad)]) == 1
    assert "protocol.checkin_every_minutes" in capsys.readouterr().err
    assert main(["set-protocol", "--clinic", "North", "--file", str(tmp_path / "none.json")]) == 1
    assert main(["set-protocol", "--clinic", "North", "--file", str(good)]) == 0

    async def stored() -> dict[str, object] | None:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'vigil.sqlite3'}")
        try:
            async with make_sessionmaker(engine)() as db:
                clinic = (
                    await db.execute(select(Clinic).where(Clinic.name == "North"))
                ).scalar_one()
                return clinic.protocol
        finally:
            await engine.dispose()

    proto = Protocol.from_dict(asyncio.run(stored()))
    assert proto.checkin_every_minutes == 10 and proto.missed_checkin_priority is Priority.HIGH


def test_a_catalogue_without_the_vital_sign_flags_is_refused() -> None:
    # Out-of-range readings raise these codes; without them a reading could not be stored.
    with pytest.raises(ProtocolError) as e:
        Protocol.from_dict({"flags": [{"code": "itch", "label": "Itching", "priority": "low"}]})
    assert "bp_above_threshold" in str(e.value)
