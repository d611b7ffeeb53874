"""What a running server holds: settings, database, cache engine, keys, metrics."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import trio

from server.auth.passwords import PasswordService
from server.auth.tokens import KeyRing
from server.metrics import Metrics
from server.settings import Settings
from store.batch import GroupCommit
from store.cache import CacheEngine, create_cache_engine
from store.db import Database
from store.signups import GuestSignup, create_guests

__all__ = ["Services", "build_services"]

SIGNUP_BATCH_MAX = 64  # guest sign-ups stored in one transaction, at most


@dataclass
class Services:
    settings: Settings
    db: Database
    cache: CacheEngine
    keyring: KeyRing
    passwords: PasswordService
    metrics: Metrics
    draining: trio.Event = field(default_factory=trio.Event)
    # this process among the instances sharing the cache/broker (leases, presence, heartbeat)
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # session id -> monotonic expiry: revocations not yet written to the cache
    pending_denies: dict[str, float] = field(default_factory=dict)
    # session id -> monotonic expiry: the database said this session is live (a short
    # positive cache: server/auth/identity.is_session_denied)
    live_sessions: dict[str, float] = field(default_factory=dict)
    # user id -> monotonic expiry: this process noted the user's activity (or created the
    # user) within the hour (server/auth/identity.note_activity skips the cache then)
    active_noted: dict[str, float] = field(default_factory=dict)
    # guest sign-ups that arrive together share one transaction (server/api/auth.py)
    guest_signups: GroupCommit[GuestSignup, GuestSignup] = field(init=False)

    def __post_init__(self) -> None:
        self.guest_signups = GroupCommit(self.db, create_guests, batch_max=SIGNUP_BATCH_MAX)

    async def aclose(self) -> None:
        await self.cache.aclose()
        self.db.dispose()


def build_services(settings: Settings, *, passwords: PasswordService | None = None) -> Services:
    return Services(
        settings=settings,
        db=Database(settings.database_url, pool_size=settings.db_pool_size),
        cache=create_cache_engine(settings.redis_url or None),
        keyring=KeyRing(settings.jwt_key_ring(), ttl_seconds=settings.access_token_ttl_seconds),
        passwords=passwords or PasswordService(),
        metrics=Metrics(),
    )
