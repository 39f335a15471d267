"""The ``/signal`` Socket.IO namespace: join, offer/answer, leave, re-join after a drop.

The server is the WebRTC peer of every client. A client joins a session as ``publisher`` (the
patient) or ``viewer`` (clinician, on-call, guide), then sends an SDP offer; the server answers
once its ICE candidates are gathered (no trickle ICE: the answer carries every candidate).
A publisher's re-offer (a new peer connection after a network drop) replaces its media source;
viewers keep their own peer connections and the video continues. See docs/protocol.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from server.auth import Access, Principal
from server.gate import ClientError, Gate, GuardedNamespace, require_fields, session_id_of
from server.models import Phase
from signaling.peer import make_peer_connection
from signaling.relay import Relay, RelayTrack

log = logging.getLogger(__name__)

NAMESPACE = "/signal"
# Chromium's offers are 5-10 kB; anything this large is not an SDP we want to parse.
MAX_SDP_CHARS = 64 * 1024
ROLES = {"publisher": Access.PUBLISH, "viewer": Access.VIEW}

# Media facts reported to monitoring: (session_id, fact, data) → recorded as an event.
MediaReporter = Callable[[str, str, dict[str, Any]], Awaitable[None]]


def room(session_id: str) -> str:
    """The Socket.IO room of everyone joined to a session."""
    return f"session:{session_id}"


@dataclass
class Peer:
    """One connection's part in one session."""

    session_id: str
    role: str  # publisher or viewer
    who: str  # the principal's subject
    who_role: str  # the principal's role (clinician, oncall, guide…)
    pc: RTCPeerConnection | None = None
    tracks: tuple[RelayTrack, RelayTrack] | None = None


class SignalingNamespace(GuardedNamespace):
    """Negotiates every peer connection; owns who publishes and who views on this node."""

    def __init__(
        self,
        gate: Gate,
        relay: Relay,
        ice_servers: list[dict[str, Any]],
        report: MediaReporter | None = None,
    ) -> None:
        super().__init__(NAMESPACE, gate)
        self.relay = relay
        self.ice_servers = ice_servers
        self.report = report
        self.peers: dict[str, dict[str, Peer]] = {}  # sid → session id → peer
        self.publisher_sid: dict[str, str] = {}  # session id → sid publishing it

    # -- helpers ---------------------------------------------------------------------------

    def _peer(self, sid: str, session_id: str) -> Peer:
        peer = self.peers.get(sid, {}).get(session_id)
        if peer is None:
            raise ClientError("not_joined", "join the session before sending this")
        return peer

    def viewers(self, session_id: str) -> list[str]:
        """Who is viewing *session_id* on this node (principal subjects)."""
        return [
            p.who
            for peers in self.peers.values()
            if (p := peers.get(session_id)) is not None and p.role == "viewer"
        ]

    def presence(self, session_id: str) -> dict[str, Any]:
        """Whether the patient publishes and who views, as sent in ``presence`` events."""
        return {
            "session_id": session_id,
            "publisher_online": session_id in self.publisher_sid,
            "viewers": len(self.viewers(session_id)),
        }

    async def _emit_presence(self, session_id: str) -> None:
        await self.emit("presence", self.presence(session_id), room=room(session_id))

    async def _report(self, session_id: str, fact: str, data: dict[str, Any]) -> None:
        if self.report is None:
            return
        try:
            await self.report(session_id, fact, data)
        except Exception:
            log.exception("media fact not recorded", extra={"session": session_id, "fact": fact})

    async def _close_media(self, peer: Peer) -> None:
        if peer.tracks is not None:
            for track in peer.tracks:
                track.stop()
            peer.tracks = None
        if peer.pc is not None:
            pc, peer.pc = peer.pc, None
            await pc.close()

    async def _leave(self, sid: str, session_id: str, reason: str) -> None:
        peer = self.peers.get(sid, {}).pop(session_id, None)
        if peer is None:
            return
        await self._close_media(peer)
        await self.leave_room(sid, room(session_id))
        if peer.role == "publisher" and self.publisher_sid.get(session_id) == sid:
            del self.publisher_sid[session_id]
            await self._report(session_id, "publisher_left", {"who": peer.who, "reason": reason})
        elif peer.role == "viewer":
            await self._report(
                session_id,
                "viewer_left",
                {"who": peer.who, "role": peer.who_role, "reason": reason},
            )
        await self._emit_presence(session_id)

    # -- connection lifecycle --------------------------------------------------------------

    async def connected(self, sid: str, principal: Principal) -> None:
        self.peers[sid] = {}

    async def disconnected(self, sid: str, principal: Principal) -> None:
        for session_id in list(self.peers.get(sid, {})):
            await self._leave(sid, session_id, "disconnected")
        self.peers.pop(sid, None)

    # -- events ----------------------------------------------------------------------------

    async def handle_join(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``join {session_id, as}`` → ``{session_id, as, ice_servers, presence}``."""
        data = require_fields(data, {"session_id": str, "as": str})
        session_id = session_id_of(data)
        role = data["as"]
        if role not in ROLES:
            raise ClientError("bad_request", "'as' must be 'publisher' or 'viewer'")
        row = await self.gate.authorize(principal, session_id, ROLES[role])
        if Phase(row.phase).terminal:
            raise ClientError("session_ended", f"the session is {row.phase}")
        peers = self.peers.setdefault(sid, {})
        existing = peers.get(session_id)
        if existing is not None and existing.role != role:
            raise ClientError("already_joined", f"already joined as {existing.role}")
        if existing is None:
            peers[session_id] = Peer(session_id, role, principal.subject, principal.role)
            await self.enter_room(sid, room(session_id))
            if role == "viewer":
                await self._report(
                    session_id, "viewer_joined", {"who": principal.subject, "role": principal.role}
                )
            await self._emit_presence(session_id)
        return {
            "session_id": session_id,
            "as": role,
            "ice_servers": self.ice_servers,
            "presence": self.presence(session_id),
        }

    async def handle_stop_media(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``stop_media {session_id}`` → ``{session_id}``: a viewer closes its media but stays
        joined, so it still counts as watching (a roster tile going from live video back to
        a thumbnail). A new ``offer`` brings the media back."""
        data = require_fields(data, {"session_id": str})
        session_id = session_id_of(data)
        peer = self._peer(sid, session_id)
        if peer.role != "viewer":
            raise ClientError("bad_request", "only a viewer stops its media and stays joined")
        await self._close_media(peer)
        return {"session_id": session_id}

    async def handle_offer(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``offer {session_id, type: "offer", sdp}`` → ``{type: "answer", sdp}``."""
        data = require_fields(data, {"session_id": str, "type": str, "sdp": str})
        session_id = session_id_of(data)
        if data["type"] != "offer":
            raise ClientError("bad_request", "type must be 'offer'")
        if len(data["sdp"]) > MAX_SDP_CHARS:
            raise ClientError("payload_too_large", f"an SDP is at most {MAX_SDP_CHARS} characters")
        if not data["sdp"].startswith("v=0"):
            raise ClientError("bad_sdp", "the SDP must start with v=0")
        peer = self._peer(sid, session_id)
        row = await self.gate.authorize(principal, session_id, ROLES[peer.role])
        if Phase(row.phase).terminal:
            raise ClientError("session_ended", f"the session is {row.phase}")

        pc = make_peer_connection(self.ice_servers)
        tracks: tuple[RelayTrack, RelayTrack] | None = None
        try:
            # Both before the offer is applied: the codecs the answer allows are chosen then
            # (the relay forwards VP8/Opus as they arrive; anything else is re-encoded).
            if peer.role == "publisher":
                self.relay.attach(session_id, pc, offer_sdp=data["sdp"])
            else:
                # A viewer's offer may send media too (a browser with a camera on); nothing
                # relays it, but every received track must be read.
                pc.on("track", self.relay.discard)
                tracks = self.relay.subscribe(session_id)
                self.relay.serve_viewer(session_id, pc, tracks, data["sdp"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="offer"))
            if peer.role == "viewer":
                kinds = {t.kind for t in pc.getTransceivers()}
                if "video" not in kinds:
                    raise ClientError("bad_sdp", "a viewer's offer must receive video")
            # setLocalDescription gathers every ICE candidate before returning.
            await pc.setLocalDescription(await pc.createAnswer())
        except ClientError:
            await self._discard(pc, tracks)
            raise
        except Exception as exc:
            await self._discard(pc, tracks)
            log.info("offer refused", extra={"session": session_id, "error": type(exc).__name__})
            raise ClientError("bad_sdp", "the offer could not be used: malformed SDP") from None

        # The new connection replaces this client's previous one (a re-offer after a drop).
        old_pc, old_tracks = peer.pc, peer.tracks
        peer.pc, peer.tracks = pc, tracks
        self._watch(sid, peer, pc)
        await self._discard(old_pc, old_tracks)
        if peer.role == "publisher":
            previous = self.publisher_sid.get(session_id)
            self.publisher_sid[session_id] = sid
            if previous is not None and previous != sid:
                # The same patient came back on a new connection before the old one timed out
                # (or opened a second tab): the newest wins, and the old one is told so it
                # stops re-offering instead of taking the stream back.
                await self.emit("replaced", {"session_id": session_id}, to=previous)
                await self._leave(previous, session_id, "replaced")
            await self._report(session_id, "publisher_joined", {"who": principal.subject})
            await self._emit_presence(session_id)
        return {"type": "answer", "sdp": pc.localDescription.sdp}

    async def handle_leave(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``leave {session_id}``: close this client's media for the session."""
        data = require_fields(data, {"session_id": str})
        session_id = session_id_of(data)
        self._peer(sid, session_id)
        await self._leave(sid, session_id, "left")
        return {"session_id": session_id}

    async def handle_presence(self, sid: str, principal: Principal, data: Any) -> dict[str, Any]:
        """``presence {session_id}`` → whether the patient publishes and how many view."""
        data = require_fields(data, {"session_id": str})
        session_id = session_id_of(data)
        await self.gate.authorize(principal, session_id, Access.FOLLOW)
        return self.presence(session_id)

    # -- peer connection bookkeeping -------------------------------------------------------

    async def _discard(
        self, pc: RTCPeerConnection | None, tracks: tuple[RelayTrack, RelayTrack] | None
    ) -> None:
        if tracks is not None:
            for track in tracks:
                track.stop()
        if pc is not None:
            await pc.close()

    def _watch(self, sid: str, peer: Peer, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        async def _changed() -> None:
            if pc.connectionState == "failed" and peer.pc is pc:
                # ICE failed for good: free the connection; the client re-offers.
                log.info("peer connection failed", extra={"session": peer.session_id, "sid": sid})
                await self._discard(pc, peer.tracks)
                peer.pc, peer.tracks = None, None
                if peer.role == "publisher" and self.publisher_sid.get(peer.session_id) == sid:
                    del self.publisher_sid[peer.session_id]
                    await self._report(
                        peer.session_id, "publisher_left", {"who": peer.who, "reason": "ice_failed"}
                    )
                    await self._emit_presence(peer.session_id)
                await self.emit(
                    "peer_failed", {"session_id": peer.session_id, "as": peer.role}, to=sid
                )

    async def end_session(self, session_id: str, phase: str) -> None:
        """The session is over: tell everyone joined, close their media, free the relay."""
        await self.emit(
            "session_ended", {"session_id": session_id, "phase": phase}, room=room(session_id)
        )
        for sid, peers in list(self.peers.items()):
            peer = peers.pop(session_id, None)
            if peer is None:
                continue
            await self._close_media(peer)
            await self.leave_room(sid, room(session_id))
        self.publisher_sid.pop(session_id, None)
        await self.relay.drop(session_id)

    async def close(self) -> None:
        """Close every peer connection (application shutdown)."""
        # Copies: disconnect handlers remove entries while pc.close() awaits.
        for peers in list(self.peers.values()):
            for peer in list(peers.values()):
                await self._close_media(peer)
        self.peers.clear()
        self.publisher_sid.clear()
