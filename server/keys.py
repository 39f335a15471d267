"""Typed application keys: where each long-lived object lives on the aiohttp app."""

from __future__ import annotations

from typing import TYPE_CHECKING

import socketio
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from monitoring.bus import EventBus
from monitoring.clock import Clock
from monitoring.events import EventStore
from monitoring.lifecycle import Lifecycle
from monitoring.namespace import MonitorNamespace
from monitoring.roster import Roster
from monitoring.service import Monitoring
from monitoring.technical import TechnicalMonitor
from server.config import Settings
from server.gate import Gate
from server.metrics import Metrics
from signaling.namespace import SignalingNamespace
from signaling.relay import Relay

if TYPE_CHECKING:  # server.demo imports this module
    from server.demo import DemoPatients

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
METRICS = web.AppKey("metrics", Metrics)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])
BUS = web.AppKey("bus", EventBus)
STORE = web.AppKey("store", EventStore)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
MONITORING = web.AppKey("monitoring", Monitoring)
ROSTER = web.AppKey("roster", Roster)
TECHNICAL = web.AppKey("technical", TechnicalMonitor)
GATE = web.AppKey("gate", Gate)
RELAY = web.AppKey("relay", Relay)
SIO = web.AppKey("sio", socketio.AsyncServer)
SIGNAL = web.AppKey("signal", SignalingNamespace)
MONITOR = web.AppKey("monitor", MonitorNamespace)
# Login links printed by the demo: name → URL.
DEMO_LINKS = web.AppKey("demo_links", dict)
# The simulated patients of the demo, stopped first at shutdown.
DEMO_PATIENTS: web.AppKey[DemoPatients] = web.AppKey("demo_patients")
