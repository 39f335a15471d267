"""Peer connections made the one way Vigil makes them.

aiortc falls back to Google's public STUN server when no ICE servers are configured. Vigil
never does: an empty list means host candidates only (one machine, a LAN, or a server with a
public address), and anything else must be configured (``VIGIL_ICE_SERVERS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection


def make_peer_connection(ice_servers: Iterable[Mapping[str, Any]] = ()) -> RTCPeerConnection:
    """A peer connection using exactly *ice_servers* (RTCIceServer dictionaries)."""
    servers = [
        RTCIceServer(
            urls=list(s["urls"]) if not isinstance(s["urls"], str) else s["urls"],
            username=s.get("username"),
            credential=s.get("credential"),
        )
        for s in ice_servers
    ]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))
