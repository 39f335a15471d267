"""Running a clinic over HTTP: people, assignment, invites by admins, the clinic's protocol."""

from __future__ import annotations

from tests.conftest import PASSWORD, World
from tests.helpers import http


async def test_admins_create_list_and_disable_people(world: World) -> None:
    status, body = await http(
        world,
        "POST",
        "/api/users",
        "admin",
        {
            "username": "Nurse.Kim",
            "display_name": "Kim Park",
            "role": "oncall",
            "password": "x" * 12,
        },
    )
    assert status == 201, body
    assert body["username"] == "nurse.kim" and body["role"] == "oncall" and body["active"]
    assert "password_hash" not in body and body["has_password"]
    kim = body["id"]
    # A patient needs no password (they come in by invite link).
    status, body = await http(
        world,
        "POST",
        "/api/users",
        "admin",
        {"username": "pat3", "display_name": "Pat Three", "role": "patient"},
    )
    assert status == 201 and not body["has_password"]
    # Refusals name what is wrong.
    for payload, code in (
        (
            {"username": "nurse.kim", "display_name": "K", "role": "oncall", "password": "y" * 12},
            "username_taken",
        ),
        (
            {"username": "x", "display_name": "K", "role": "oncall", "password": "y" * 12},
            "bad_username",
        ),
        ({"username": "kk", "display_name": "K", "role": "boss", "password": "y" * 12}, "bad_role"),
        (
            {"username": "kk", "display_name": "K", "role": "clinician", "password": "short"},
            "weak_password",
        ),
        ({"username": "kk", "display_name": "K", "role": "clinician"}, "password_required"),
        ({"username": "kk", "display_name": "K", "role": "clinician", "extra": 1}, "bad_request"),
    ):
        status, body = await http(world, "POST", "/api/users", "admin", payload)
        assert status in (400, 409) and body["error"]["code"] == code, (payload, body)
    # Only admins create accounts.
    status, body = await http(
        world,
        "POST",
        "/api/users",
        "clin_a",
        {"username": "sneaky", "display_name": "S", "role": "admin", "password": "z" * 12},
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    # Admins list everyone of their clinic; clinicians see patients and clinicians; patients
    # and other clinics see nothing of it.
    status, body = await http(world, "GET", "/api/users", "admin")
    names = {u["username"] for u in body["users"]}
    assert {"nurse.kim", "pat3", "clin_a", "admin", "oncall"} <= names
    assert "oncall_other" not in names
    status, body = await http(world, "GET", "/api/users", "clin_a")
    assert {u["role"] for u in body["users"]} == {"patient", "clinician"}
    status, body = await http(world, "GET", "/api/users?role=patient", "admin")
    assert {u["role"] for u in body["users"]} == {"patient"}
    status, body = await http(world, "GET", "/api/users?role=boss", "admin")
    assert status == 400
    status, body = await http(world, "GET", "/api/users", "pat1")
    assert status == 403
    # Disabling an account: its holder is refused at the next request.
    status, body = await http(
        world, "POST", "/api/login", body={"username": "nurse.kim", "password": "x" * 12}
    )
    assert status == 200
    world.tokens["kim"] = body["token"]
    status, body = await http(world, "PATCH", f"/api/users/{kim}", "admin", {"active": False})
    assert status == 200 and body["active"] is False
    status, body = await http(world, "GET", "/api/me", "kim")
    assert status == 401 and body["error"]["code"] == "account_disabled"
    status, body = await http(
        world, "PATCH", f"/api/users/{world.users['admin']}", "admin", {"active": False}
    )
    assert status == 400  # not yourself
    status, body = await http(world, "PATCH", f"/api/users/{kim}", "admin", {"active": "no"})
    assert status == 400
    status, body = await http(world, "PATCH", f"/api/users/{kim}", "admin", {})
    assert status == 400
    status, body = await http(
        world, "PATCH", f"/api/users/{world.users['oncall_other']}", "admin", {"active": False}
    )
    assert status == 404  # another clinic's account does not exist for this admin
    # A new password works; the old one does not.
    status, body = await http(
        world, "PATCH", f"/api/users/{world.users['clin_b']}", "admin", {"password": "n" * 14}
    )
    assert status == 200
    status, _ = await http(
        world, "POST", "/api/login", body={"username": "clin_b", "password": PASSWORD}
    )
    assert status == 401
    status, _ = await http(
        world, "POST", "/api/login", body={"username": "clin_b", "password": "n" * 14}
    )
    assert status == 200


async def test_admins_schedule_assign_and_invite(world: World) -> None:
    clin_a, clin_b = world.users["clin_a"], world.users["clin_b"]
    status, body = await http(
        world,
        "POST",
        "/api/sessions",
        "admin",
        {
            "patient_id": world.users["pat2"],
            "clinician_id": clin_b,
            "scheduled_start": "2026-12-01T09:30:00+01:00",
        },
    )
    assert status == 201, body
    sid = body["session_id"]
    status, body = await http(world, "GET", "/api/sessions", "clin_b")
    assert [s["session_id"] for s in body["sessions"]] == [sid]
    # Reassigning moves the session from one clinician's list to the other's, on the record.
    status, body = await http(
        world, "PATCH", f"/api/sessions/{sid}", "admin", {"clinician_id": clin_a}
    )
    assert status == 200 and body["changed"] == {"clinician_id": clin_a}
    status, body = await http(world, "GET", "/api/sessions", "clin_b")
    assert body["sessions"] == []
    status, body = await http(world, "GET", f"/api/sessions/{sid}/events", "clin_a")
    assert body["events"][-1]["type"] == "session_updated"
    assert body["events"][-1]["data"] == {"clinician_id": clin_a}
    status, body = await http(
        world, "PATCH", f"/api/sessions/{sid}", "admin", {"scheduled_start": "tomorrow"}
    )
    assert status == 400
    status, body = await http(
        world, "PATCH", f"/api/sessions/{sid}", "admin", {"clinician_id": world.users["oncall"]}
    )
    assert status == 400 and body["error"]["code"] == "bad_clinician"
    status, body = await http(
        world, "PATCH", f"/api/sessions/{sid}", "admin", {"clinician_id": None}
    )
    assert status == 200 and body["changed"] == {"clinician_id": None}
    status, body = await http(
        world, "PATCH", f"/api/sessions/{sid}", "pat2", {"clinician_id": clin_b}
    )
    assert status == 403
    # Admins make invite links (without moving the clinical clock).
    status, invite = await http(
        world, "POST", f"/api/sessions/{sid}/invites", "admin", {"role": "patient", "name": "Pat2"}
    )
    assert status == 201 and "/patient/#token=" in invite["url"]
    status, body = await http(
        world, "POST", f"/api/sessions/{sid}/actions", "admin", {"action": "admit"}
    )
    assert status == 403


async def test_the_clinic_protocol_is_chosen_validated_and_snapshotted(world: World) -> None:
    status, body = await http(world, "GET", "/api/protocol", "clin_a")
    assert status == 200 and body["custom"] is False
    assert body["protocol"] == body["defaults"]
    status, body = await http(
        world, "PUT", "/api/protocol", "admin", {"protocol": {"checkin_every_minutes": "often"}}
    )
    assert status == 400 and body["error"]["code"] == "bad_protocol"
    assert "checkin_every_minutes" in body["error"]["message"]
    status, body = await http(world, "PUT", "/api/protocol", "clin_a", {"protocol": None})
    assert status == 403
    status, body = await http(
        world, "PUT", "/api/protocol", "admin", {"protocol": {"checkin_every_minutes": 10}}
    )
    assert status == 200 and body["custom"] and body["protocol"]["checkin_every_minutes"] == 10
    # New sessions snapshot it.
    status, body = await http(
        world, "POST", "/api/sessions", "admin", {"patient_id": world.users["pat1"]}
    )
    status, session = await http(world, "GET", f"/api/sessions/{body['session_id']}", "oncall")
    assert session["protocol"]["checkin_every_minutes"] == 10
    status, body = await http(world, "PUT", "/api/protocol", "admin", {"protocol": None})
    assert status == 200 and body["custom"] is False
    status, body = await http(world, "GET", "/api/protocol", "admin")
    assert body["protocol"]["checkin_every_minutes"] == body["defaults"]["checkin_every_minutes"]
    status, body = await http(world, "GET", "/api/protocol", "pat1")
    assert status == 403
