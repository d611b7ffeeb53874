"""Per-stage micro-benchmarks of a guest sign-up and a WebSocket connect.

Where the server's milliseconds of CPU per sign-up and per connect go, apart from
Hypercorn and Quart (``setup_cost.py`` measures the whole; ``ws_stack.py``'s
``setup_raw`` what raw Hypercorn costs). Each stage runs alone, in this process, on the
code Parley runs; CPU time per operation is the median of ``--repeat`` rounds
(``time.process_time``: this process's CPU, all threads).

Sign-up:
  ``guest_records``      store.signups.guest_signup: the user, session and two audit
                         rows made in the request, with a new refresh token and its hash
  ``store_guests_1``     store.signups.create_guests, one guest a transaction (SQLite file)
  ``store_guests_20``    the same, 20 guests a transaction (the group commit's batches)
  ``jwt_issue``          KeyRing.issue: the access token
  ``access_log_line``    one ``http_access`` line (structlog, redaction, JSON) to /dev/null
Connect:
  ``jwt_verify``         KeyRing.verify of that token
  ``thread_hop``         trio.to_thread.run_sync of a function that does nothing (what every
                         blocking driver call pays on top of its own work)
  ``redis_get_direct``   redis-py GET on this thread; ``redis_get_thread``: through a thread
                         (how RedisCacheEngine ran every command until step 16)
  ``redis_get_native``   RedisCacheEngine.get: trio sockets + hiredis (step 16)
  ``connect_cache_two``  the upgrade count + deny-list read, then the presence add: two
                         RedisCacheEngine calls (Parley until step 12)
  ``connect_cache_one``  both in one call (``hit_rate_and_join``, step 12)

    .venv/bin/python benchmarks/setup_stages.py     # writes benchmarks/results/setup_stages.json

The Redis stages need a Redis at ``--redis`` (the shared one by default; keys under a
unique prefix, deleted at the end, nothing flushed); ``--no-redis`` skips them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import machine  # noqa: E402
from benchmarks.stages import _rounds  # noqa: E402
from server.auth.tokens import KeyRing, hash_refresh_token, new_refresh_token  # noqa: E402
from server.logging import configure_logging, get_logger  # noqa: E402
from store.cache.redis import RedisCacheEngine  # noqa: E402
from store.db import create_db_engine  # noqa: E402
from store.schema import metadata  # noqa: E402
from store.signups import GuestSignup, create_guests, guest_signup  # noqa: E402

RESULTS = HERE / "results"


def _signup() -> GuestSignup:
    refresh = new_refresh_token()
    return guest_signup(
        display_name=None,
        refresh_hash=hash_refresh_token(refresh),
        ttl=dt.timedelta(days=7),
        user_agent="python-httpx/0.28.1",
        ip="10.9.0.1",
        trace_id=uuid.uuid4().hex,
    )


def guest_records(n: int) -> None:
    for _ in range(n):
        _signup()


def _store(engine: Any, batch: int) -> Callable[[int], None]:
    def run(n: int) -> None:
        made = [_signup() for _ in range(n)]  # their cost is taken out below
        for i in range(0, n, batch):
            with engine.begin() as conn:
                create_guests(conn, made[i : i + batch])

    return run


def _jwt(keyring: KeyRing) -> tuple[Callable[[int], None], Callable[[int], None]]:
    token, _ = keyring.issue(user_id=str(uuid.uuid4()), session_id="s", kind="guest", role="user")

    def issue(n: int) -> None:
        for _ in range(n):
            keyring.issue(user_id="u", session_id="s", kind="guest", role="user")

    def verify(n: int) -> None:
        for _ in range(n):
            keyring.verify(token)

    return issue, verify


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    with open("/dev/null", "w") as null, contextlib.redirect_stdout(null):
        yield


def access_log_line(n: int) -> None:
    log = get_logger("parley.access")
    with _quiet_stdout():
        for _ in range(n):
            log.info(
                "http_access",
                method="POST",
                route="/api/v1/auth/guest",
                status=201,
                durationMs=1.23,
                bytes=612,
            )


async def _thread_hop(n: int) -> None:
    for _ in range(n):
        await trio.to_thread.run_sync(int)


async def _redis(n: int, url: str, what: str, prefix: str) -> None:
    engine = RedisCacheEngine(url)
    client = redis.Redis.from_url(url)
    rl, deny, presence = f"{prefix}rl", f"{prefix}deny", f"{prefix}conns"
    try:
        for i in range(n):
            if what == "get_direct":
                client.get(deny)
            elif what == "get_thread":
                await trio.to_thread.run_sync(client.get, deny)
            elif what == "get_native":
                await engine.get(deny)
            elif what == "two":
                await engine.hit_rate_and_get(rl, 10**9, 3600, [deny])
                await engine.presence_add(presence, [f"i|{i % 10}"], 60, alive_prefix=prefix)
            else:
                await engine.hit_rate_and_join(
                    rl, 10**9, 3600, [deny], presence, f"i|{i % 10}", 60, alive_prefix=prefix
                )
    finally:
        await engine.delete(rl, deny, presence)
        await engine.aclose()
        client.close()


def _run_redis(n: int, *, url: str, what: str, prefix: str) -> None:
    trio.run(_redis, n, url, what, prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "setup_stages.json")
    args = parser.parse_args()
    n, rep = args.n, args.repeat
    configure_logging("INFO", json=True)
    keyring = KeyRing([("k1", "x" * 48)], ttl_seconds=900)
    issue, verify = _jwt(keyring)
    signup: dict[str, float] = {"guest_records": _rounds(guest_records, n, rep)}
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(f"sqlite:///{tmp}/setup.db", pool_size=1)
        metadata.create_all(engine)
        for batch in (1, 20):
            total = _rounds(_store(engine, batch), n, rep)
            # _store makes its records too: their cost is taken out
            signup[f"store_guests_{batch}"] = total - signup["guest_records"]
        engine.dispose()
    signup["jwt_issue"] = _rounds(issue, n, rep)
    signup["access_log_line"] = _rounds(access_log_line, n, rep)
    connect: dict[str, float] = {
        "jwt_verify": _rounds(verify, n, rep),
        "thread_hop": _rounds(lambda k: trio.run(_thread_hop, k), n, rep),
    }
    if not args.no_redis:
        prefix = f"bench:setup:{uuid.uuid4().hex[:8]}:"
        for what in ("get_direct", "get_thread", "get_native", "two", "one"):
            name = {"two": "connect_cache_two", "one": "connect_cache_one"}.get(
                what, f"redis_{what}"
            )
            connect[name] = _rounds(
                functools.partial(_run_redis, url=args.redis, what=what, prefix=prefix), n, rep
            )
    result = {
        "command": " ".join(["benchmarks/setup_stages.py", *sys.argv[1:]]),
        "machine": machine(),
        "n": n,
        "repeat": rep,
        "cpu_us_per_signup_stage": {k: round(v, 1) for k, v in signup.items()},
        "cpu_us_per_connect_stage": {k: round(v, 1) for k, v in connect.items()},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
