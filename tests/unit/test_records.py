"""store.records: a record's insert parameters are its fields, values as they are."""

from __future__ import annotations

import dataclasses
import datetime as dt

from store.records import SessionRecord
from store.sessions import new_session_record
from store.users import new_user_record


def test_as_row_is_asdict_without_the_copies() -> None:
    user = new_user_record(kind="guest", display_name="Ann")
    sess = new_session_record(
        user_id=user.id, refresh_hash="h" * 64, ttl=dt.timedelta(days=1), user_agent="ua", ip=None
    )
    for rec in (user, sess):
        row = rec.as_row()
        assert row == dataclasses.asdict(rec)
        assert list(row) == [f.name for f in dataclasses.fields(rec)]
        assert row["created_at"] is rec.created_at  # not a copy
    assert set(sess.as_row()) == {f.name for f in dataclasses.fields(SessionRecord)}
    assert sess.expires_at - sess.created_at == dt.timedelta(days=1)
