"""Connecting to the broker: a new gmqtt client for each connection, each attempt's failure
worded for a person, and a capped exponential backoff between attempts.

gmqtt reconnects one client with a fixed delay; a new client per connection keeps no state of
the last one (packet ids, topic aliases), and the transport above keeps what must survive a
reconnect itself. gmqtt's own reconnect is turned off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import gmqtt
from gmqtt.storage import PersistentStorage

from edgert.settings import BrokerConfig

__all__ = ["Dialer", "Storage", "first_of"]

# gmqtt makes up to ``reconnect_retries`` + 1 attempts after a loss (-1: no end): this is none.
_NO_RECONNECTS = -2

# CONNACK refusals that retrying cannot fix (bad credentials, not authorised, banned), by
# gmqtt's words for them (it exposes the reason's text, not its code).
_CREDENTIALS = ("password", "authori", "authentication", "banned")

log = logging.getLogger("edgert.mqtt")


class Storage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of QoS 1 publishes in flight (a constructor parameter of its client), told
    when the broker acknowledges one: gmqtt has no callback of its own for that."""

    def __init__(self, on_acknowledged: Callable[[int], None]) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self._on_acknowledged = on_acknowledged

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self._on_acknowledged(mid)


# What the transport does with a new client before it connects: set its callbacks, and keep
# its store of publishes in flight (the event is set when that client's connection is lost).
BindFn = Callable[[gmqtt.Client, Storage, asyncio.Event], None]


class Dialer:
    """Connect, wait for the loss, back off, connect again, until :meth:`stop`."""

    def __init__(
        self,
        config: BrokerConfig,
        tls: ssl.SSLContext | None,
        will: tuple[str, bytes] | None,
        bind: BindFn,
        on_acknowledged: Callable[[int], None],
    ) -> None:
        self.config = config
        self._on_acknowledged = on_acknowledged
        self._tls = tls
        self._will = will
        self._bind = bind
        self._stop: asyncio.Event | None = None
        # Why the last attempt failed; ``refused`` is set when retrying cannot help: the broker
        # refused the credentials, or its certificate is not trusted.
        self.last_error: str | None = None
        self.refused = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def run(self, connected: Callable[[gmqtt.Client], bool]) -> None:
        """``connected(client)``: whether that client's CONNACK was accepted."""
        self._stop = stop = asyncio.Event()
        delay = self.config.reconnect_min
        while not stop.is_set():
            lost = asyncio.Event()
            client = self._client(lost)
            if await self._connect(client, lost, connected):
                delay = self.config.reconnect_min
                await first_of(lost.wait(), stop.wait())
            if stop.is_set():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, self.config.reconnect_max)

    def _client(self, lost: asyncio.Event) -> gmqtt.Client:
        config = self.config
        kwargs: dict[str, Any] = {}
        if config.protocol == 5:
            kwargs["session_expiry_interval"] = config.session_expiry
            # The broker sends at most this many QoS 1 requests not yet acknowledged (taken).
            kwargs["receive_maximum"] = config.receive_maximum
        will = None
        if self._will is not None:
            will = gmqtt.Message(self._will[0], self._will[1], qos=1, retain=True)
        storage = Storage(self._on_acknowledged)
        client = gmqtt.Client(
            config.client_id or None,
            clean_session=False,  # the broker keeps the session: QoS 1 requests wait for us
            optimistic_acknowledgement=False,  # acknowledged once taken, by the transport
            will_message=will,
            persistent_storage=storage,
            **kwargs,
        )
        client.reconnect_retries = _NO_RECONNECTS
        if config.username is not None:
            client.set_auth_credentials(config.username, config.password)
        self._bind(client, storage, lost)
        return client

    async def _connect(
        self,
        client: gmqtt.Client,
        lost: asyncio.Event,
        connected: Callable[[gmqtt.Client], bool],
    ) -> bool:
        """One attempt: True once the broker accepted it."""
        config = self.config
        version = gmqtt.constants.MQTTv50 if config.protocol == 5 else gmqtt.constants.MQTTv311
        connect = client.connect(
            config.host,
            config.port,
            ssl=self._tls or False,
            keepalive=config.keepalive,
            version=version,
        )
        try:
            first = await asyncio.wait_for(
                first_of(connect, lost.wait()), max(10.0, float(config.keepalive))
            )
        except gmqtt.MQTTConnectError as exc:
            reason = str(exc.message).removeprefix("Connection Refused: ")
            self.last_error = f"the broker at {self.address} refused the connection: {reason}"
            if any(w in exc.message.lower() for w in _CREDENTIALS):
                self.refused.set()  # no retry can fix what the broker refused
            log.error("%s", self.last_error)
            return False
        except asyncio.TimeoutError:
            self.last_error = (
                f"the broker at {self.address} did not accept the connection in time "
                "(TLS or plain on the wrong port, or a broker without MQTT 5?)"
            )
        except (OSError, EOFError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            self.last_error = f"cannot connect to the broker at {self.address}: {reason}"
            if isinstance(exc, ssl.SSLCertVerificationError):
                self.refused.set()
        else:
            if first == 0 and connected(client):
                self.last_error = None
                self.refused.clear()
                return True
            self.last_error = (
                f"the broker at {self.address} closed the connection before accepting it; "
                "TLS or plain on the wrong port?"
            )
        log.warning("%s", self.last_error)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 1.0)
        return False


async def first_of(*waits: Any) -> int:
    """Wait for the first of ``waits`` (coroutines) to finish, cancel the others, and return
    its index (raising its exception, if it raised one)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    first = next(i for i, task in enumerate(tasks) if task in done)
    tasks[first].result()
    return first
