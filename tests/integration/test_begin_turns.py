"""Turn starts in one transaction (group commit), on SQLite and on MariaDB."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

from store import conversations as conv_repo
from store import sessions as sessions_repo
from store import users as users_repo
from store.db import Database, create_db_engine, multi_statement_connection
from store.messages import BeginOutcome, BeginRequest, begin_turns
from store.schema import conversations, messages
from store.turn_start import CONTEXT_MESSAGES, _run_sets

# MySQL twice: statement by statement, and on the turn-start lane (multi-statements: every
# read in one round trip, every write in another); the same answers on all three
BACKEND_URLS = [
    "sqlite_url",
    pytest.param("mysql_url", marks=pytest.mark.mysql),
    pytest.param("mysql_url:multi", marks=pytest.mark.mysql, id="mysql_multi"),
]


@pytest.fixture(params=BACKEND_URLS)
def engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    name, _, lane = request.param.partition(":")
    eng = create_db_engine(
        request.getfixturevalue(name), pool_size=1, multi_statements=lane == "multi"
    )
    yield eng
    eng.dispose()


def setup_user(engine: sa.Engine, n_convs: int) -> tuple[str, list[str]]:
    with engine.begin() as c:
        user = users_repo.create_user(c, kind="guest")
        convs = [
            conv_repo.create_conversation(c, user_id=user.id, title="t").id for _ in range(n_convs)
        ]
    return user.id, convs


def req(
    user: str, conv: str, cid: str | None = None, content: str = "hi", must_exist: bool = False
) -> BeginRequest:
    return BeginRequest(user, conv, cid or str(uuid.uuid4()), content, must_exist)


def run(engine: sa.Engine, requests: list[BeginRequest]) -> list[Any]:
    with engine.begin() as c:
        return begin_turns(c, requests)


def test_batch_decides_each_request_in_order(engine: sa.Engine) -> None:
    alice, (a1, a2, a3, a4) = setup_user(engine, 4)
    bob, (b1,) = setup_user(engine, 1)
    dup = str(uuid.uuid4())
    results = run(
        engine,
        [
            req(alice, a1, dup, "first"),
            req(alice, a1),  # same conversation: busy behind the first
            req(alice, a1, dup, "first"),  # same messageId in the batch: duplicate
            req(alice, a1, dup, "other"),  # ... with other content: conflict
            req(alice, a2),
            req(alice, a3),
            req(alice, a4),  # a fourth streaming turn for alice
            req(bob, a1),  # not bob's conversation
            req(bob, b1),
            req(bob, b1, must_exist=True),  # the cache knew it, the database does not
        ],
    )
    assert [r.outcome for r in results] == [
        BeginOutcome.STARTED,
        BeginOutcome.BUSY,
        BeginOutcome.DUPLICATE,
        BeginOutcome.CONFLICT,
        BeginOutcome.STARTED,
        BeginOutcome.STARTED,
        BeginOutcome.TOO_MANY,
        BeginOutcome.NOT_FOUND,
        BeginOutcome.STARTED,
        BeginOutcome.EXPIRED,
    ]
    first = results[0]
    assert (first.user_message.seq, first.assistant_message.seq) == (1, 2)
    assert results[2].assistant_message.id == first.assistant_message.id
    assert first.history == [("user", "first")]
    with engine.connect() as c:
        rows = c.execute(
            sa.select(
                messages.c.conversation_id, messages.c.seq, messages.c.role, messages.c.status
            )
            .where(messages.c.user_id.in_([alice, bob]))
            .order_by(messages.c.conversation_id, messages.c.seq)
        ).all()
        seqs = dict(
            c.execute(
                sa.select(conversations.c.id, conversations.c.last_seq).where(
                    conversations.c.id.in_([a1, a2, a3, a4, b1])
                )
            ).all()
        )
    assert len(rows) == 8  # four turns started, two rows each
    assert seqs == {a1: 2, a2: 2, a3: 2, a4: 0, b1: 2}
    assert {r.status for r in rows if r.role == "assistant"} == {"streaming"}


def test_next_turn_sees_history_and_numbers_on(engine: sa.Engine) -> None:
    user, (conv,) = setup_user(engine, 1)
    (first,) = run(engine, [req(user, conv, content="one")])
    with engine.begin() as c:
        c.execute(
            messages.update()
            .where(messages.c.id == first.assistant_message.id)
            .values(status="completed", content="answer one")
        )
    (second,) = run(engine, [req(user, conv, content="two")])
    assert second.outcome is BeginOutcome.STARTED
    assert (second.user_message.seq, second.assistant_message.seq) == (3, 4)
    assert second.history == [("user", "one"), ("assistant", "answer one"), ("user", "two")]


def test_empty_batch(engine: sa.Engine) -> None:
    assert run(engine, []) == []


def test_what_a_user_keeps_is_measured_for_the_batch_and_capped(engine: sa.Engine) -> None:
    alice, (a1, a2) = setup_user(engine, 2)
    bob, (b1,) = setup_user(engine, 1)
    carol, (c1,) = setup_user(engine, 1)
    kept = str(uuid.uuid4())
    first = run(engine, [req(alice, a1, kept, "x" * 30), req(bob, b1, content="y" * 5)])
    assert [r.stored_bytes for r in first] == [None, None]  # nobody asked to measure
    with engine.begin() as c:  # alice's answer is stored: 30 + 10 characters kept
        c.execute(
            messages.update()
            .where(messages.c.conversation_id == a1, messages.c.role == "assistant")
            .values(content="z" * 10, status="completed")
        )
    capped = [
        BeginRequest(alice, a2, str(uuid.uuid4()), "more", max_stored_bytes=40),
        BeginRequest(alice, a1, kept, "x" * 30, max_stored_bytes=40),  # a replay: allowed
        BeginRequest(bob, b1, str(uuid.uuid4()), "ok", max_stored_bytes=40),
        BeginRequest(carol, c1, str(uuid.uuid4()), "n" * 12, max_stored_bytes=40),
        BeginRequest(carol, c1, str(uuid.uuid4()), "again", max_stored_bytes=40),
    ]
    results = run(engine, capped)
    assert [r.outcome for r in results] == [
        BeginOutcome.OVER_QUOTA,  # 40 kept, at the cap: nothing new
        BeginOutcome.DUPLICATE,
        BeginOutcome.BUSY,  # bob's first turn still streams
        BeginOutcome.STARTED,  # carol keeps nothing yet
        BeginOutcome.BUSY,  # her second in the same conversation, behind the first
    ]
    assert results[0].stored_bytes == 40
    assert results[3].stored_bytes == 12  # what she keeps with this message
    with engine.connect() as c:  # the refusal stored nothing
        assert (
            c.execute(
                sa.select(sa.func.count()).where(messages.c.conversation_id == a2)
            ).scalar_one()
            == 0
        )


def test_batches_of_new_sizes_add_nothing_to_the_compiled_cache(engine: sa.Engine) -> None:
    # The conversations' CASE UPDATE has one WHEN per conversation: cached, each batch size
    # was a new entry holding its values (the soak's slow RSS growth).
    user, convs = setup_user(engine, 12)
    run(engine, [req(user, convs[0])])  # every other statement compiled and cached once
    cache = engine._compiled_cache
    assert cache is not None
    before = len(cache)
    for size in (2, 3):  # a user streams at most 3 at once: batches of 2 and 3 users' turns
        others = [setup_user(engine, 1) for _ in range(size)]
        results = run(engine, [req(u, c[0]) for u, c in others])
        assert all(r.outcome is BeginOutcome.STARTED for r in results)
    assert len(cache) == before
    with engine.connect() as c:  # and the sequence numbers moved as before
        seqs = c.execute(sa.select(conversations.c.last_seq).where(conversations.c.id == convs[0]))
        assert seqs.scalar_one() == 2


def test_a_session_to_check_is_asked_in_the_same_transaction(engine: sa.Engine) -> None:
    alice, (a1, a2, a3) = setup_user(engine, 3)
    bob, (b1, b2) = setup_user(engine, 2)
    with engine.begin() as c:
        live, revoked, expired = (
            sessions_repo.create_session(
                c,
                user_id=alice,
                refresh_hash=uuid.uuid4().hex * 2,
                ttl=ttl,
                user_agent=None,
                ip=None,
            ).id
            for ttl in (dt.timedelta(days=1), dt.timedelta(days=1), dt.timedelta(seconds=-1))
        )
        bobs = sessions_repo.create_session(
            c,
            user_id=bob,
            refresh_hash=uuid.uuid4().hex * 2,
            ttl=dt.timedelta(days=1),
            user_agent=None,
            ip=None,
        ).id
        sessions_repo.revoke_session(c, revoked, reason="logout")
    results = run(
        engine,
        [
            BeginRequest(alice, a1, str(uuid.uuid4()), "hi", check_session=live),
            BeginRequest(alice, a2, str(uuid.uuid4()), "hi", check_session=revoked),
            BeginRequest(alice, a3, str(uuid.uuid4()), "hi", check_session=expired),
            BeginRequest(bob, b1, str(uuid.uuid4()), "hi"),  # nothing to check
        ],
    )
    assert [r.outcome for r in results] == [
        BeginOutcome.STARTED,
        BeginOutcome.SESSION_REVOKED,
        BeginOutcome.SESSION_REVOKED,
        BeginOutcome.STARTED,
    ]
    with engine.begin() as c:  # a deleted user's sessions are not live either
        users_repo.soft_delete_user(c, bob)
    (gone,) = run(engine, [BeginRequest(bob, b2, str(uuid.uuid4()), "hi", check_session=bobs)])
    assert gone.outcome is BeginOutcome.SESSION_REVOKED
    with engine.connect() as c:  # the refused starts stored nothing
        stored = c.execute(
            sa.select(messages.c.conversation_id).where(
                messages.c.conversation_id.in_([a2, a3, b2])
            )
        ).all()
    assert stored == []


def test_the_context_is_the_newest_messages_oldest_first(engine: sa.Engine) -> None:
    user, (conv,) = setup_user(engine, 1)
    for i in range(CONTEXT_MESSAGES // 2 + 1):  # 52 messages stored, the last 50 sent
        (r,) = run(engine, [req(user, conv, content=f"q{i}")])
        with engine.begin() as c:
            c.execute(
                messages.update()
                .where(messages.c.id == r.assistant_message.id)
                .values(status="completed", content=f"a{i}" if i != 3 else "")
            )
    (last,) = run(engine, [req(user, conv, content="last")])
    texts = [text for _role, text in last.history]
    # 50 rows read (q1 a1 ... q25 a25, the empty a3 left out), then the new message
    assert texts[:4] == ["q1", "a1", "q2", "a2"] and "a3" not in texts
    assert texts[-3:] == ["q25", "a25", "last"] and len(texts) == CONTEXT_MESSAGES


@pytest.mark.mysql
def test_the_lane_starts_a_turn_in_two_round_trips(mysql_url: str) -> None:
    counted: list[Any] = []
    original = pymysql.connections.Connection._execute_command

    def counting(self: Any, command: int, sql: Any) -> Any:
        counted.append(command)
        return original(self, command, sql)

    # the reads, then the writes with the COMMIT; or 7 statements (a first turn reads no
    # history) and COMMIT
    db = Database(mysql_url, pool_size=1)
    user, (c1, c2) = setup_user(db.engine, 2)
    for lane, conv, expected in ((True, c1, 2), (False, c2, 8)):
        db.run_tx(lambda c: c.exec_driver_sql("SELECT 1"), multi_statements=lane)  # connected
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pymysql.connections.Connection, "_execute_command", counting)
            counted.clear()
            (result,) = db.run_tx(
                lambda c, conv=conv: begin_turns(c, [req(user, conv)]), multi_statements=lane
            )
        assert result.outcome is BeginOutcome.STARTED
        # no ping before, no rollback after: only the statements and the commit
        assert len(counted) == expected, (lane, counted)
    db.dispose()


def _other_connection_locks(mysql_url: str, user: str) -> bool:
    """Whether another connection can lock the user's row at once (no open transaction
    holds it)."""
    eng = create_db_engine(mysql_url, pool_size=1)
    try:
        with eng.begin() as c:
            c.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
            try:
                c.exec_driver_sql("SELECT id FROM users WHERE id = %s FOR UPDATE", (user,))
            except sa.exc.OperationalError:
                return False
            return True
    finally:
        eng.dispose()


@pytest.mark.mysql
def test_the_lanes_in_band_commit_stores_and_releases_and_is_not_reused(mysql_url: str) -> None:
    eng = create_db_engine(mysql_url, pool_size=1, multi_statements=True)  # one connection
    user, (c1, c2, c3) = setup_user(eng, 3)

    def stored(conv: str) -> int:
        with eng.connect() as c:
            query = sa.select(sa.func.count()).where(messages.c.conversation_id == conv)
            return int(c.execute(query).scalar_one())

    try:
        # a start commits in band: stored, its locks released
        (started,) = run(eng, [req(user, c1)])
        assert started.outcome is BeginOutcome.STARTED
        assert stored(c1) == 2 and _other_connection_locks(mysql_url, user)
        # a batch refused whole writes nothing: its transaction (the locks) is committed the
        # ordinary way
        (busy,) = run(eng, [req(user, c1)])
        assert busy.outcome is BeginOutcome.BUSY
        assert _other_connection_locks(mysql_url, user)
        # work after the writes is out of the transaction: what failed after them is stored
        with pytest.raises(LookupError), eng.begin() as c:
            begin_turns(c, [req(user, c2)])
            raise LookupError("after the writes")
        assert stored(c2) == 2

        # the next transaction on the same connection commits its writes with a COMMIT of
        # its own: the mark was for the statements before
        with eng.begin() as c:
            c.exec_driver_sql("UPDATE conversations SET title = 'renamed' WHERE id = %s", (c3,))
        assert _other_connection_locks(mysql_url, user)
        with eng.connect() as c:
            title = c.execute(
                sa.select(conversations.c.title).where(conversations.c.id == c3)
            ).scalar_one()
        assert title == "renamed"

        # a mark is refused while a transaction is open
        with pytest.raises(RuntimeError, match="open"), eng.begin() as c:
            c.exec_driver_sql("UPDATE users SET kind = kind WHERE id = %s", (user,))
            lane = multi_statement_connection(c)
            assert lane is not None
            lane.mark_committed()
        assert _other_connection_locks(mysql_url, user)
    finally:
        eng.dispose()


@pytest.mark.mysql
def test_a_failed_statement_on_the_lane_is_sqlalchemys_error_without_its_values(
    mysql_url: str,
) -> None:
    eng = create_db_engine(mysql_url, pool_size=1, multi_statements=True)
    try:
        with pytest.raises(sa.exc.DBAPIError) as failed, eng.begin() as c:
            lane = multi_statement_connection(c)
            assert lane is not None
            _run_sets(c, lane, "SELECT 1;\nSELECT no_such_column FROM users WHERE id = %s", ["q"])
        assert "no_such_column" in str(failed.value)  # the statement, for the log
        assert "'q'" not in str(failed.value)  # never its values (message text)
        with eng.connect() as c:  # the connection is usable again
            assert c.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        eng.dispose()
