"""The four roles' pages end to end in real headless Chromium against ``vigil run --demo``.

- An admin adds a patient, schedules a session and copies the invite link; the patient opens it,
  passes the device check and the pre-check; the clinician admits from the roster and watches.
- The patient's browser goes offline and comes back: it says so, reconnects by itself, and the
  clinician's video resumes without the clinician doing anything.
- The emergency button: the on-call console shows the address, the sitter's phone and the
  emergency contact, and its Watch button jumps to the session's live video.
- A roster of 12 sessions: thumbnails, live video for the tile in focus.
- Every page passes axe-core's WCAG 2 A/AA rules with no serious or critical violation.

Screenshots of every page are saved under docs/screenshots/ (shown in the README).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from tests.e2e.kit import (
    BROWSER_PATIENT_SECS,
    REPO,
    Console,
    Demo,
    api,
    assert_advancing,
    fill_precheck,
    login,
    new_page,
    open_invite,
    probe,
    provision,
    publishing,
    report,
    screenshot_path,
    tile,
    wait_for_picture,
)

pytestmark = pytest.mark.browser

AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"
ROSTER_SESSIONS = 12


def shot(name: str) -> str:
    """Where a page's screenshot for the README goes."""
    return str(screenshot_path("docs", "screenshots", f"{name}.png"))


async def test_admin_schedules_the_patient_joins_and_the_clinician_admits_and_watches(
    demo: Demo, browser: Browser, console: Console
) -> None:
    # The admin: a new patient, a session with the demo clinician, the patient's link.
    _, admin = await new_page(browser, console, "admin")
    await admin.goto(demo.links["admin"])
    person = admin.locator("#add-person")
    await person.locator("[name=display_name]").fill("Robin Vale")
    await person.locator("[name=username]").fill("robin.vale")
    await person.locator("[name=role]").select_option("patient")
    assert await person.locator("[name=password]").is_hidden()  # patients come by link
    await person.locator("button[type=submit]").click()
    await admin.locator("#people tr[data-username='robin.vale']").wait_for(timeout=10_000)
    schedule = admin.locator("#schedule")
    await schedule.locator("[name=patient_id]").select_option(label="Robin Vale")
    await schedule.locator("[name=clinician_id]").select_option(label="Dr. Ada Demo")
    await schedule.locator("button[type=submit]").click()
    row = admin.locator("#sessions tbody tr", has_text="Robin Vale")
    await row.wait_for(timeout=10_000)
    assert await row.locator("select").evaluate("s => s.selectedOptions[0].textContent") == (
        "Dr. Ada Demo"
    )
    await row.get_by_role("button", name="Make a patient link for Robin Vale's session").click()
    await admin.locator("#link").wait_for(state="visible", timeout=10_000)
    link = await admin.locator("#link-url").input_value()
    assert "/patient/#token=" in link
    await admin.screenshot(path=shot("admin"), full_page=True)

    # The patient: device check, then the waiting room.
    patient = await open_invite(browser, console, link, "patient")
    await wait_for_picture(patient.locator("#preview"), 10)
    await patient.screenshot(path=shot("patient-device-check"))
    await publishing(patient)
    await patient.locator("#step-lobby").wait_for(state="visible", timeout=10_000)
    await patient.screenshot(path=shot("patient-lobby"))

    # The clinician admits from the roster; the patient fills in the pre-check.
    _, roster = await new_page(browser, console, "clinician")
    await roster.goto(demo.links["clinician"])
    robin = tile(roster, "Robin Vale")
    await robin.locator("[data-action=admit]:not([disabled])").click(timeout=10_000)
    await patient.locator("#precheck").wait_for(state="visible", timeout=10_000)
    await patient.screenshot(path=shot("patient-precheck"), full_page=True)
    await fill_precheck(patient)

    # The clinician's page plays the patient's video, then starts dosing.
    video = robin.locator("video")
    seen = await wait_for_picture(video, BROWSER_PATIENT_SECS)
    playing = await assert_advancing(video)
    assert seen["width"] > 0 and playing["frames"] > seen["frames"]
    await robin.locator("[data-action=start_dosing]:not([disabled])").click(timeout=10_000)
    await patient.locator("#phase", has_text="Dosing").wait_for(timeout=10_000)
    await patient.screenshot(path=shot("patient-dosing"))
    assert await _axe(patient) == []  # the session screen, not only the device check
    assert console.errors == [], console.errors


async def test_patient_goes_offline_and_back_and_the_video_resumes(
    demo: Demo, browser: Browser, console: Console, request: pytest.FixtureRequest
) -> None:
    sid, link = await asyncio.to_thread(provision, demo, "Casey Offline")
    doc = await asyncio.to_thread(login, demo, "dr.demo")
    await asyncio.to_thread(api, demo, f"/api/sessions/{sid}/actions", {"action": "admit"}, doc)
    patient = await open_invite(browser, console, link, "patient")
    await publishing(patient)
    _, roster = await new_page(browser, console, "clinician")
    await roster.goto(demo.links["clinician"])
    casey = tile(roster, "Casey Offline")
    video = casey.locator("video")
    await wait_for_picture(video, BROWSER_PATIENT_SECS)
    await assert_advancing(video)

    # The network goes: the page says it is reconnecting, the roster that the patient is gone.
    await patient.context.set_offline(True)
    await patient.locator("#banner", has_text="reconnecting").wait_for(timeout=10_000)
    await casey.locator(".presence", has_text="patient offline").wait_for(timeout=15_000)
    await patient.screenshot(path=shot("patient-reconnecting"))
    before = await probe(video)
    await asyncio.sleep(3)

    # It comes back: nobody touches either page.
    back = time.monotonic()
    await patient.context.set_offline(False)
    await patient.locator("#banner").wait_for(state="hidden", timeout=30_000)
    await casey.locator(".presence", has_text="patient online").wait_for(timeout=30_000)
    deadline = time.monotonic() + 30
    while (now := await probe(video))["frames"] <= before["frames"] + 10:
        assert time.monotonic() < deadline, f"the clinician's video did not resume: {now}"
        await asyncio.sleep(0.1)
    resumed = time.monotonic() - back
    await assert_advancing(video)
    report(request, f"video resumed {resumed:.1f} s after the patient's network came back")
    request.node.user_properties.append(("offline_resume_seconds", round(resumed, 2)))


async def test_emergency_details_and_live_video_on_the_oncall_console(
    demo: Demo, browser: Browser, console: Console
) -> None:
    sid, link = await asyncio.to_thread(provision, demo, "Dana Help")
    doc = await asyncio.to_thread(login, demo, "dr.demo")
    await asyncio.to_thread(api, demo, f"/api/sessions/{sid}/actions", {"action": "admit"}, doc)
    patient = await open_invite(browser, console, link, "patient")
    await publishing(patient)
    await fill_precheck(patient)
    await asyncio.to_thread(
        api, demo, f"/api/sessions/{sid}/actions", {"action": "start_dosing"}, doc
    )
    await patient.locator("#phase", has_text="Dosing").wait_for(timeout=10_000)
    _, nurse = await new_page(browser, console, "oncall")
    await nurse.goto(demo.links["oncall"])
    await nurse.locator("#board").wait_for(state="visible", timeout=10_000)

    await patient.locator("#emergency").click()
    await patient.locator("#emergency-confirm").wait_for(state="visible")
    await patient.screenshot(path=shot("patient-emergency-confirm"))
    await patient.locator("#emergency-yes").click()
    await patient.locator("#banner", has_text="Help is being called").wait_for(timeout=10_000)

    item = nurse.locator("#board-list li", has_text="Dana Help: emergency")
    await item.wait_for(timeout=10_000)
    detail = await item.locator(".detail").inner_text()
    for expected in ("7 Elm Road, Springfield", "+1 555 0142", "Morgan Lee", "+1 555 0177"):
        assert expected in detail, detail
    assert "high" in await item.locator(".chip").first.inner_text()
    await nurse.screenshot(path=shot("oncall-emergency"))
    # Watch: the session's tile takes the focus and plays the live video.
    await item.locator("[data-watch]").click()
    dana = tile(nurse, "Dana Help")
    await dana.locator(".focus-only").wait_for(state="visible", timeout=5_000)
    assert "focus" in (await dana.get_attribute("class") or "")
    await wait_for_picture(dana.locator("video"), BROWSER_PATIENT_SECS)
    await assert_advancing(dana.locator("video"))
    await nurse.screenshot(path=shot("oncall-watch"))
    # Acknowledged from the console: the paging stops, the alarm stays until resolved.
    await item.locator("[data-alarm-action=ack_alarm]").click()
    await item.filter(has_text="acknowledged").wait_for(timeout=10_000)


async def test_a_wall_of_twelve_sessions_shows_thumbnails_and_live_video_in_focus(
    demo: Demo, browser: Browser, console: Console
) -> None:
    doc = await asyncio.to_thread(login, demo, "dr.demo")
    have = len((await asyncio.to_thread(api, demo, "/api/sessions", None, doc))["sessions"])
    for n in range(ROSTER_SESSIONS - have):
        await asyncio.to_thread(provision, demo, f"Wall Patient {n + 1}")
    _, roster = await new_page(browser, console, "clinician")
    await roster.set_viewport_size({"width": 1600, "height": 1000})
    await roster.goto(demo.links["clinician"])
    tiles = roster.locator("[data-testid=session-tile]")
    await roster.wait_for_function(
        f"document.querySelectorAll('[data-testid=session-tile]').length >= {ROSTER_SESSIONS}",
        timeout=10_000,
    )
    assert await tiles.count() >= ROSTER_SESSIONS
    # Above six sessions every tile is a thumbnail; the simulated patients' pictures load.
    assert await roster.locator(".tile.thumb-mode").count() == await tiles.count()
    for name in ("Alex Rivera", "Sam Okafor"):
        img = tile(roster, name).locator("img.thumb")
        await roster.wait_for_function(
            "img => !img.hidden && img.naturalWidth > 0",
            arg=await img.element_handle(),
            timeout=15_000,
        )
    await roster.screenshot(path=shot("clinician-wall"))
    # Focus: live video with the focus view's actions; unfocus: back to a thumbnail.
    sam = tile(roster, "Sam Okafor")
    await sam.locator(".name").click()
    try:
        await wait_for_picture(sam.locator("video"), BROWSER_PATIENT_SECS)
    except AssertionError:
        print("tile media status:", await sam.get_attribute("data-media"))
        raise
    await assert_advancing(sam.locator("video"))
    assert await sam.locator("video").evaluate("v => v.muted") is False  # sound in focus
    await sam.locator(".vitals-form").wait_for(state="visible")
    await sam.locator(".flag-form select option").first.wait_for(state="attached")
    await roster.screenshot(path=shot("clinician-focus"))
    assert await _axe(roster) == []  # the focus view's forms
    await sam.locator(".name").press("Enter")
    await roster.wait_for_function(
        "el => el.classList.contains('thumb-mode')", arg=await sam.element_handle()
    )
    # A pinned tile stays live outside the focus.
    alex = tile(roster, "Alex Rivera")
    await alex.locator("[data-action=live]").click()
    await wait_for_picture(alex.locator("video"), BROWSER_PATIENT_SECS)
    assert await alex.locator("[data-action=live]").get_attribute("aria-pressed") == "true"
    # A session that ends leaves the wall by itself.
    ended = tile(roster, "Wall Patient 1")
    sid = await ended.get_attribute("data-session-id")
    await asyncio.to_thread(
        api, demo, f"/api/sessions/{sid}/actions", {"action": "end", "reason": "test"}, doc
    )
    await ended.wait_for(state="detached", timeout=15_000)


async def _axe(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical WCAG 2 A/AA violations on *page*."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        """async () => (await axe.run(document, {
            runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
        })).violations.filter((v) => ["serious", "critical"].includes(v.impact))
          .map((v) => ({ id: v.id, help: v.help,
                         nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }))"""
    )
    return list(result)


async def test_every_page_passes_axe_wcag_checks(
    demo: Demo, browser: Browser, console: Console
) -> None:
    assert AXE.exists(), f"{AXE} is missing: run `npm ci`"
    _, link = await asyncio.to_thread(provision, demo, "Avery Access")
    guide_sid, _ = await asyncio.to_thread(provision, demo, "Guided Patient")
    doc = await asyncio.to_thread(login, demo, "dr.demo")
    guide = await asyncio.to_thread(
        api, demo, f"/api/sessions/{guide_sid}/invites", {"role": "guide", "name": "Gil"}, doc
    )
    pages = {
        "login": (f"{demo.url}/", "#login"),
        "patient": (link, "#step-devices:not([hidden])"),
        "clinician": (demo.links["clinician"], "[data-testid=session-tile]"),
        "oncall": (demo.links["oncall"], "#board:not([hidden])"),
        "admin": (demo.links["admin"], "#people tbody tr"),
        "guest": (guide["url"], "#phase"),
    }
    found: dict[str, list[dict[str, Any]]] = {}
    for name, (url, ready) in pages.items():
        _, page = await new_page(browser, console, name)
        await page.goto(url)
        await page.locator(ready).first.wait_for(timeout=15_000)
        await asyncio.sleep(1)  # let the first snapshot render
        if name in ("login", "guest"):
            await page.screenshot(path=shot(name))
        violations = await _axe(page)
        if violations:
            found[name] = violations
        await page.context.close()
    assert found == {}, json.dumps(found, indent=1)
