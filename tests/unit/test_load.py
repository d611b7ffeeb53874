import time

import trio

from server.load import LoadMonitor


def test_pressure_rises_fast_and_falls_slowly() -> None:
    m = LoadMonitor(threshold=0.005)
    assert not m.under_pressure
    m.record(0.020)  # one wake-up 20 ms late
    assert m.under_pressure
    for _ in range(5):
        m.record(0.0)
    assert m.under_pressure  # still cautious
    for _ in range(30):
        m.record(0.0)
    assert not m.under_pressure


async def test_measures_a_blocked_loop() -> None:
    m = LoadMonitor(period=0.01)
    samples: list[float] = []
    async with trio.open_nursery() as n:
        n.start_soon(m.run, samples.append)
        await trio.sleep(0.05)
        assert not m.under_pressure
        time.sleep(0.05)  # the loop is starved for 50 ms  # noqa: ASYNC251
        await trio.sleep(0.02)
        n.cancel_scope.cancel()
    assert m.under_pressure and max(samples) > 0.005
