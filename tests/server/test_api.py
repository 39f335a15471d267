"""The HTTP API on a real server: login, sessions, invites, actions, health and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import PASSWORD, World


async def _req(
    world: World,
    method: str,
    path: str,
    who: str | None = None,
    body: Any = None,
    raw: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {world.tokens[who]}"} if who else {}
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with http.request(method, world.url + path, **kwargs) as r:
            ctype = r.headers.get("Content-Type", "")
            return r.status, (await r.json()) if "json" in ctype else await r.text()


async def test_login(world: World) -> None:
    status, body = await _req(
        world, "POST", "/api/login", body={"username": "clin_a", "password": PASSWORD}
    )
    assert status == 200 and body["user"]["role"] == "clinician" and body["token"]
    world.tokens["fresh"] = body["token"]
    status, me = await _req(world, "GET", "/api/me", "fresh")
    assert status == 200 and me["subject"] == f"user:{world.users['clin_a']}"
    for creds in (
        {"username": "clin_a", "password": "nope"},
        {"username": "ghost", "password": "x"},
    ):
        status, body = await _req(world, "POST", "/api/login", body=creds)
        assert status == 401 and body["error"]["code"] == "bad_credentials"
    status, body = await _req(world, "POST", "/api/login", raw="{not json")
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await _req(world, "POST", "/api/login", body={"username": "clin_a"})
    assert status == 400 and "password" in body["error"]["message"]
    status, body = await _req(world, "GET", "/api/me")
    assert status == 401 and body["error"]["code"] == "auth_required"


async def test_session_lists_follow_the_rules(world: World) -> None:
    s1, s2 = world.sessions["s1"], world.sessions["s2"]
    ids = lambda body: {s["session_id"] for s in body["sessions"]}  # noqa: E731
    assert ids((await _req(world, "GET", "/api/sessions", "clin_a"))[1]) == {s1, s2}
    assert ids((await _req(world, "GET", "/api/sessions", "clin_b"))[1]) == set()
    assert ids((await _req(world, "GET", "/api/sessions", "oncall"))[1]) == {s1, s2}
    assert ids((await _req(world, "GET", "/api/sessions", "pat1"))[1]) == {s1}
    assert ids((await _req(world, "GET", "/api/sessions", "oncall_other"))[1]) == set()
    status, body = await _req(world, "GET", f"/api/sessions/{s2}", "pat1")
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await _req(world, "GET", f"/api/sessions/{s1}", "pat1")
    assert status == 200 and body["phase"] == "lobby" and body["patient"]["display_name"] == "Pat1"


async def test_actions_move_the_clock_and_are_refused_to_the_wrong_role(world: World) -> None:
    s1 = world.sessions["s1"]
    for who in ("pat1", "admin", "clin_b"):
        status, body = await _req(
            world, "POST", f"/api/sessions/{s1}/actions", who, {"action": "admit"}
        )
        assert status == 403 and body["error"]["code"] == "forbidden", who
    status, body = await _req(
        world, "POST", f"/api/sessions/{s1}/actions", "clin_a", {"action": "admit"}
    )
    assert status == 200 and body["state"]["phase"] == "pre_check"
    status, body = await _req(
        world, "POST", f"/api/sessions/{s1}/actions", "clin_a", {"action": "sign_off"}
    )
    assert status == 409 and body["error"]["code"] == "wrong_phase"
    status, body = await _req(
        world, "POST", f"/api/sessions/{s1}/actions", "clin_a", {"action": "explode"}
    )
    assert status == 400
    status, body = await _req(
        world, "POST", f"/api/sessions/{s1}/actions", "oncall", {"action": "end"}
    )
    assert status == 400 and body["error"]["code"] == "reason_required"
    status, body = await _req(
        world,
        "POST",
        f"/api/sessions/{s1}/actions",
        "oncall",
        {"action": "end", "reason": "no sitter"},
    )
    assert status == 200 and body["state"]["phase"] == "ended_early"
    status, body = await _req(world, "GET", f"/api/sessions/{s1}/events?after_seq=1", "clin_a")
    assert [e["type"] for e in body["events"]] == ["phase_changed", "phase_changed"]
    status, body = await _req(world, "GET", f"/api/sessions/{s1}/events?after_seq=x", "clin_a")
    assert status == 400


async def test_create_session_and_invite_links(world: World) -> None:
    status, body = await _req(
        world, "POST", "/api/sessions", "clin_a", {"patient_id": world.users["pat2"]}
    )
    assert status == 201
    sid = body["session_id"]
    status, body = await _req(
        world, "POST", "/api/sessions", "pat1", {"patient_id": world.users["pat1"]}
    )
    assert status == 403
    status, body = await _req(
        world, "POST", "/api/sessions", "clin_a", {"patient_id": world.users["clin_b"]}
    )
    assert status == 400 and body["error"]["code"] == "bad_patient"
    status, body = await _req(world, "POST", "/api/sessions", "clin_a", {"patient_id": "7"})
    assert status == 400
    status, invite = await _req(
        world,
        "POST",
        f"/api/sessions/{sid}/invites",
        "clin_a",
        {"role": "sitter", "name": "Sam Sitter", "phone": "555-0199", "ttl_hours": 3},
    )
    assert status == 201 and "/guest/#token=" in invite["url"]
    world.tokens["sitter"] = invite["token"]
    status, me = await _req(world, "GET", "/api/me", "sitter")
    assert me["role"] == "sitter" and me["session_id"] == sid
    status, body = await _req(world, "GET", "/api/sessions", "sitter")
    assert [s["session_id"] for s in body["sessions"]] == [sid]
    status, body = await _req(
        world, "POST", f"/api/sessions/{sid}/actions", "sitter", {"action": "admit"}
    )
    assert status == 403
    status, body = await _req(
        world, "POST", f"/api/sessions/{sid}/invites", "clin_a", {"role": "boss", "name": "X"}
    )
    assert status == 400 and body["error"]["code"] == "bad_role"


async def test_healthz_metrics_and_pages(world: World) -> None:
    status, body = await _req(world, "GET", "/healthz")
    assert status == 200 and body == {"status": "ok", "database": "ok"}
    await _req(
        world,
        "POST",
        f"/api/sessions/{world.sessions['s1']}/actions",
        "clin_a",
        {"action": "admit"},
    )
    status, text = await _req(world, "GET", "/metrics")
    assert status == 200
    assert "vigil_active_sessions 2.0" in text
    assert 'vigil_sessions{phase="pre_check"} 1.0' in text
    # Two session_created events from seeding, then the admit.
    assert "vigil_events_written_total 3.0" in text
    assert "vigil_relayed_tracks 0.0" in text
    for page in ("/", "/clinician/", "/patient/", "/guest/", "/static/common/vigil.js"):
        status, _ = await _req(world, "GET", page)
        assert status == 200, page


async def test_healthz_reports_an_unreachable_database(world: World, tmp_path: Path) -> None:
    from server.keys import ENGINE

    # The database file turns into something SQLite cannot open; pooled connections go.
    await world.app[ENGINE].dispose()
    db_file = tmp_path / "vigil.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    db_file.mkdir()
    status, body = await _req(world, "GET", "/healthz")
    assert status == 503 and body["database"] == "unreachable"
    # Back to a working database, so the server's own tasks stop cleanly.
    db_file.rmdir()
    status, body = await _req(world, "GET", "/healthz")
    assert status == 200


async def test_invites_can_be_revoked_and_api_errors_are_json(world: World) -> None:
    s1 = world.sessions["s1"]
    status, invite = await _req(
        world,
        "POST",
        f"/api/sessions/{s1}/invites",
        "clin_a",
        {"role": "guide", "name": "Gail Guide"},
    )
    world.tokens["guide"] = invite["token"]
    assert (await _req(world, "GET", "/api/me", "guide"))[0] == 200
    status, body = await _req(world, "DELETE", f"/api/invites/{invite['invite_id']}", "pat1")
    assert status == 403
    status, body = await _req(world, "DELETE", f"/api/invites/{invite['invite_id']}", "clin_a")
    assert status == 200 and body["revoked_at"]
    status, body = await _req(world, "GET", "/api/me", "guide")
    assert status == 401 and body["error"]["code"] == "invite_revoked"
    status, body = await _req(world, "DELETE", "/api/invites/nope", "clin_a")
    assert status == 404
    status, body = await _req(world, "GET", "/api/no/such/thing", "clin_a")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await _req(world, "PUT", "/api/login")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body = await _req(
        world,
        "POST",
        f"/api/sessions/{s1}/invites",
        "clin_a",
        {"role": "guide", "name": "G", "ttl_hours": 10**12},
    )
    assert status == 400 and body["error"]["code"] == "bad_ttl"
    status, body = await _req(world, "GET", "/api/config")
    assert status == 401
    status, body = await _req(world, "GET", "/api/config", "clin_a")
    assert status == 200 and body == {"ice_servers": [], "time_scale": 1.0}
