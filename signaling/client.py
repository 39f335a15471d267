"""A Python client of the ``/signal`` protocol: simulated patients, tests and benchmarks.

It does what docs/protocol.md asks of any client: connect with a token, ``join``, send a
complete offer (ICE gathered first, no trickle), apply the answer, and after a network drop
reconnect, join again and send a new offer on a new peer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import socketio
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from signaling.peer import make_peer_connection

log = logging.getLogger(__name__)

NAMESPACE = "/signal"


class SignalingFailed(Exception):
    """The server refused a request; carries its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SignalingClient:
    """One Socket.IO connection to ``/signal`` and the peer connections it negotiates."""

    def __init__(self, url: str, token: str, *, reconnect: bool = True) -> None:
        self.url = url
        self.token = token
        self.sio = socketio.AsyncClient(reconnection=reconnect, reconnection_delay=0.5)
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.errors: list[dict[str, Any]] = []
        self.events: list[tuple[str, Any]] = []
        self.on_reconnect: Callable[[], Any] | None = None
        self._connected_once = False
        self._tasks: set[asyncio.Future[Any]] = set()

        @self.sio.on("error", namespace=NAMESPACE)
        async def _error(data: Any) -> None:
            self.errors.append(data)

        @self.sio.on("presence", namespace=NAMESPACE)
        async def _presence(data: Any) -> None:
            self.events.append(("presence", data))

        @self.sio.on("connect", namespace=NAMESPACE)
        async def _connect() -> None:
            if self._connected_once and self.on_reconnect is not None:
                # Socket.IO reconnected by itself: re-join and re-offer (docs/protocol.md).
                task = asyncio.ensure_future(self.on_reconnect())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._connected_once = True

    async def connect(self) -> None:
        """Connect with the token in the ``auth`` payload; raises on refusal."""
        await self.sio.connect(
            self.url,
            namespaces=[NAMESPACE],
            auth={"token": self.token},
            transports=["websocket"],
            wait_timeout=10,
        )

    async def call(self, event: str, data: Any, wait_secs: float = 30.0) -> dict[str, Any]:
        """Emit *event* and wait for its acknowledgement; raise :class:`SignalingFailed`."""
        reply = await self.sio.call(event, data, namespace=NAMESPACE, timeout=wait_secs)
        if not isinstance(reply, dict) or not reply.get("ok"):
            err = (reply or {}).get("error", {}) if isinstance(reply, dict) else {}
            raise SignalingFailed(err.get("code", "unknown"), err.get("message", repr(reply)))
        return reply

    async def join(self, session_id: str, as_: str) -> dict[str, Any]:
        """Join *session_id* as ``publisher`` or ``viewer``."""
        return await self.call("join", {"session_id": session_id, "as": as_})

    async def _negotiate(self, session_id: str, pc: RTCPeerConnection) -> None:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self.call(
            "offer", {"session_id": session_id, "type": "offer", "sdp": pc.localDescription.sdp}
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def publish(self, session_id: str, tracks: list[MediaStreamTrack]) -> RTCPeerConnection:
        """Send *tracks* on a new peer connection (replacing any previous one)."""
        joined = await self.join(session_id, "publisher")
        old = self.pcs.pop(session_id, None)
        if old is not None:
            # Close first: two peer connections reading one track would split its frames.
            await old.close()
        pc = make_peer_connection(joined["ice_servers"])
        for track in tracks:
            pc.addTrack(track)
        self.pcs[session_id] = pc
        await self._negotiate(session_id, pc)
        return pc

    async def view(
        self, session_id: str, on_track: Callable[[MediaStreamTrack], Any]
    ) -> RTCPeerConnection:
        """Receive the session's audio and video on a new peer connection."""
        joined = await self.join(session_id, "viewer")
        old = self.pcs.pop(session_id, None)
        pc = make_peer_connection(joined["ice_servers"])
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        pc.on("track", on_track)
        self.pcs[session_id] = pc
        await self._negotiate(session_id, pc)
        if old is not None:
            await old.close()
        return pc

    async def close(self) -> None:
        """Close peer connections and the socket."""
        for pc in self.pcs.values():
            await pc.close()
        self.pcs.clear()
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
