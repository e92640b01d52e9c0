"""A job sent again to the model replica that runs it (its router died, the lease rescue re-queued
it) re-attaches to that run, or takes its result if it just finished, instead of running twice."""

from __future__ import annotations

import asyncio

import pytest

from gpu_orchestrator.models.base import JobContext, ModelDeployment


class Counting(ModelDeployment):
    model_name = "counting"

    def __init__(self) -> None:
        self.starts: list[tuple[str, int]] = []
        super().__init__()

    async def infer(self, params, ctx: JobContext):
        self.starts.append((ctx.job_id, ctx.attempt))
        for _ in range(int(params.get("steps", 1))):
            await asyncio.sleep(params.get("delay_s", 0.05))
            ctx.check_cancelled()
        if params.get("fail"):
            raise RuntimeError("boom")
        return {"attempt": ctx.attempt, "n": params.get("n")}


def test_a_job_sent_again_while_running_attaches_to_the_run():
    async def go():
        m = Counting()
        first = asyncio.ensure_future(m.run("job-1", {"delay_s": 0.2, "n": 1}, 1))
        await asyncio.sleep(0.05)
        again = await m.run("job-1", {"delay_s": 0.2, "n": 1}, 2)
        assert again == {"attempt": 1, "n": 1} and await first == again
        return m.starts

    assert asyncio.run(go()) == [("job-1", 1)]


def test_a_job_sent_again_after_success_gets_the_result_and_others_run():
    async def go():
        m = Counting()
        a = await m.run("job-1", {"n": 1}, 1)
        assert await m.run("job-1", {"n": 1}, 2) == a
        await m.run("job-2", {"n": 2}, 1)
        return m.starts

    assert asyncio.run(go()) == [("job-1", 1), ("job-2", 1)]


def test_failures_and_cancellations_are_not_reused():
    async def go():
        m = Counting()
        with pytest.raises(RuntimeError):
            await m.run("bad", {"fail": True}, 1)
        with pytest.raises(RuntimeError):
            await m.run("bad", {"fail": True}, 2)
        slow = asyncio.ensure_future(m.run("slow", {"steps": 100, "delay_s": 0.02}, 1))
        await asyncio.sleep(0.1)
        slow.cancel()  # the request was cancelled (DELETE, lost lease): the work stops
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert (await m.run("slow", {"steps": 1, "delay_s": 0.01}, 2))["attempt"] == 2
        return m.starts

    assert asyncio.run(go()) == [("bad", 1), ("bad", 2), ("slow", 1), ("slow", 2)]


def test_recent_results_are_bounded():
    async def go():
        m = Counting()
        m.RECENT_MAX = 3
        for i in range(5):
            await m.run(f"j{i}", {"delay_s": 0}, 1)
        return list(m._recent)

    assert asyncio.run(go()) == ["j2", "j3", "j4"]


class Flags:
    """The cancel flags as a model replica reads them (EventBus.is_cancelled); `down`: Redis is."""

    def __init__(self, down: bool = False) -> None:
        self.cancelled: set[str] = set()
        self.down = down

    def is_cancelled(self, job_id: str) -> bool:
        if self.down:
            raise ConnectionError("redis unavailable")
        return job_id in self.cancelled


def test_a_request_cut_without_a_cancel_leaves_the_run_for_the_next_attempt():
    """Its router died (Serve's gRPC cuts the call with the connection) or handed the lease back: the
    job was not cancelled, so the run goes on, and the rescued attempt takes its result."""
    async def go():
        m = Counting()
        m._bus = Flags()
        first = asyncio.ensure_future(m.run("job-1", {"steps": 5, "delay_s": 0.04, "n": 1}, 1))
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        again = await m.run("job-1", {"steps": 5, "delay_s": 0.04, "n": 1}, 2)
        assert again == {"attempt": 1, "n": 1}
        return m.starts

    assert asyncio.run(go()) == [("job-1", 1)]


@pytest.mark.parametrize("why", ["flag set", "flag unreadable"])
def test_a_request_cut_for_a_cancelled_job_stops_its_run(why):
    """DELETE sets the job's flag, then cancels the request: the work stops (it gets no further than
    the step it is in). With Redis down, the flag cannot say, and the request's cancel stops it."""
    async def go():
        m = Counting()
        m._bus = Flags(down=why == "flag unreadable")
        run = asyncio.ensure_future(m.run("job-1", {"steps": 100, "delay_s": 0.02}, 1))
        await asyncio.sleep(0.05)
        if why == "flag set":
            m._bus.cancelled.add("job-1")
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        for _ in range(100):  # the decision reads the flag off the event loop
            if "job-1" not in m._running:
                break
            await asyncio.sleep(0.01)
        assert "job-1" not in m._running and "job-1" not in m._recent and not m.busy
        m._bus.down = False
        m._bus.cancelled.discard("job-1")
        assert (await m.run("job-1", {"steps": 1, "delay_s": 0.01}, 2))["attempt"] == 2
        return m.starts

    assert asyncio.run(go()) == [("job-1", 1), ("job-1", 2)]
