"""The scheduler with a scripted engine: FIFO order, the bounded queue, cancellation, isolation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from quickdraft.server.scheduler import Job, Scheduler, ServerBusy


class ScriptedEngine:
    """Stands in for an Engine. A request is (name, pieces); a piece "wait" blocks until ``go`` is set,
    "fail" raises. Records the order requests start in and which generators were closed early."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.closed: list[str] = []
        self.go = threading.Event()
        self.waiting = threading.Event()  # set while a generation blocks on "wait"

    def run(self, request, options=None):
        name, pieces = request
        self.started.append(name)
        done = False
        try:
            for piece in pieces:
                if piece == "wait":
                    self.waiting.set()
                    self.go.wait(30)
                    continue
                if piece == "fail":
                    raise RuntimeError(f"{name} broke")
                yield piece
            done = True
            yield f"{name}:end"
        finally:
            if not done:
                self.closed.append(name)


async def _wait_for(condition) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def _collect(job: Job) -> list:
    return [item async for item in job.items()]


def test_jobs_run_first_in_first_out_and_the_queue_is_bounded():
    async def scenario():
        loop = asyncio.get_running_loop()
        engine = ScriptedEngine()
        scheduler = Scheduler([engine], max_queue=3)
        scheduler.start()
        jobs = [Job((name, ["x", "wait"] if name == "A" else ["x"]), method="m", loop=loop) for name in "ABCD"]
        scheduler.submit(jobs[0])
        await asyncio.to_thread(engine.waiting.wait, 30)  # A runs and blocks
        for job in jobs[1:]:
            scheduler.submit(job)
        with pytest.raises(ServerBusy, match="1 requests running and 3 waiting"):
            scheduler.submit(Job(("E", ["x"]), method="m", loop=loop))
        assert (scheduler.running, scheduler.waiting) == (1, 3)
        engine.go.set()
        results = [await _collect(job) for job in jobs]
        scheduler.stop()
        return engine, results

    engine, results = asyncio.run(scenario())
    assert engine.started == ["A", "B", "C", "D"]
    assert results == [["x", "A:end"], ["x", "B:end"], ["x", "C:end"], ["x", "D:end"]]


def test_cancel_drops_a_waiting_job_and_closes_a_running_generation():
    async def scenario():
        loop = asyncio.get_running_loop()
        engine = ScriptedEngine()
        scheduler = Scheduler([engine], max_queue=1)
        scheduler.start()
        running = Job(("A", ["x", "wait", "y", "z"]), method="m", loop=loop)
        waiting = Job(("B", ["x"]), method="m", loop=loop)
        scheduler.submit(running)
        await asyncio.to_thread(engine.waiting.wait, 30)
        scheduler.submit(waiting)
        scheduler.cancel(waiting)  # leaves the queue at once: there is room again
        assert scheduler.waiting == 0 and await _collect(waiting) == []
        scheduler.submit(Job(("C", ["x"]), method="m", loop=loop))
        scheduler.cancel(running)
        engine.go.set()
        items = await _collect(running)
        await _wait_for(lambda: "C" in engine.started and scheduler.running == 0)
        scheduler.stop()
        return engine, items

    engine, items = asyncio.run(scenario())
    assert engine.started == ["A", "C"]  # B never ran
    assert engine.closed == ["A"]  # the engine's generator was closed mid-way
    assert items == ["x"]


def test_a_failing_job_reports_its_error_and_the_worker_goes_on():
    async def scenario():
        loop = asyncio.get_running_loop()
        engine = ScriptedEngine()
        scheduler = Scheduler([engine], max_queue=4)
        scheduler.start()
        bad = Job(("A", ["x", "fail"]), method="m", loop=loop)
        good = Job(("B", ["y"]), method="m", loop=loop)
        scheduler.submit(bad)
        scheduler.submit(good)
        results = await _collect(bad), await _collect(good)
        scheduler.stop()
        return results

    bad, good = asyncio.run(scenario())
    assert bad[0] == "x" and isinstance(bad[1], RuntimeError) and len(bad) == 2
    assert good == ["y", "B:end"]


def test_stop_cancels_running_and_waiting_jobs():
    async def scenario():
        loop = asyncio.get_running_loop()
        engine = ScriptedEngine()
        scheduler = Scheduler([engine], max_queue=2)
        scheduler.start()
        running = Job(("A", ["x", "wait", "y"]), method="m", loop=loop)
        waiting = Job(("B", ["x"]), method="m", loop=loop)
        scheduler.submit(running)
        await asyncio.to_thread(engine.waiting.wait, 30)
        scheduler.submit(waiting)
        stopping = asyncio.ensure_future(asyncio.to_thread(scheduler.stop))
        assert await _collect(waiting) == []  # dropped (after the running job was flagged)
        engine.go.set()
        await stopping
        with pytest.raises(ServerBusy, match="shutting down"):
            scheduler.submit(Job(("C", ["x"]), method="m", loop=loop))
        return engine, await _collect(running)

    engine, running = asyncio.run(scenario())
    assert running == ["x"] and engine.started == ["A"] and engine.closed == ["A"]
