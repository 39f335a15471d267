"""End to end in real headless Chromium against ``vigil run --demo`` started as a subprocess.

The acceptance criterion of the demo: run it, open the printed clinician link, and a simulated
patient's live video shows within 10 seconds. Then a browser patient (Chromium's fake camera,
through the printed ``patient_invite`` link) publishes to a browser clinician, and the
clinician's video keeps playing when the patient's page reloads (a new peer connection, as
after a network drop) without the clinician's page doing anything. Last, vigil.js alone against
a fake /signal: two overlapping negotiations (peer_failed racing the browser's own "failed").

The measured times (first video, resumption) are written to the terminal and recorded as
properties (``--junitxml``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Locator, Page, async_playwright

from tests.conftest import need

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream=fps=30",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # For loopback-only hosts, where .ci/run gives lo a second address (aiortc skips 127.0.0.1).
    "--allow-loopback-in-peer-connection",
]
# The acceptance criterion: the clinician link shows live video within 10 seconds.
FIRST_VIDEO_SECS = 10.0
# A browser patient: camera permission, ICE, the relay's decode and re-encode.
BROWSER_PATIENT_SECS = 20.0
SERVER_START_SECS = 30.0
SERVER_STOP_SECS = 10.0
JORDAN = "Jordan Lee"  # the third demo patient: not simulated, left for the invite link
LINK_LINE = re.compile(r"^\s+(clinician|oncall|admin|patient_invite|login)\s+(\S+)")

# What a <video> shows right now; frames = decoded frames (currentTime alone can advance on a
# live stream whose frames stopped coming).
PROBE_JS = """(v) => ({
  width: v.videoWidth, height: v.videoHeight, time: v.currentTime, ready: v.readyState,
  paused: v.paused, frames: v.getVideoPlaybackQuality().totalVideoFrames,
})"""
ALL_TILES_JS = f"""() => [...document.querySelectorAll("[data-testid=session-tile]")].map((el) => ({{
  name: el.querySelector(".name").textContent,
  phase: el.querySelector(".phase").textContent,
  media: el.dataset.media || null,
  ...({PROBE_JS})(el.querySelector("video")),
}}))"""


# -- the server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Demo:
    """A running ``vigil run --demo`` and the links it printed."""

    url: str
    links: dict[str, str]
    log: Path
    stdout: list[str] = field(default_factory=list)

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's JSON log (stderr), for failure reports."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log: {exc})"


def _wait_healthy(url: str, deadline: float) -> None:
    # The links are printed from an on_startup hook, a moment before the port listens.
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}/healthz never answered 200")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[str]) -> tuple[int, float, bool]:
    """SIGTERM, then SIGKILL after SERVER_STOP_SECS; (exit status, seconds, needed the kill)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SERVER_STOP_SECS)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        killed = True
    return proc.returncode, time.monotonic() - started, killed


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Demo]:
    """``python -m server run --demo`` on a free port, 3 demo patients, time ×60.

    One server for the module: starting takes ~3 s and stopping, today, ~10 s (see _stop).
    """
    # Checked here too so a missing browser skips before a server starts for nothing.
    need(CHROMIUM.exists(), f"{CHROMIUM} is not installed (apt-get install chromium)")
    var_dir = tmp_path_factory.mktemp("vigil-demo")
    port = _free_port()
    env = {
        **os.environ,
        "VIGIL_PORT": str(port),
        "VIGIL_HOST": "127.0.0.1",
        "VIGIL_VAR_DIR": str(var_dir),
        "VIGIL_DEMO_PATIENTS": "3",
        "VIGIL_TIME_SCALE": "60",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("VIGIL_PUBLIC_URL", "VIGIL_DATABASE_URL", "VIGIL_REDIS_URL", "VIGIL_DEMO"):
        env.pop(name, None)
    log = var_dir / "server.log"
    stderr = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "run", "--demo"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    out: list[str] = []
    links: dict[str, str] = {}
    announced = threading.Event()

    def read_stdout() -> None:
        # Keeps draining stdout for the server's whole life so it can never block on a pipe.
        assert proc.stdout is not None
        in_links = False
        for line in proc.stdout:
            out.append(line.rstrip("\n"))
            if line.startswith("Demo links"):
                in_links = True
            elif in_links and (m := LINK_LINE.match(line)):
                links[m.group(1)] = m.group(2)
            elif in_links and not line.strip() and "clinician" in links:
                announced.set()  # the blank line that ends the block
        announced.set()  # EOF: the server died; the check below reports it

    reader = threading.Thread(target=read_stdout, name="vigil-demo-stdout", daemon=True)
    reader.start()
    demo = Demo(f"http://127.0.0.1:{port}", links, log, out)
    try:
        deadline = time.monotonic() + SERVER_START_SECS
        if not announced.wait(SERVER_START_SECS) or "clinician" not in links:
            raise AssertionError(
                f"no clinician link printed (exit status {proc.poll()}):\n"
                + "\n".join(out)
                + "\n--- server log ---\n"
                + demo.log_tail()
            )
        assert links["clinician"].startswith(f"{demo.url}/clinician/#token="), links
        _wait_healthy(demo.url, deadline)
        yield demo
    finally:
        status, secs, killed = _stop(proc)
        reader.join(timeout=5)
        stderr.close()
        how = (
            f"killed after SIGTERM was ignored for {SERVER_STOP_SECS:.0f} s"
            if killed
            else "SIGTERM"
        )
        _report(request, f"vigil server stopped ({how}): exit status {status} after {secs:.1f} s")
        if killed or status != 0:
            # Known server-side shutdown problems (reported, not ours to fix here); the log
            # shows which one this was.
            _report(request, "server log (tail) at shutdown:\n" + demo.log_tail(15))
        assert proc.returncode is not None, "the server did not exit"


# -- the browser --------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium with a fake camera and microphone, permission granted."""
    need(CHROMIUM.exists(), f"{CHROMIUM} is not installed (apt-get install chromium)")
    async with async_playwright() as pw:
        # launch() gives each browser a fresh temporary user data directory.
        b = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield b
        finally:
            await b.close()


@dataclass
class Console:
    """Everything a page said: console messages and uncaught errors."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page, label: str) -> Page:
        page.on("console", lambda m: self.lines.append(f"[{label}] {m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"[{label}] {e}"))
        return page

    def dump(self) -> str:
        return "\n".join(self.lines + self.errors) or "(nothing)"


@pytest.fixture
def console(demo: Demo) -> Iterator[Console]:
    """Page console output; printed with the server's log when a test fails."""
    c = Console()
    yield c
    # Shown by pytest only for a failing test.
    print("--- browser console ---\n" + c.dump())
    print("--- server log (tail) ---\n" + demo.log_tail())


async def _new_page(browser: Browser, console: Console, label: str) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = console.watch(await context.new_page(), label)
    return context, page


# -- watching video -----------------------------------------------------------------------


async def _probe(video: Locator) -> dict[str, Any]:
    return dict(await video.evaluate(PROBE_JS))


async def _wait_for_picture(video: Locator, timeout: float) -> dict[str, Any]:
    """Poll until *video* has a decoded picture (videoWidth > 0); return the probe."""
    deadline = time.monotonic() + timeout
    while True:
        p = await _probe(video)
        if p["width"] > 0 and p["ready"] >= 2:
            return p
        if time.monotonic() > deadline:
            raise AssertionError(f"no picture within {timeout:.0f} s: {p}")
        await asyncio.sleep(0.05)


async def _assert_advancing(video: Locator, timeout: float = 5.0) -> dict[str, Any]:
    """*video* is playing: over ~1 s, both currentTime and the decoded frame count increase."""
    deadline = time.monotonic() + timeout
    first = await _probe(video)
    while True:
        await asyncio.sleep(1.0)
        now = await _probe(video)
        if now["width"] > 0 and now["time"] > first["time"] and now["frames"] > first["frames"]:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"video is not advancing: {first} → {now}")
        first = now


def _tile(page: Page, name: str) -> Locator:
    return page.locator("[data-testid=session-tile]").filter(
        has=page.locator(".name", has_text=name)
    )


def _report(request: pytest.FixtureRequest, message: str) -> None:
    """Write *message* to the terminal even under output capture (and to captured stdout)."""
    print(message)
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(message)


def _screenshot_path(*parts: str) -> Path:
    path = REPO.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


async def _patient_publishing(browser: Browser, console: Console, demo: Demo) -> Page:
    """The invite link in its own context (fake camera); returns once the page is connected."""
    assert "patient_invite" in demo.links, demo.stdout
    _, page = await _new_page(browser, console, "patient")
    await page.goto(demo.links["patient_invite"])
    # The device check: camera preview, microphone meter, connection; then continue.
    await page.locator("#check-camera.pass").wait_for(timeout=10_000)
    await page.locator("#check-network.pass").wait_for(timeout=10_000)
    await page.locator("#devices-ok").click()
    await page.wait_for_function(
        "document.body.dataset.media === 'connected'", timeout=BROWSER_PATIENT_SECS * 1000
    )
    await _wait_for_picture(page.locator("#self"), 5)
    return page


# -- the tests ----------------------------------------------------------------------------


async def test_clinician_link_shows_live_video(
    demo: Demo,
    browser: Browser,
    console: Console,
    request: pytest.FixtureRequest,
    record_property: Any,
) -> None:
    _, page = await _new_page(browser, console, "clinician")
    started = time.monotonic()
    await page.goto(demo.links["clinician"])
    deadline = started + FIRST_VIDEO_SECS
    playing: dict[str, Any] | None = None
    tiles: list[dict[str, Any]] = []
    while playing is None:
        tiles = await page.evaluate(ALL_TILES_JS)
        playing = next((t for t in tiles if t["width"] > 0 and t["ready"] >= 2), None)
        if playing is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no live video within {FIRST_VIDEO_SECS:.0f} s: {tiles}")
            await asyncio.sleep(0.05)
    first_video = time.monotonic() - started
    record_property("time_to_first_video_s", round(first_video, 3))
    _report(
        request,
        f"time to first video (clinician link → {playing['name']}, "
        f"{playing['width']}x{playing['height']}): {first_video:.2f} s",
    )

    # Three tiles, in the demo's order; the live one advances (a real stream, not a still).
    assert [t["name"] for t in tiles] == ["Alex Rivera", "Sam Okafor", JORDAN]
    video = _tile(page, playing["name"]).locator("video")
    await _assert_advancing(video)

    # The phase badges: the first demo patient is dosing (dissolved after 10 protocol minutes
    # = 10 s at ×60, so it may already be active), the second in pre-check, the third waiting.
    badges = {t["name"]: t["phase"] for t in await page.evaluate(ALL_TILES_JS)}
    assert badges["Alex Rivera"] in ("Dosing", "Active"), badges
    assert badges["Sam Okafor"] == "Pre-check", badges
    assert badges[JORDAN] == "Lobby", badges
    alex = _tile(page, "Alex Rivera")
    assert await alex.get_attribute("data-phase") in ("dosing", "active")
    await page.wait_for_function(
        "[...document.querySelectorAll('.presence')].filter(e => e.textContent === 'patient online').length >= 1",
        timeout=5000,
    )

    # Both simulated patients show video (best effort before the screenshot, then asserted).
    with contextlib.suppress(AssertionError):
        await _wait_for_picture(_tile(page, "Alex Rivera").locator("video"), 3)
        await _wait_for_picture(_tile(page, "Sam Okafor").locator("video"), 3)
    tiles = await page.evaluate(ALL_TILES_JS)
    live = [t["name"] for t in tiles if t["width"] > 0]
    _report(request, f"tiles with video: {live}")
    await page.screenshot(path=_screenshot_path("var", "screenshots", "clinician.png"))
    await page.screenshot(path=_screenshot_path("docs", "screenshots", "clinician-roster.png"))
    assert {"Alex Rivera", "Sam Okafor"} <= set(live), tiles

    # Nothing was clicked and nothing broke: no uncaught error, no error shown.
    assert console.errors == [], console.errors
    assert await page.locator("#error").text_content() == ""


async def test_browser_patient_publishes_to_browser_clinician(
    demo: Demo,
    browser: Browser,
    console: Console,
    request: pytest.FixtureRequest,
    record_property: Any,
) -> None:
    patient = await _patient_publishing(browser, console, demo)
    assert await patient.locator("#who").text_content() == JORDAN
    # Connected: no "reconnecting" banner; Jordan is still in the waiting room.
    assert await patient.locator("#banner").is_hidden()
    assert await patient.locator("#step-lobby").is_visible()

    _, clinician = await _new_page(browser, console, "clinician")
    started = time.monotonic()
    await clinician.goto(demo.links["clinician"])
    video = _tile(clinician, JORDAN).locator("video")
    seen = await _wait_for_picture(video, BROWSER_PATIENT_SECS)
    elapsed = time.monotonic() - started
    record_property("browser_patient_first_video_s", round(elapsed, 3))
    _report(
        request,
        f"browser patient → browser clinician: first video after {elapsed:.2f} s "
        f"({seen['width']}x{seen['height']})",
    )
    await _assert_advancing(video)
    tile = _tile(clinician, JORDAN)
    await tile.locator(".presence", has_text="patient online").wait_for(timeout=5000)
    # Only the browser patient publishes to Jordan's session, so this is the fake camera's
    # picture (its size varies: Chromium scales it down under CPU load).
    await patient.screenshot(path=_screenshot_path("docs", "screenshots", "patient.png"))
    assert console.errors == [], console.errors


async def test_patient_page_recovers_after_reload(
    demo: Demo,
    browser: Browser,
    console: Console,
    request: pytest.FixtureRequest,
    record_property: Any,
) -> None:
    patient = await _patient_publishing(browser, console, demo)
    _, clinician = await _new_page(browser, console, "clinician")
    await clinician.goto(demo.links["clinician"])
    video = _tile(clinician, JORDAN).locator("video")
    await _wait_for_picture(video, BROWSER_PATIENT_SECS)
    await _assert_advancing(video)
    await clinician.evaluate("window.__notReloaded = true")

    # A new peer connection from the patient (what a dropped network ends in).
    dropped = time.monotonic()
    await patient.reload()
    await patient.wait_for_function(
        "document.body.dataset.media === 'connected'", timeout=BROWSER_PATIENT_SECS * 1000
    )
    before = await _probe(video)
    deadline = time.monotonic() + BROWSER_PATIENT_SECS
    while True:
        now = await _probe(video)
        # Frames decoded after the new connection came up: the new source reaches the viewer.
        if now["frames"] >= before["frames"] + 10 and now["time"] > before["time"]:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the clinician's video did not resume: {before} → {now}")
        await asyncio.sleep(0.1)
    resumed = time.monotonic() - dropped
    record_property("resume_after_reload_s", round(resumed, 3))
    _report(request, f"clinician's video resumed {resumed:.2f} s after the patient's reload")
    await _assert_advancing(video)
    assert await clinician.evaluate("window.__notReloaded === true")
    assert await clinician.locator("#error").text_content() == ""
    assert console.errors == [], console.errors


# A fake /signal for vigil.js's media(): answers with real RTCPeerConnections in the page, and
# while the first offer is being answered the server reports peer_failed (as it does when ICE
# fails, at the same moment as the browser's own "failed" — two negotiations overlap).
OVERLAP_JS = r"""async () => {
  const canvas = Object.assign(document.createElement("canvas"), { width: 64, height: 48 });
  const g = canvas.getContext("2d");
  setInterval(() => { g.fillStyle = `hsl(${Date.now() % 360},60%,50%)`; g.fillRect(0, 0, 64, 48); }, 33);
  const camera = canvas.captureStream(30);
  const handlers = {};
  const statuses = [];
  let offers = 0;
  let answerer = null;
  async function serve(event, data) {
    if (event === "join") return { ok: true, ice_servers: [] };
    const n = ++offers;
    if (n === 1) setTimeout(() => handlers.peer_failed.forEach((f) => f({ session_id: "s" })), 0);
    const pc = new RTCPeerConnection();
    camera.getTracks().forEach((t) => pc.addTrack(t, camera));
    await pc.setRemoteDescription({ type: "offer", sdp: data.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await new Promise((r) => setTimeout(r, n === 1 ? 1000 : 0)); // the first answer is slow
    if (n === 1) return { ok: true, type: "answer", sdp: pc.localDescription.sdp };
    if (answerer) answerer.close();
    answerer = pc;
    return { ok: true, type: "answer", sdp: pc.localDescription.sdp };
  }
  const sock = {
    connected: true,
    on(event, fn) { (handlers[event] ||= []).push(fn); },
    timeout() { return sock; },
    emit(event, data, ack) { serve(event, data).then((r) => ack(null, r)); },
  };
  const media = Vigil.media(sock, "s", "viewer", { onStatus: (s) => statuses.push(s) });
  await new Promise((r) => setTimeout(r, 2500));
  return { statuses, offers, state: media.pc.connectionState };
}"""


async def test_vigil_js_superseded_negotiation_leaves_the_new_connection_alone(
    browser: Browser,
) -> None:
    page = await browser.new_page()
    await page.goto("about:blank")
    await page.add_script_tag(path=REPO / "static" / "common" / "vigil.js")
    result = await page.evaluate(OVERLAP_JS)
    assert result["offers"] == 2, result
    # The first negotiation's late answer is not applied to the second's connection (which
    # failed with "Called in wrong state: stable" and renegotiated a working connection).
    assert not [s for s in result["statuses"] if s.startswith("error")], result
    assert result["statuses"].count("negotiated") == 1, result
    assert result["state"] == "connected", result


async def test_phase_changes_reach_the_open_pages_without_a_reload(
    demo: Demo, browser: Browser, console: Console
) -> None:
    """A clinician admits Jordan on the roster; the on-call nurse starts Sam's dosing over the
    API. Both pages already open follow along from the server's pushes."""
    import json

    patient = await _patient_publishing(browser, console, demo)
    _, roster = await _new_page(browser, console, "clinician")
    await roster.goto(demo.links["clinician"])
    jordan, sam = _tile(roster, JORDAN), _tile(roster, "Sam Okafor")
    await jordan.locator(".phase", has_text="Lobby").wait_for(timeout=10_000)
    await sam.locator(".phase", has_text="Pre-check").wait_for(timeout=10_000)

    await jordan.locator("[data-action=admit]").click()
    await jordan.locator(".phase", has_text="Pre-check").wait_for(timeout=5_000)
    # Admitted: the patient's page turns to the pre-check form by itself.
    await patient.locator("#step-precheck").wait_for(state="visible", timeout=5_000)

    def api(path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            demo.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {token}"} if token else {}),
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return dict(json.loads(r.read()))

    from server.demo import DEMO_PASSWORD

    nurse = await asyncio.to_thread(
        api, "/api/login", {"username": "nurse.demo", "password": DEMO_PASSWORD}
    )
    session_id = await sam.get_attribute("data-session-id")
    await asyncio.to_thread(
        api, f"/api/sessions/{session_id}/actions", {"action": "start_dosing"}, nurse["token"]
    )
    await sam.locator(".phase", has_text="Dosing").wait_for(timeout=5_000)
    # The clock starts for Sam: minutes since the dose count up on the roster.
    await roster.wait_for_function(
        "el => el.textContent.trim() !== '—'",
        arg=await sam.locator(".clock").element_handle(),
        timeout=5_000,
    )


def _api(
    demo: Demo, path: str, body: dict[str, Any] | None = None, token: str | None = None
) -> Any:
    import json

    req = urllib.request.Request(
        demo.url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def test_patient_precheck_checkin_and_emergency_in_the_browser(
    demo: Demo, browser: Browser, console: Console
) -> None:
    """Jordan, in a real browser: pre-check form → the clinician starts dosing → the 15-minute
    check-in prompt (15 s at this demo's ×60) → "I'm OK" → the emergency button, which reaches
    the on-call board with the address typed into the form."""
    from server.demo import DEMO_PASSWORD

    login = lambda who: _api(demo, "/api/login", {"username": who, "password": DEMO_PASSWORD})  # noqa: E731
    doc = (await asyncio.to_thread(login, "dr.demo"))["token"]
    nurse = (await asyncio.to_thread(login, "nurse.demo"))["token"]
    sessions = (await asyncio.to_thread(_api, demo, "/api/sessions", None, doc))["sessions"]
    jordan = next(s for s in sessions if s["patient"]["display_name"] == JORDAN)
    sid = jordan["session_id"]
    if jordan["phase"] == "lobby":  # when run on its own
        await asyncio.to_thread(
            _api, demo, f"/api/sessions/{sid}/actions", {"action": "admit"}, doc
        )

    patient = await _patient_publishing(browser, console, demo)
    form = patient.locator("#precheck")
    await form.wait_for(state="visible", timeout=10_000)
    for name, value in {
        "sitter_name": "Riley Lee",
        "sitter_phone": "+1 555 0142",
        "address": "7 Elm Road, Springfield",
        "medication_changes": "none",
        "systolic": "124",
        "diastolic": "79",
        "heart_rate": "70",
        "emergency_contact_name": "Morgan Lee",
        "emergency_contact_phone": "+1 555 0177",
    }.items():
        await form.locator(f"[name={name}]").fill(value)
    for box in ("sitter_is_adult", "address_confirmed", "fasting"):
        await form.locator(f"[name={box}]").check()
    await form.locator("button[type=submit]").click()
    await patient.locator("#precheck-status", has_text="Thank you").wait_for(timeout=10_000)

    # The checklist and the reading pass: the clinician can start dosing without an override.
    state = await asyncio.to_thread(
        _api, demo, f"/api/sessions/{sid}/actions", {"action": "start_dosing"}, doc
    )
    assert state["state"]["phase"] == "dosing"
    await patient.locator("#phase", has_text="Dosing").wait_for(timeout=10_000)
    await patient.locator("#checkin").wait_for(state="visible", timeout=30_000)
    await patient.locator("#im-ok").click()
    await patient.locator("#checkin").wait_for(state="hidden", timeout=10_000)
    events = (await asyncio.to_thread(_api, demo, f"/api/sessions/{sid}/events", None, doc))[
        "events"
    ]
    answered = [e for e in events if e["type"] == "checkin_answered"]
    assert answered and answered[-1]["data"]["ok"] is True

    await patient.screenshot(
        path=str(_screenshot_path("docs", "screenshots", "patient-session.png"))
    )
    await patient.locator("#emergency").click()
    await patient.locator("#emergency-yes").click()
    await patient.locator("#banner", has_text="Help is being called").wait_for(timeout=10_000)
    board = (await asyncio.to_thread(_api, demo, "/api/alarms", None, nurse))["alarms"]
    emergency = next(a for a in board if a["kind"] == "emergency" and a["session_id"] == sid)
    assert (
        emergency["priority"] == "high"
        and emergency["detail"]["address"] == "7 Elm Road, Springfield"
    )
    assert emergency["detail"]["sitter_phone"] == "+1 555 0142"


async def test_a_flag_reaches_the_tile_then_the_oncall_board_which_answers_it(
    demo: Demo, browser: Browser, console: Console
) -> None:
    """Sam reports confusion: the clinician's tile shows the medium flag and its alarm; the
    on-call console's board lists it; on-call acknowledges, then resolves it, in the page."""
    import uuid

    from server.demo import DEMO_PASSWORD

    login = lambda who: _api(demo, "/api/login", {"username": who, "password": DEMO_PASSWORD})  # noqa: E731
    sam_token = (await asyncio.to_thread(login, "patient2.demo"))["token"]
    _, roster = await _new_page(browser, console, "clinician")
    await roster.goto(demo.links["clinician"])
    sam = _tile(roster, "Sam Okafor")
    await sam.locator(".phase").wait_for(timeout=10_000)
    _, console_page = await _new_page(browser, console, "oncall")
    await console_page.goto(demo.links["oncall"])
    await console_page.locator("#board").wait_for(state="visible", timeout=10_000)

    # The patient reports through /monitor, as the patient's page does.
    import socketio

    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        demo.url,
        namespaces=["/monitor"],
        auth={"token": sam_token},
        transports=["websocket"],
        # A busy demo (three relays, two browsers) may take more than the default second.
        wait_timeout=10,
    )
    try:
        sid = await sam.get_attribute("data-session-id")
        reply = await client.call(
            "raise_flag",
            {"session_id": sid, "code": "confusion", "client_id": uuid.uuid4().hex},
            namespace="/monitor",
        )
        assert reply["ok"], reply
    finally:
        await client.disconnect()

    await sam.locator(".flags .chip.medium", has_text="confusion").wait_for(timeout=10_000)
    await sam.locator(".alarms li", has_text="flag").wait_for(timeout=10_000)
    assert "urgent-medium" in (await sam.get_attribute("class") or "")
    item = console_page.locator("#board-list li", has_text="Sam Okafor: flag")
    await item.wait_for(timeout=10_000)
    await console_page.screenshot(
        path=str(_screenshot_path("docs", "screenshots", "oncall-board.png"))
    )
    await item.locator("[data-alarm-action=ack_alarm]").click()
    await item.filter(has_text="acknowledged").wait_for(timeout=10_000)
    await item.locator("[data-alarm-action=resolve_alarm]").click()
    await item.wait_for(state="detached", timeout=10_000)
    # The clinician's tile follows: the flag's alarm is gone from Sam's tile.
    await sam.locator(".alarms li", has_text="flag").wait_for(state="detached", timeout=10_000)
    await roster.screenshot(
        path=str(_screenshot_path("docs", "screenshots", "clinician-roster.png"))
    )
