"""How the gateway's request path handles cancellation, in plain asyncio:
``metering.run_to_end`` (a usage record survives a hang-up) and
``completions_asgi.Hangup`` (a disconnect cancels the request's task once)."""

from __future__ import annotations

import asyncio

import pytest

from wattpool.gateway.completions_asgi import Hangup
from wattpool.gateway.metering import run_to_end


async def test_run_to_end_runs_a_coroutine_that_never_suspends_without_a_task() -> None:
    steps: list[str] = []

    async def record() -> None:
        steps.append("priced")
        steps.append("written")

    # It ends in its first step: it never gave the loop a turn (no task, no hop).
    with pytest.raises(StopIteration):
        run_to_end(record()).send(None)
    assert steps == ["priced", "written"]


async def test_run_to_end_passes_results_and_errors_of_what_it_awaits() -> None:
    seen: list[object] = []
    loop = asyncio.get_running_loop()

    async def record() -> None:
        ok: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.01, ok.set_result, 7)
        seen.append(await ok)
        await asyncio.sleep(0)  # a bare yield to the loop
        bad: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.01, bad.set_exception, LookupError("price unknown"))
        try:
            await bad
        except LookupError as exc:
            seen.append(str(exc))
        raise ValueError("after both")

    with pytest.raises(ValueError, match="after both"):
        await run_to_end(record())
    assert seen == [7, "price unknown"]


async def test_cancelling_the_caller_does_not_cut_the_record_short() -> None:
    pricing = asyncio.Event()
    written: list[str] = []

    async def record() -> None:
        await pricing.wait()  # e.g. the price book asks the database
        written.append("usage")

    async def request() -> None:
        await run_to_end(record())
        written.append("after the record")  # not reached: the request was cancelled

    task = asyncio.create_task(request())
    await asyncio.sleep(0.01)
    task.cancel()  # the client hangs up while the record is being priced
    await asyncio.sleep(0.01)
    assert not task.done()  # the cancellation waits for the record
    pricing.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert written == ["usage"]


async def test_a_hangup_cancels_once_and_is_told_from_other_cancellations() -> None:
    outcome: list[str] = []

    async def serve(hangup_box: list[Hangup], cleanup_started: asyncio.Event,
                    finish_cleanup: asyncio.Event) -> None:
        task = asyncio.current_task()
        assert task is not None
        hangup = Hangup(task)
        hangup_box.append(hangup)
        try:
            try:
                await asyncio.sleep(60)  # waiting for the first token
            finally:
                hangup.disarm()
                cleanup_started.set()
                await finish_cleanup.wait()  # cleanup that must run to its end
                outcome.append("cleaned up")
        except asyncio.CancelledError:
            if not hangup.was_ours():
                outcome.append("cancelled by someone else")
                raise
            outcome.append("client gone")

    # The client hangs up; a second disconnect during the cleanup changes nothing.
    box: list[Hangup] = []
    started, finish = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(box, started, finish))
    await asyncio.sleep(0.01)
    box[0].client_left()
    await started.wait()
    box[0].client_left()
    finish.set()
    await task  # ends normally: the hang-up was handled
    assert outcome == ["cleaned up", "client gone"]
    assert task.cancelling() == 0

    # Cancelled by someone else (server shutdown): the CancelledError goes on.
    outcome.clear()
    box.clear()
    started, finish = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(box, started, finish))
    await asyncio.sleep(0.01)
    task.cancel()
    await started.wait()
    box[0].client_left()  # disarmed: no second cancellation
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cleaned up", "cancelled by someone else"]
