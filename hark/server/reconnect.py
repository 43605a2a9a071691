"""A link hark keeps open to a device that is the server side (a wyoming-satellite, an
ESPHome device): connect, serve until the connection ends, and on any failure connect
again with exponential backoff, until :meth:`ReconnectingLink.stop`.

Subclasses name their ``kind`` (for log lines and task names) and implement
``_connect_and_serve`` (one connection, until it ends; returns why it ended) and
``_teardown`` (after each connection, whatever happened); ``_reason`` turns an expected
failure (one of ``retry_errors``) into the words of the log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time


class Disconnected(Exception):
    """The connection ended or cannot be used; the message says why."""


class ReconnectingLink:
    kind = "device"
    backoff_min_s = 1.0
    backoff_max_s = 30.0
    stable_s = 10.0  # a connection that held this long resets the backoff
    # failures that are expected of a device on a network: one log line, then a retry
    retry_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError, Disconnected)

    uri: str
    name: str
    stats: object  # has ``failures``

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._log = logging.getLogger(type(self).__module__)  # the device kind's logger

    @property
    def label(self) -> str:
        return self.uri if self.name == self.uri else f"'{self.name}' ({self.uri})"

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self.run(), name=f"{self.kind} {self.uri}")
        return self._task

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def run(self) -> None:
        """Connect, serve, and on any failure reconnect with exponential backoff."""
        delay = self.backoff_min_s
        while not self._stopping:
            began = time.monotonic()
            try:
                why = await self._connect_and_serve()
            except asyncio.CancelledError:
                raise
            except self.retry_errors as exc:
                why = self._reason(exc)
            except Exception as exc:  # noqa: BLE001 - one device never stops the rest
                self._log.exception("%s %s failed", self.kind, self.label)
                why = f"failed: {type(exc).__name__}"
            finally:
                await self._teardown()
            if self._stopping:
                return
            self.stats.failures += 1
            if time.monotonic() - began >= self.stable_s:
                delay = self.backoff_min_s
            wait = delay * random.uniform(0.9, 1.1)
            self._log.warning("%s %s: %s; retrying in %.1f s", self.kind, self.label, why,
                              wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.backoff_max_s)

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, Disconnected):
            return str(exc)
        if isinstance(exc, TimeoutError):
            return str(exc) or "timed out"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _connect_and_serve(self) -> str:
        raise NotImplementedError

    async def _teardown(self) -> None:
        raise NotImplementedError
