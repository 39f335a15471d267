"""Helpers shared by tests that drive a real server: waiting, HTTP, the clock, media peers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from signaling.client import SignalingClient


async def until(predicate: Any, timeout: float = 10, what: str = "condition") -> None:
    """Wait for a synchronous *predicate*; fail with *what* after *timeout* seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def http(
    world: Any, method: str, path: str, who: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """One HTTP call as *who* (a seeded person's name or a raw token); (status, JSON body)."""
    token = world.tokens.get(who, who) if who else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, world.url + path, headers=headers, json=body) as r,
    ):
        return r.status, await r.json()


async def act(world: Any, session_id: str, action: str, who: str = "clin_a") -> dict[str, Any]:
    """A clock action over HTTP that must succeed; returns the new state."""
    status, body = await http(
        world, "POST", f"/api/sessions/{session_id}/actions", who, {"action": action}
    )
    assert status == 200, body
    return dict(body["state"])


async def phase_of(world: Any, session_id: str) -> str:
    """The session's phase, as on-call sees it."""
    status, body = await http(world, "GET", f"/api/sessions/{session_id}", "oncall")
    assert status == 200, body
    return str(body["phase"])


async def wait_phase(world: Any, session_id: str, phase: str, timeout: float = 15) -> None:
    """Wait until the session reaches *phase*."""
    async with asyncio.timeout(timeout):
        while await phase_of(world, session_id) != phase:
            await asyncio.sleep(0.05)


class Watcher:
    """A viewer's decoding side: counts the video frames it receives."""

    def __init__(self) -> None:
        self.frames = 0
        self.tasks: list[asyncio.Future[None]] = []

    def on_track(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                if track.kind == "video":
                    self.frames += 1

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()


async def signaling(world: Any, who: str) -> SignalingClient:
    """A connected /signal client as *who* (a seeded person's name or a raw token)."""
    client = SignalingClient(world.url, world.tokens.get(who, who), reconnect=False)
    await client.connect()
    return client
