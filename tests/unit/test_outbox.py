"""The connection outbox: never blocks a pusher, merges, reports a stall, carries relay times."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing

from protocol.outgoing import OutboundFrame, ReplyTo, StreamDelta
from server.ws.outbox import Outbox

CONV = "6f1c8f7e-4a40-4d3e-9d65-1b8f1e0c2a11"
MSG = "0b7e4b1a-0a8e-4c6a-9a3e-2f1d6c5b4a39"


def push(ob: Outbox, chunk: int, delta: str, t0: float | None = None) -> None:
    ob.push_stream(StreamDelta(CONV, MSG, 2, chunk, delta), ReplyTo("r", "a" * 32), t0)


async def test_merges_while_behind_and_keeps_first_t0() -> None:
    ob = Outbox()
    push(ob, 0, "Hel", t0=1.0)
    push(ob, 1, "lo", t0=2.0)
    ob.push_frame(OutboundFrame('{"type":"pong"}', "pong"))
    push(ob, 2, "!", t0=3.0)
    first = ob.pop()
    assert first is not None
    frame, t0 = first
    data = orjson.loads(frame.text)["data"]
    assert (data["delta"], data["chunk"], t0) == ("Hello", 1, 1.0)
    second = ob.pop()
    assert second is not None and second[0].type == "pong" and second[1] is None
    third = ob.pop()
    assert third is not None and third[1] == 3.0
    assert ob.pop() is None


async def test_stall_reported_from_first_overflow_and_cleared() -> None:
    ob = Outbox(max_frames=2, max_bytes=10_000)
    for i in range(3):
        ob.push_frame(OutboundFrame(f'{{"n":{i}}}', "x"))
    assert ob.over_since is not None
    since = ob.over_since
    await trio.sleep(0.01)
    ob.push_frame(OutboundFrame("{}", "x"))
    assert ob.over_since == since  # the clock starts at the first overflow
    ob.pop()
    ob.pop()
    assert ob.over_since is None
    ob.drop_queued()
    assert ob.pop() is None


async def test_wait_wakes_on_push_and_close_drops_everything() -> None:
    ob = Outbox()
    woke = trio.Event()

    async def waiter() -> None:
        await ob.wait()
        woke.set()

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        push(ob, 0, "x")
    assert woke.is_set()
    ob.close()
    push(ob, 1, "y")
    ob.push_frame(OutboundFrame("{}", "x"))
    assert ob.pop() is None and ob.closed


async def test_a_cancelled_waiter_is_not_woken_again() -> None:
    # The writer parks without an Event: a wake() right after its cancellation was
    # delivered (before it ran again) must not reschedule it a second time.
    ob = Outbox()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as n:

            async def cancel_then_wake() -> None:
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()  # the waiter's abort runs now: it is rescheduled, Cancelled
                ob.wake()  # and this finds no waiter

            n.start_soon(cancel_then_wake)
            await ob.wait()
    assert scope.cancelled_caught
    # the outbox still works: the next wait parks again and a push wakes it
    async with trio.open_nursery() as n:
        n.start_soon(ob.wait)
        await trio.testing.wait_all_tasks_blocked()
        push(ob, 0, "x")
    assert ob.pop() is not None


async def test_a_wake_with_nothing_pushed_ends_one_wait() -> None:
    ob = Outbox()
    rounds = 0

    async def waiter() -> None:
        nonlocal rounds
        await ob.wait()
        rounds += 1

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        ob.wake()
        ob.wake()  # a second wake before it runs: nothing to do
    assert rounds == 1


async def test_a_second_waiter_is_refused() -> None:
    ob = Outbox()
    async with trio.open_nursery() as n:
        n.start_soon(ob.wait)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="one waiter"):
            await ob.wait()
        ob.wake()
