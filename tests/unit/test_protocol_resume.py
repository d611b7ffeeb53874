"""The resume planner."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.resume import (
    REPLAY_MAX_BYTES,
    REPLAY_MAX_MESSAGES,
    InFlight,
    ReplayPlan,
    Reset,
    ResetReason,
    StoredRef,
    plan_resume,
)


def refs(*seqs: int, size: int = 10) -> list[StoredRef]:
    return [StoredRef(s, size) for s in seqs]


CHUNKS = ((0, "He"), (1, "ll"), (2, "o"), (3, "!"))


def test_window_defaults() -> None:
    assert REPLAY_MAX_MESSAGES == 200
    assert REPLAY_MAX_BYTES == 1 << 20


def test_nothing_missed() -> None:
    plan = plan_resume(last_message_seq=6, last_chunk=None, server_last_seq=6, stored=[])
    assert plan == ReplayPlan(
        messages=(), in_flight_seq=None, stream=(), stream_from_chunk=0, replay_bytes=0
    )
    assert isinstance(plan, ReplayPlan)
    assert plan.replayed == 0 and plan.live is False


def test_stored_messages_only() -> None:
    plan = plan_resume(
        last_message_seq=3, last_chunk=None, server_last_seq=6, stored=refs(6, 4, 5, 2, 3)
    )
    assert isinstance(plan, ReplayPlan)
    assert plan.messages == (4, 5, 6)  # ascending, those above the client's seq
    assert plan.replay_bytes == 30
    assert plan.replayed == 3 and not plan.live


def test_partial_message_finished_since_is_sent_whole() -> None:
    # The client held chunks 0..5 of seq 4, which has finished meanwhile.
    plan = plan_resume(last_message_seq=3, last_chunk=5, server_last_seq=4, stored=refs(4))
    assert isinstance(plan, ReplayPlan)
    assert plan.messages == (4,) and plan.stream == () and not plan.live


def test_in_flight_missing_chunks() -> None:
    plan = plan_resume(
        last_message_seq=3,
        last_chunk=1,
        server_last_seq=4,
        stored=refs(4),  # the in-flight row itself (status streaming): skipped
        in_flight=InFlight(4, CHUNKS),
    )
    assert isinstance(plan, ReplayPlan)
    assert plan.messages == ()
    assert plan.in_flight_seq == 4
    assert plan.stream == ((2, "o"), (3, "!"))
    assert plan.stream_from_chunk == 2
    assert plan.live and plan.replayed == 2
    assert plan.replay_bytes == 2


@pytest.mark.parametrize("last_chunk", [None, -1])
def test_in_flight_none_held(last_chunk: int | None) -> None:
    plan = plan_resume(
        last_message_seq=3,
        last_chunk=last_chunk,
        server_last_seq=4,
        stored=[],
        in_flight=InFlight(4, CHUNKS),
    )
    assert isinstance(plan, ReplayPlan)
    assert plan.stream == CHUNKS
    assert plan.stream_from_chunk == 0


def test_in_flight_all_held() -> None:
    plan = plan_resume(
        last_message_seq=3,
        last_chunk=3,
        server_last_seq=4,
        stored=[],
        in_flight=InFlight(4, CHUNKS),
    )
    assert isinstance(plan, ReplayPlan)
    assert plan.stream == () and plan.live and plan.stream_from_chunk == 4
    assert plan.replayed == 0


def test_in_flight_not_started() -> None:
    plan = plan_resume(
        last_message_seq=3, last_chunk=None, server_last_seq=4, stored=[], in_flight=InFlight(4)
    )
    assert isinstance(plan, ReplayPlan)
    assert plan.stream == () and plan.live and plan.stream_from_chunk == 0


def test_client_further_behind_gets_messages_then_all_chunks() -> None:
    # last_chunk refers to seq 2, which finished; seq 3 stored; seq 4 in flight.
    plan = plan_resume(
        last_message_seq=1,
        last_chunk=7,
        server_last_seq=4,
        stored=refs(2, 3, 4),
        in_flight=InFlight(4, CHUNKS),
    )
    assert isinstance(plan, ReplayPlan)
    assert plan.messages == (2, 3)
    assert plan.stream == CHUNKS
    assert plan.replayed == 6
    assert plan.replay_bytes == 20 + 6


def test_merged_in_flight_entries() -> None:
    merged = InFlight(4, ((2, "Hell"), (3, "o"), (6, "!!!")))
    plan = plan_resume(
        last_message_seq=3, last_chunk=3, server_last_seq=4, stored=[], in_flight=merged
    )
    assert isinstance(plan, ReplayPlan) and plan.stream == ((6, "!!!"),)
    plan = plan_resume(
        last_message_seq=3, last_chunk=2, server_last_seq=4, stored=[], in_flight=merged
    )
    assert isinstance(plan, ReplayPlan) and plan.stream == ((3, "o"), (6, "!!!"))
    # the client's position falls inside an entry: it cannot be cut
    for inside in (0, 1, 4, 5):
        out = plan_resume(
            last_message_seq=3, last_chunk=inside, server_last_seq=4, stored=[], in_flight=merged
        )
        assert out == Reset(ResetReason.CHUNKS_UNAVAILABLE, live=True)


def test_in_flight_from_text() -> None:
    assert InFlight.from_text(4, "", 0) == InFlight(4, ())
    f = InFlight.from_text(4, "Hello", 3)
    assert f.chunks == ((2, "Hello"),) and f.last_chunk == 2
    plan = plan_resume(
        last_message_seq=3, last_chunk=None, server_last_seq=4, stored=[], in_flight=f
    )
    assert isinstance(plan, ReplayPlan) and plan.stream == ((2, "Hello"),)
    out = plan_resume(last_message_seq=3, last_chunk=0, server_last_seq=4, stored=[], in_flight=f)
    assert isinstance(out, Reset) and out.reason is ResetReason.CHUNKS_UNAVAILABLE


def test_client_ahead_resets() -> None:
    out = plan_resume(last_message_seq=9, last_chunk=None, server_last_seq=6, stored=[])
    assert out == Reset(ResetReason.CLIENT_AHEAD, live=False)
    assert out.replayed == 0


def test_client_claims_more_chunks_than_delivered() -> None:
    out = plan_resume(
        last_message_seq=3,
        last_chunk=4,
        server_last_seq=4,
        stored=[],
        in_flight=InFlight(4, CHUNKS),
    )
    assert out == Reset(ResetReason.CHUNKS_UNAVAILABLE, live=True)


def test_stale_in_flight_resets() -> None:
    out = plan_resume(
        last_message_seq=4,
        last_chunk=None,
        server_last_seq=4,
        stored=[],
        in_flight=InFlight(4, CHUNKS),
    )
    assert out == Reset(ResetReason.STALE_IN_FLIGHT, live=True)


def test_stored_after_in_flight_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_resume(
            last_message_seq=1,
            last_chunk=None,
            server_last_seq=5,
            stored=refs(2, 5),
            in_flight=InFlight(4, CHUNKS),
        )


def test_window_messages() -> None:
    ok = plan_resume(
        last_message_seq=0, last_chunk=None, server_last_seq=200, stored=refs(*range(1, 201))
    )
    assert isinstance(ok, ReplayPlan) and len(ok.messages) == 200
    out = plan_resume(
        last_message_seq=0, last_chunk=None, server_last_seq=201, stored=refs(*range(1, 202))
    )
    assert out == Reset(ResetReason.TOO_MANY_MESSAGES, live=False)
    # the in-flight message counts as one when any of it is replayed
    out = plan_resume(
        last_message_seq=0,
        last_chunk=None,
        server_last_seq=201,
        stored=refs(*range(1, 201)),
        in_flight=InFlight(201, CHUNKS),
    )
    assert out == Reset(ResetReason.TOO_MANY_MESSAGES, live=True)
    ok = plan_resume(
        last_message_seq=0,
        last_chunk=None,
        server_last_seq=201,
        stored=refs(*range(1, 201)),
        in_flight=InFlight(201),
    )
    assert isinstance(ok, ReplayPlan)


def test_window_bytes() -> None:
    half = REPLAY_MAX_BYTES // 2
    ok = plan_resume(
        last_message_seq=0, last_chunk=None, server_last_seq=2, stored=refs(1, 2, size=half)
    )
    assert isinstance(ok, ReplayPlan) and ok.replay_bytes == REPLAY_MAX_BYTES
    out = plan_resume(
        last_message_seq=0,
        last_chunk=None,
        server_last_seq=3,
        stored=refs(1, 2, size=half),
        in_flight=InFlight(3, ((0, "é"),)),
    )
    assert out == Reset(ResetReason.TOO_MANY_BYTES, live=True)


def test_custom_window() -> None:
    out = plan_resume(
        last_message_seq=0,
        last_chunk=None,
        server_last_seq=3,
        stored=refs(1, 2, 3),
        max_messages=2,
    )
    assert isinstance(out, Reset) and out.reason is ResetReason.TOO_MANY_MESSAGES
    out = plan_resume(
        last_message_seq=0, last_chunk=None, server_last_seq=3, stored=refs(1, 2, 3), max_bytes=29
    )
    assert isinstance(out, Reset) and out.reason is ResetReason.TOO_MANY_BYTES


# -- property: what the client ends up with is what the server has -----------------


@given(
    st.integers(1, 30),  # n stored messages before the in-flight one
    st.lists(st.text(min_size=1, max_size=4), max_size=12),  # in-flight deltas
    st.data(),
)
def test_replay_completes_the_client(n: int, deltas: list[str], data: st.DataObject) -> None:
    in_flight = InFlight(n + 1, tuple(enumerate(deltas)))
    client_seq = data.draw(st.integers(0, n))
    client_chunk: int | None = None
    if client_seq == n:
        client_chunk = data.draw(st.none() | st.integers(-1, len(deltas) - 1))
    plan = plan_resume(
        last_message_seq=client_seq,
        last_chunk=client_chunk,
        server_last_seq=n + 1,
        stored=refs(*range(1, n + 2)),
        in_flight=in_flight,
    )
    assert isinstance(plan, ReplayPlan)
    assert plan.messages == tuple(range(client_seq + 1, n + 1))
    held = client_chunk if client_chunk is not None else -1
    have = "".join(deltas[: held + 1]) + "".join(d for _, d in plan.stream)
    assert have == "".join(deltas)
    assert [c for c, _ in plan.stream] == list(range(held + 1, len(deltas)))
    assert plan.stream_from_chunk == held + 1
