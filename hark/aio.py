"""Bridges between blocking engines and the event loop.

CPU-heavy engines (Whisper, llama.cpp, Piper, onnxruntime) are plain blocking Python
calls that release the GIL inside their native code. They run on dedicated threads;
the event loop only ever awaits them, so it never blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class StageExecutor:
    """One single-threaded executor per stage: work for a stage is serialised (engines
    are not re-entrant) and never competes with the event loop thread."""

    def __init__(self, name: str, on_start: Callable[[], None] | None = None):
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hark-{name}",
                                        initializer=on_start)

    async def run(self, fn: Callable[..., T], *args) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def iterate(self, make_iter: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Run a blocking generator on this stage's thread and yield each item the moment
        it exists. Closing the async iterator (or cancelling its consumer) sets a stop
        flag that the generator thread checks between items, so a cancelled LLM or TTS
        stops producing within one item."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in make_iter():
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                    if stop.is_set():
                        break
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
                return
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        fut = loop.run_in_executor(self._pool, produce)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            if not fut.done():
                # let the producer notice the flag; never block the loop waiting for it
                fut.add_done_callback(lambda f: f.exception())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
