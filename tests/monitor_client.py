"""A real Socket.IO client of /monitor for tests: records everything the server sends."""

from __future__ import annotations

import contextlib
from typing import Any

import socketio

NAMESPACE = "/monitor"
CALL_TIMEOUT_SECS = 15


class MonitorClient:
    """Connects with a token (or a seeded person's name) and keeps events, states, board
    messages and errors in arrival order."""

    def __init__(self, world: Any, who: str) -> None:
        self.world = world
        self.token = world.tokens.get(who, who)
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self.board: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.sio.on("event", self.events.append, namespace=NAMESPACE)
        self.sio.on("state", self.states.append, namespace=NAMESPACE)
        self.sio.on("board", self.board.append, namespace=NAMESPACE)
        self.sio.on("error", self.errors.append, namespace=NAMESPACE)

    async def connect(self) -> MonitorClient:
        await self.sio.connect(
            self.world.url,
            namespaces=[NAMESPACE],
            auth={"token": self.token},
            transports=["websocket"],
        )
        return self

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()

    async def __aenter__(self) -> MonitorClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, event: str, data: Any) -> dict[str, Any]:
        """Emit and return the acknowledgement, whatever it says."""
        return await self.sio.call(event, data, namespace=NAMESPACE, timeout=CALL_TIMEOUT_SECS)

    async def ok(self, event: str, data: Any) -> dict[str, Any]:
        """Emit and return the acknowledgement, which must be a success."""
        reply = await self.call(event, data)
        assert reply["ok"], (event, reply)
        return reply

    async def follow(self, session_id: str) -> dict[str, Any]:
        """Follow a session from the start; the replayed events join ``events``."""
        reply = await self.ok("follow", {"session_id": session_id})
        self.events.extend(reply["events"])
        return reply

    def unique_events(self) -> list[dict[str, Any]]:
        """Events once each (replay and live may overlap), in (session, seq) order."""
        by_seq = {(e["session_id"], e["seq"]): e for e in self.events}
        return [by_seq[k] for k in sorted(by_seq)]
