"""The event bus: committed events fan out to every process's subscribers.

Shaped after python-socketio's ``AsyncPubSubManager``: the base class owns all behaviour
(encoding, local fan-out, subscriber bookkeeping); a backend fills two hooks, ``_publish`` and
``_listen``. :class:`MemoryBus` is the embedded default, :class:`RedisBus` the scale-out one;
:func:`make_bus` picks one from settings. The bus is at-most-once: a subscriber that misses a
message recovers from the event table by sequence (DESIGN invariant 2), never from the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Subscriber = Callable[[dict[str, Any]], Awaitable[None]]
REDIS_CHANNEL = "vigil:events"


class EventBus(ABC):
    """Publish committed events; deliver every published event to every local subscriber."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call *callback* for each event; returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def publish(self, event: dict[str, Any]) -> None:
        """Send *event* (JSON-serialisable, already committed) to every process."""
        await self._publish(json.dumps(event, default=str))

    async def _deliver(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except (TypeError, ValueError):
            log.warning("bus dropped an undecodable message")
            return
        await self._dispatch(event)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        for callback in list(self._subscribers):
            try:
                await callback(event)
            except Exception:
                # One broken subscriber must not starve the others of safety events.
                log.exception("bus subscriber failed", extra={"event_type": event.get("type")})

    async def start(self) -> None:
        """Begin listening (a no-op for backends that deliver synchronously)."""
        self._task = asyncio.create_task(self._listen(), name=f"{type(self).__name__}.listen")

    async def stop(self) -> None:
        """Stop listening and release connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @abstractmethod
    async def _publish(self, message: str) -> None: ...

    @abstractmethod
    async def _listen(self) -> None: ...


class MemoryBus(EventBus):
    """One process: publishing delivers directly, in order."""

    async def _publish(self, message: str) -> None:
        await self._deliver(message)

    async def _listen(self) -> None:
        return None


class RedisBus(EventBus):
    """Several processes: Redis pub/sub; every process (the publisher too) hears every event.

    The publishing process delivers to its own subscribers at once, then publishes to Redis
    with its origin id; its listener skips what it published itself. Its own followers (most
    of them, with sticky sessions) then get an event as fast as with the in-memory bus: going
    through Redis and back would queue local deliveries behind everything else the event loop
    does (measured in bench/event_latency.py: seconds under a flag storm). The same design as
    python-socketio's pub/sub managers (local first, then the queue, skipping their host id).
    """

    def __init__(self, url: str, channel: str = REDIS_CHANNEL) -> None:
        super().__init__()
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self._channel = channel
        self._ready = asyncio.Event()
        self.origin = uuid.uuid4().hex

    async def start(self) -> None:
        await super().start()
        # publish() before the SUBSCRIBE is confirmed would be lost for our own subscribers.
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        await super().stop()
        await self._redis.aclose()

    async def publish(self, event: dict[str, Any]) -> None:
        """Deliver *event* here at once, then to every other process through Redis."""
        message = json.dumps(event, default=str)
        await self._deliver(message)
        # The origin is hex: the envelope can be built around the encoded event.
        await self._publish(f'{{"origin": "{self.origin}", "event": {message}}}')

    async def _publish(self, message: str) -> None:
        await self._redis.publish(self._channel, message)

    async def _receive(self, message: str | bytes) -> None:
        try:
            envelope = json.loads(message)
            origin, event = envelope["origin"], envelope["event"]
        except (TypeError, ValueError, KeyError):
            log.warning("bus dropped an undecodable message")
            return
        if origin != self.origin:  # our own events were delivered when published
            await self._dispatch(event)

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self._ready.set()
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        await self._receive(item["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redis bus connection lost; reconnecting")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


def make_bus(redis_url: str | None) -> EventBus:
    """The bus the settings ask for: Redis when a URL is set, in-memory otherwise."""
    return RedisBus(redis_url) if redis_url else MemoryBus()
