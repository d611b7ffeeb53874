"""``parley check``: what an operator runs before and after a deploy.

One line per check, ``NAME: ok (detail)`` or ``NAME: FAIL detail``; exit 1 if any
check failed, 0 otherwise. A check that does not apply says ``skipped`` and does not fail.

- settings: every ``PARLEY_*`` value valid (production's requirements included);
- database: reachable, and its schema at the migrations' head;
- clock: this machine's clock against the database server's (MySQL/MariaDB), at most
  :data:`MAX_SKEW_SECONDS` apart: token expiry, guest expiry and turn times mix both;
- redis: reachable (when ``PARLEY_REDIS_URL`` is set), with a memory policy that never
  evicts keys that carry a TTL (deny-list entries do: see deploy/redis.conf);
- upstream: the provider's settings; with ``--upstream`` one tiny request (1 token);
- jwt keys: the key ring parses, its ids are unique, the newest key signs a token that
  the ring verifies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from server.settings import Settings, SettingsError, load_settings

__all__ = ["MAX_SKEW_SECONDS", "Result", "check_all", "run_checks"]

#: Clock skew with the database beyond this fails the check.
MAX_SKEW_SECONDS = 2.0
#: Redis memory policies that may evict a key that has a TTL (every Parley key has one).
EVICTING = ("allkeys-", "volatile-")


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    skipped: bool = False

    def line(self) -> str:
        if self.skipped:
            return f"{self.name}: skipped ({self.detail})"
        return f"{self.name}: ok ({self.detail})" if self.ok else f"{self.name}: FAIL {self.detail}"


def _now() -> float:
    """This machine's clock (a function, so tests can skew it)."""
    return time.time()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _safe_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable URL)"


def check_database(settings: Settings) -> tuple[Result, Result]:
    """The database line and the clock line (both need one connection)."""
    from alembic.runtime.migration import MigrationContext

    from jobs.dumpfmt import migrations_head
    from store.db import create_db_engine

    where = _safe_url(settings.database_url)
    engine = create_db_engine(settings.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            revision = MigrationContext.configure(conn).get_current_revision()
            clock = _clock(conn, settings)
    except Exception as exc:
        fail = Result("database", False, f"cannot reach {where}: {_one_line(exc)}")
        return fail, Result("clock", False, "not checked: the database is unreachable")
    finally:
        engine.dispose()
    head = migrations_head()
    if revision != head:
        db = Result(
            "database",
            False,
            f"{where} is at schema revision {revision}, the migrations' head is {head}: "
            "run `parley migrate`",
        )
    else:
        db = Result("database", True, f"{where}, schema at head {head}")
    return db, clock


def _clock(conn: sa.Connection, settings: Settings) -> Result:
    if settings.is_sqlite:
        return Result("clock", True, "embedded SQLite uses this machine's clock")
    before = _now()
    # NOW(6) in the session's time zone, turned back into seconds since the epoch
    db = float(conn.execute(sa.text("SELECT UNIX_TIMESTAMP(NOW(6))")).scalar_one())
    after = _now()
    skew = db - (before + after) / 2
    detail = f"database clock {skew:+.3f} s from this machine's (limit ±{MAX_SKEW_SECONDS:g} s)"
    if abs(skew) > MAX_SKEW_SECONDS + (after - before) / 2:
        return Result("clock", False, detail + ": fix NTP on one of them")
    return Result("clock", True, detail)


def check_redis(settings: Settings) -> Result:
    if not settings.redis_url:
        return Result(
            "redis", True, "PARLEY_REDIS_URL is empty: in-process cache, one process", skipped=True
        )
    import redis

    where = _safe_url(settings.redis_url)
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
    )
    try:
        client.ping()
        persistence = client.info("persistence")
        policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", "?"))
    except redis.exceptions.ResponseError:
        # CONFIG may be renamed or disabled on a managed Redis: reachable is what matters
        policy = "unknown (CONFIG refused)"
    except Exception as exc:
        return Result("redis", False, f"cannot reach {where}: {_one_line(exc)}")
    finally:
        client.close()
    aof = "on" if persistence.get("aof_enabled") else "off"
    detail = f"{where}, maxmemory-policy {policy}, appendonly {aof}"
    if policy.startswith(EVICTING):
        return Result(
            "redis",
            False,
            f"{detail}: this policy may evict deny-list entries (revoked sessions would work "
            "again); use noeviction (deploy/redis.conf)",
        )
    return Result("redis", True, detail)


def check_upstream(settings: Settings, *, contact: bool) -> Result:
    from server.llm import ChatMessage, StreamEnd, create_provider

    try:
        provider = create_provider(
            settings.llm_provider,
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key,
            model=settings.llm_model,
            transport=settings.llm_http_client,
        )
    except ValueError as exc:
        return Result("upstream", False, _one_line(exc))
    if settings.llm_provider == "simulated":
        return Result("upstream", True, "simulated model: nothing to reach")
    what = f"{settings.llm_base_url}, model {settings.llm_model}"
    if not contact:
        return Result(
            "upstream", True, f"{what}: not contacted (--upstream sends one request)", skipped=True
        )

    import trio

    async def one_request() -> tuple[float, str]:
        t0 = time.perf_counter()
        try:
            with trio.fail_after(settings.upstream_first_token_timeout):
                async with provider.stream(
                    [ChatMessage("user", "Reply with one word: ok")], max_tokens=1
                ) as events:
                    async for event in events:
                        if isinstance(event, StreamEnd):
                            break
            return time.perf_counter() - t0, ""
        finally:
            await provider.aclose()

    try:
        seconds, _ = trio.run(one_request)
    except trio.TooSlowError:
        return Result(
            "upstream",
            False,
            f"{what}: no answer within {settings.upstream_first_token_timeout:g} s",
        )
    except Exception as exc:
        return Result("upstream", False, f"{what}: {_one_line(exc)}")
    return Result("upstream", True, f"{what}: answered one token in {seconds * 1000:.0f} ms")


def check_keys(settings: Settings) -> Result:
    from server.auth.tokens import KeyRing

    try:
        ring = settings.jwt_key_ring()
        keyring = KeyRing(ring, ttl_seconds=settings.access_token_ttl_seconds)
        token, _ = keyring.issue(user_id="check", session_id="check", kind="guest", role="user")
        claims = keyring.verify(token)
        if claims.sub != "check":  # pragma: no cover - verify() checks the signature
            raise SettingsError("a token signed by the newest key does not verify")
    except Exception as exc:
        return Result("jwt keys", False, _one_line(exc))
    source = "PARLEY_JWT_KEYS" if settings.jwt_keys.strip() else "development key in data dir"
    return Result(
        "jwt keys",
        True,
        f"{len(ring)} key(s) from {source}, newest {ring[0][0]!r} signs, sign+verify round trip",
    )


def check_all(settings: Settings, *, upstream: bool = False) -> list[Result]:
    db, clock = check_database(settings)
    return [
        db,
        clock,
        check_redis(settings),
        check_upstream(settings, contact=upstream),
        check_keys(settings),
    ]


def run_checks(*, upstream: bool = False, out: Callable[[str], Any] = print) -> int:
    """Load the settings, run every check, print one line each; 0 only if all pass."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        out(f"settings: FAIL {exc}")
        return 1
    out(f"settings: ok (env {settings.env}, provider {settings.llm_provider})")
    results = check_all(settings, upstream=upstream)
    for r in results:
        out(r.line())
    return 0 if all(r.ok for r in results) else 1
