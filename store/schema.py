"""The SQL schema (SQLAlchemy Core), one definition for SQLite and MySQL/MariaDB.

Ids are UUID strings. Times are naive UTC with microseconds. Every owned row
carries a NOT NULL ``user_id`` (contract section 1: guests are real users).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = [
    "audit_events",
    "conversations",
    "job_runs",
    "message_tombstones",
    "messages",
    "metadata",
    "refresh_history",
    "sessions",
    "users",
]

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

Time = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Id = sa.String(36)
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # registered | guest
    sa.Column("role", sa.String(16), nullable=False, server_default="user"),  # user | admin
    sa.Column("email", sa.String(254), nullable=True),
    sa.Column("password_hash", sa.String(255), nullable=True),
    sa.Column("display_name", sa.String(100), nullable=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("last_active_at", Time, nullable=False),
    sa.Column("deleted_at", Time, nullable=True),
    sa.UniqueConstraint("email"),
    sa.Index(None, "kind", "last_active_at"),
    sa.Index(None, "deleted_at"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("refresh_hash", sa.String(64), nullable=False),  # sha256 hex of the current token
    sa.Column("rotation_counter", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("last_used_at", Time, nullable=False),
    sa.Column("expires_at", Time, nullable=False),
    sa.Column("revoked_at", Time, nullable=True),
    sa.Column("revoked_reason", sa.String(32), nullable=True),
    sa.Column("user_agent", sa.String(255), nullable=True),
    sa.Column("ip", sa.String(45), nullable=True),
    sa.UniqueConstraint("refresh_hash"),
    sa.Index(None, "user_id", "revoked_at"),
    sa.Index(None, "expires_at"),
)

# Hashes of refresh tokens already rotated away: presenting one again is reuse.
refresh_history = sa.Table(
    "refresh_history",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("session_id", Id, sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("user_id", Id, nullable=False),
    sa.Column("rotated_at", Time, nullable=False),
    sa.Index(None, "session_id"),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("deleted_at", Time, nullable=True),
    # list: WHERE user_id=? AND deleted_at IS NULL ORDER BY updated_at DESC, id DESC
    sa.Index(None, "user_id", "deleted_at", "updated_at", "id"),
    sa.Index(None, "deleted_at"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id"), nullable=False),
    sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # user | assistant | system
    sa.Column("content", LongText, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("finish_reason", sa.String(32), nullable=True),
    # chat.send messageId (idempotency key) on user messages
    sa.Column("client_message_id", Id, nullable=True),
    # assistant message -> the user message it answers
    sa.Column("parent_id", Id, nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("chunk_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("deleted_at", Time, nullable=True),
    sa.UniqueConstraint("conversation_id", "seq"),
    sa.UniqueConstraint("conversation_id", "client_message_id"),
    sa.Index(None, "parent_id"),
    sa.Index(None, "status", "updated_at"),
    sa.Index(None, "deleted_at"),
    # busy and per-user concurrency checks: WHERE user_id=? AND status='streaming'
    sa.Index(None, "user_id", "status"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", Time, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    # who the event is about: a user id, or "email:<sha256 prefix>" for an unknown account
    sa.Column("subject_id", sa.String(64), nullable=False),
    sa.Column("actor_id", Id, nullable=True),  # who did it (admin reads: the admin)
    sa.Column("ip", sa.String(45), nullable=True),
    sa.Column("trace_id", sa.String(32), nullable=True),
    sa.Column("details", sa.Text, nullable=True),  # JSON, never PII in clear
    # what the action was done to: user, session, conversation, audit (contract section 7)
    sa.Column("target_type", sa.String(32), nullable=True),
    sa.Column("target_id", sa.String(64), nullable=True),
    sa.Column("user_agent", sa.String(255), nullable=True),
    sa.Index(None, "at"),
    sa.Index(None, "action", "at"),
    sa.Index(None, "subject_id", "at"),
    sa.Index(None, "actor_id", "at"),
)

# One row per client messageId whose message the retention job purged: the sha256 of
# "conversation id:messageId". A late chat.send with it answers REPLAY_EXPIRED.
message_tombstones = sa.Table(
    "message_tombstones",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("purged_at", Time, nullable=False),
    sa.Index(None, "purged_at"),
)

# Scheduled jobs (jobs/): a lease so two instances never run one job at once, and the
# outcome of the last successful run (the "did not run" alert reads it).
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("lock_owner", sa.String(64), nullable=True),
    sa.Column("locked_until", Time, nullable=True),
    sa.Column("last_success_at", Time, nullable=True),
    sa.Column("last_result", sa.Text, nullable=True),
)
