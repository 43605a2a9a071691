"""A remote Wyoming service used as one of hark's engines (``asr.backend = "wyoming"``,
``tts.engine = "wyoming"``): the connection, the bounds and the errors both engines share.

Engines are blocking (they run on a stage thread, ``hark/aio.py``); a
:class:`WyomingPeer` runs the ``wyoming`` package's :class:`AsyncTcpClient` on a private
event loop in a daemon thread and waits for each request from the calling thread.

Every request opens its own connection (connecting costs well under a millisecond on a
LAN, next to the decode or synthesis; ``hark bench engines`` measures it) and closes it
at the end, so a service that restarted, or dropped an idle connection, costs nothing.

Bounds: connecting must take under ``connect_timeout_s``; each event must arrive within
``timeout_s`` of the one before it; an event is read with hark's bounded reader
(:func:`hark.server.wyoming.read_event`: header, data and payload capped), so a peer can
never make hark buffer more than about a megabyte per event, and an engine caps what it
collects per request. Any failure raises :class:`WyomingServiceError`, whose message
names the service and what went wrong; the caller (the pipeline) logs it and speaks its
apology, and the next request tries the service afresh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from hark.config import parse_uri
from hark.errors import HarkError, ProtocolError

log = logging.getLogger(__name__)

T = TypeVar("T")


class WyomingServiceError(HarkError):
    """A remote Wyoming service could not do what was asked (down, timed out,
    disconnected, or sent something hark does not take)."""


# an event's data (JSON) from a service: wyoming-piper's info lists every voice it knows
# (~90 KB for wyoming-piper 2.5), more than hark's own service takes from a client
MAX_SERVICE_DATA = 2 * 1024 * 1024


class BoundedClient(AsyncTcpClient):
    """``AsyncTcpClient`` whose reads go through hark's bounded event reader: an
    oversized or malformed event raises :class:`ProtocolError` instead of being
    buffered (the package's own reader trusts the peer's declared lengths). The
    connection's stream limit (64 KiB, asyncio's default) caps a header line."""

    async def read_event(self) -> Event | None:
        from hark.server.wyoming import read_event

        assert self._reader is not None
        return await read_event(self._reader, MAX_SERVICE_DATA)


class WyomingPeer:
    """One remote Wyoming service at ``uri`` (``tcp://HOST:PORT``). ``what`` names it in
    errors ("ASR", "TTS"); ``where``: the config key the address came from."""

    def __init__(self, uri: str, what: str, *, timeout_s: float = 15.0,
                 connect_timeout_s: float = 3.0, where: str = ""):
        self.uri = uri
        self.what = what
        self.host, self.port = parse_uri(uri, ("tcp",), where)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._failing = False  # the last request failed (repeats are logged at debug)

    def __repr__(self) -> str:
        return f"WyomingPeer({self.what} at {self.uri})"

    # --- the private event loop ---------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True,
                                 name=f"hark-wyoming-{self.what.lower()}").start()
                self._loop = loop
            return self._loop

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the peer's loop; a future the calling thread can wait on."""
        return asyncio.run_coroutine_threadsafe(coro, self._get_loop())  # type: ignore[arg-type]

    def call(self, fn: Callable[[BoundedClient], Awaitable[T]]) -> T:
        """``fn(client)`` on a fresh connection (blocking); closes it afterwards. Raises
        :class:`WyomingServiceError`."""
        fut = self.submit(self.session(fn))
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    async def session(self, fn: Callable[[BoundedClient], Awaitable[T]]) -> T:
        """``fn(client)`` on a fresh connection, on the peer's loop, with every failure
        turned into :class:`WyomingServiceError` (and logged once while it repeats)."""
        try:
            client = await self.connect()
            try:
                result = await fn(client)
            finally:
                await client.disconnect()
        except WyomingServiceError as exc:
            self._failed(exc)
            raise
        except asyncio.CancelledError:
            raise
        except ConnectionError as exc:  # reset, broken pipe: it went away mid-request
            err = WyomingServiceError(f"{self.what} service {self.uri} closed the connection "
                                      f"in the middle of a request ({exc.strerror or exc})")
            self._failed(err)
            raise err from exc
        except (ProtocolError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            err = WyomingServiceError(f"{self.what} service {self.uri}: "
                                      f"{type(exc).__name__}: {exc}")
            self._failed(err)
            raise err from exc
        if self._failing:
            log.info("%s service %s answers again", self.what, self.uri)
            self._failing = False
        return result

    def _failed(self, exc: Exception) -> None:
        log.log(logging.DEBUG if self._failing else logging.WARNING, "%s", exc)
        self._failing = True

    # --- protocol helpers (on the peer's loop) ------------------------------------------

    async def connect(self) -> BoundedClient:
        client = BoundedClient(self.host, self.port)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await client.connect()
        except TimeoutError:
            raise WyomingServiceError(
                f"{self.what} service {self.uri} did not accept a connection within "
                f"{self.connect_timeout_s:g} s",
                fix=f"is the service running on {self.host}, and port {self.port} open?",
            ) from None
        except OSError as exc:
            raise WyomingServiceError(
                f"{self.what} service {self.uri} is not reachable: "
                f"{exc.strerror or exc}",
                fix=f"start the service on {self.host} (port {self.port}), or check "
                "the address in hark's config",
            ) from None
        return client

    async def read(self, client: BoundedClient, waiting_for: str) -> Event:
        """The next event, within ``timeout_s``; an ``error`` event from the service, a
        closed connection or a timeout raise :class:`WyomingServiceError`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                event = await client.read_event()
        except TimeoutError:
            raise WyomingServiceError(f"{self.what} service {self.uri} sent nothing for "
                                      f"{self.timeout_s:g} s while hark waited for "
                                      f"{waiting_for}") from None
        if event is None:
            raise WyomingServiceError(f"{self.what} service {self.uri} closed the "
                                      f"connection while hark waited for {waiting_for}")
        if Error.is_type(event.type):
            err = Error.from_event(event)
            raise WyomingServiceError(f"{self.what} service {self.uri} answered with an "
                                      f"error: {str(err.text)[:300]} ({err.code})")
        return event

    async def describe(self, client: BoundedClient) -> Info:
        await client.write_event(Describe().event())
        while True:
            event = await self.read(client, "info")
            if Info.is_type(event.type):
                return Info.from_event(event)

    def info(self) -> Info:
        """The service's ``info`` (blocking). Raises :class:`WyomingServiceError`."""
        return self.call(self.describe)


def installed_names(programs: list[Any]) -> list[str]:
    """Names of the installed models/voices of a list of Wyoming programs."""
    names = []
    for prog in programs or []:
        for item in (getattr(prog, "models", None) or getattr(prog, "voices", None) or []):
            if getattr(item, "installed", True):
                names.append(item.name)
    return names
