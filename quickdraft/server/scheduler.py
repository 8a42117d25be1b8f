"""Running generation requests from many clients on engines that serve one at a time.

An :class:`~quickdraft.engine.Engine` is not thread-safe, so each engine gets
one worker thread, and requests wait in one first-in-first-out queue of
bounded length. A :class:`Job` carries a prepared request to a worker and its
text pieces back to the asyncio side (the HTTP handler). Cancelling a job (the
client went away) drops it from the queue, or makes its worker close the
engine's generator at the next piece, which ends the decode loop and frees the
engine for the next job.

    >>> import asyncio
    >>> class EchoEngine:  # stands in for an Engine: yields pieces, then a result
    ...     def run(self, request, options=None):
    ...         yield from request
    ...         yield "done"
    >>> async def demo():
    ...     scheduler = Scheduler([EchoEngine()], max_queue=4)
    ...     scheduler.start()
    ...     job = Job(["a", "b"], method="echo", loop=asyncio.get_running_loop())
    ...     scheduler.submit(job)
    ...     pieces = [piece async for piece in job.items()]
    ...     scheduler.stop()
    ...     return pieces
    >>> asyncio.run(demo())
    ['a', 'b', 'done']
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any, AsyncIterator, Protocol, Sequence

from ..engine import GenerationResult
from ..errors import QuickdraftError

log = logging.getLogger(__name__)

_DONE = object()  # the end-of-job marker on a job's item queue


class ServerBusy(Exception):
    """The queue is full; the client should retry later."""


class GenerationObserver(Protocol):
    """What the scheduler reports about finished generations (the server's metrics)."""

    def generation_finished(self, result: GenerationResult) -> None: ...

    def generation_stopped(self, method: str, reason: str) -> None: ...


class Job:
    """One request on its way from an HTTP handler to a worker thread and back.

    request: what the worker passes to ``Engine.run`` (a prepared Request),
        with ``options`` for the method's drafter.
    The worker ``emit``s text pieces, then the GenerationResult (or an
    exception); the handler reads them with ``items()`` on the event loop.
    """

    def __init__(self, request: Any, *, method: str, loop: asyncio.AbstractEventLoop,
                 options: dict[str, Any] | None = None) -> None:
        self.request = request
        self.method = method
        self.options = options
        self.cancelled = threading.Event()  # set from the loop, read by the worker
        self.finished = asyncio.Event()  # set on the loop once the last item is delivered
        self._loop = loop
        self._items: asyncio.Queue = asyncio.Queue()

    def emit(self, item: Any) -> None:
        """Hand an item to the handler (from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()

    def close(self) -> None:
        """Mark the end of the job's items (from any thread)."""
        self.emit(_DONE)

    def _deliver(self, item: Any) -> None:
        self._items.put_nowait(item)
        if item is _DONE:
            self.finished.set()

    async def items(self) -> AsyncIterator[Any]:
        """Text pieces, then a GenerationResult or an exception; nothing more after a cancel."""
        while True:
            item = await self._items.get()
            if item is _DONE:
                return
            yield item


class Scheduler:
    """Worker threads, one per engine, taking jobs from a bounded FIFO queue.

    engines: engines that may run at the same time (each used by one thread only).
    max_queue: how many jobs may wait for an engine; ``submit`` raises
        :class:`ServerBusy` beyond it.
    """

    def __init__(self, engines: Sequence[Any], *, max_queue: int, observer: GenerationObserver | None = None) -> None:
        if not engines:
            raise ValueError("the scheduler needs at least one engine")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.engines = list(engines)
        self.capacity = len(self.engines)  # jobs that may run at once
        self.max_queue = max_queue
        self.observer = observer
        self._waiting: deque[Job] = deque()
        self._active: set[Job] = set()  # jobs being generated
        self._stopping = False
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    @property
    def waiting(self) -> int:
        """Jobs in the queue, not started yet."""
        with self._cond:
            return len(self._waiting)

    @property
    def running(self) -> int:
        """Jobs being generated now."""
        with self._cond:
            return len(self._active)

    def start(self) -> None:
        for i, engine in enumerate(self.engines):
            thread = threading.Thread(target=self._work, args=(engine,), name=f"quickdraft-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job (running ones end at their next piece) and join the workers."""
        with self._cond:
            self._stopping = True
            dropped = list(self._waiting)
            self._waiting.clear()
            for job in self._active:
                job.cancelled.set()
            self._cond.notify_all()
        for job in dropped:
            job.cancelled.set()
            job.close()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def submit(self, job: Job) -> None:
        """Queue a job (first in, first out); raises ServerBusy when the queue is full."""
        with self._cond:
            if self._stopping:
                raise ServerBusy("the server is shutting down")
            idle = self.capacity - len(self._active) - len(self._waiting)
            if idle <= 0 and len(self._waiting) >= self.max_queue:
                raise ServerBusy(
                    f"the server is busy: {len(self._active)} requests running and {len(self._waiting)} waiting "
                    f"(the queue holds {self.max_queue}); retry later"
                )
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: drop it from the queue, or stop its generation at the next piece."""
        job.cancelled.set()
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running (its worker closes it) or already done
        job.close()

    # ------------------------------------------------------------ workers

    def _work(self, engine: Any) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                self._active.add(job)
            try:
                self._run(engine, job)
            finally:
                with self._cond:
                    self._active.discard(job)
                job.close()

    def _run(self, engine: Any, job: Job) -> None:
        if job.cancelled.is_set():  # the client left between the queue and here
            return
        events = engine.run(job.request, options=job.options)
        try:
            for item in events:
                if job.cancelled.is_set():
                    self._report_stop(job.method, "cancelled")
                    return
                if isinstance(item, GenerationResult) and self.observer is not None:
                    self.observer.generation_finished(item)
                job.emit(item)
        except Exception as exc:  # noqa: BLE001  one request's failure must not stop the worker
            if not isinstance(exc, QuickdraftError):
                log.exception("generation failed")
            self._report_stop(job.method, "error")
            job.emit(exc)
        finally:
            events.close()  # closes the engine's decode loop if we left it early

    def _report_stop(self, method: str, reason: str) -> None:
        if self.observer is not None:
            self.observer.generation_stopped(method, reason)


class BatchScheduler(Scheduler):
    """One worker thread decoding every running job together (continuous batching,
    :class:`~quickdraft.batching.BatchDecoder`): jobs join between steps while slots are free and leave
    when done or cancelled; the others wait in a bounded FIFO queue (the same interface as :class:`Scheduler`).
    """

    def __init__(self, decoder: Any, *, max_queue: int, observer: GenerationObserver | None = None) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.decoder = decoder
        self.capacity = decoder.free()
        self.max_queue = max_queue
        self.observer = observer
        self._waiting: deque[Job] = deque()
        self._active: dict[Any, Job] = {}  # lane -> job (the worker's; sizes read under the lock)
        self._stopping = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="quickdraft-batch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            dropped = list(self._waiting) + list(self._active.values())
            self._waiting.clear()
            self._cond.notify_all()
        for job in dropped:
            job.cancelled.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for job in dropped:
            job.close()

    # ------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._active and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                joining = []
                while self._waiting and len(self._active) + len(joining) < self.capacity:
                    joining.append(self._waiting.popleft())
            for job in joining:
                self._join(job)
            self._drop_cancelled()
            if self._active:
                self._step()

    def _join(self, job: Job) -> None:
        if job.cancelled.is_set():
            job.close()
            return
        try:
            lane = self.decoder.join(job.request, options=job.options)
        except QuickdraftError as exc:
            self._report_stop(job.method, "error")
            job.emit(exc)
            job.close()
            return
        with self._cond:
            self._active[lane] = job

    def _drop_cancelled(self) -> None:
        for lane, job in list(self._active.items()):
            if job.cancelled.is_set():
                self.decoder.leave(lane)
                self._report_stop(job.method, "cancelled")
                self._end(lane)

    def _step(self) -> None:
        try:
            events = self.decoder.step()
        except Exception as exc:  # noqa: BLE001  a failed pass fails its requests, never the worker
            if not isinstance(exc, QuickdraftError):
                log.exception("a batched step failed")
            for lane, job in list(self._active.items()):
                self.decoder.leave(lane)
                self._report_stop(job.method, "error")
                job.emit(exc)
                self._end(lane)
            return
        for lane, items in events.items():
            job = self._active.get(lane)
            if job is None:
                continue
            for item in items:
                if isinstance(item, GenerationResult) and self.observer is not None:
                    self.observer.generation_finished(item)
                job.emit(item)
            if lane.finish is not None:
                self._end(lane)

    def _end(self, lane: Any) -> None:
        with self._cond:
            job = self._active.pop(lane)
        job.close()
