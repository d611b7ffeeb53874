"""Hostile input over real sockets (both backends): each gets a clear refusal, the process
keeps serving others, and nothing malformed is stored. Login answers the same, in about the
same time, for an unknown email and a wrong password. A cross-site page cannot open the
WebSocket (Origin)."""

from __future__ import annotations

import socket
import statistics
import time
import uuid

import httpx
import pytest
from trio_websocket import ConnectionRejected, open_websocket_url

from server.auth.passwords import PasswordService
from tests.support.live import LiveServer
from tests.support.wsclient import Rest

LIVE_SETTINGS = {"login_failures_per_ip": 10**6, "signups_per_ip_per_hour": 10**6}


def _client(live: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live.http_url, timeout=10)


def _account(http: httpx.Client) -> tuple[str, dict[str, str]]:
    email = f"hostile-{uuid.uuid4().hex[:10]}@example.com"
    r = http.post(
        "/api/v1/auth/register",
        json={"email": email, "password": "hostile pass 1"},
        headers={"X-Forwarded-For": f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.5"},
    )
    assert r.status_code == 201
    return email, {"Authorization": f"Bearer {r.json()['accessToken']}"}


BAD_BODIES: list[tuple[str, bytes, int]] = [
    ("invalid UTF-8", b'{"title": "\xff\xfe"}', 400),
    ("lone surrogate", b'{"title": "\\ud800"}', 400),
    ("NUL", b'{"title": "a\\u0000b"}', 400),
    ("control characters", b'{"title": "a\\u0007\\u001bb"}', 400),
    ("huge number", b'{"title": ' + b"9" * 5000 + b"}", 400),
    ("deep nesting", b'{"title": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400),
    ("duplicate keys", b'{"title": "one", "title": "two"}', 400),
    ("not an object", b'["title"]', 400),
    ("over 64 KiB", b'{"title": "' + b"a" * 70_000 + b'"}', 413),
]


@pytest.mark.parametrize(("what", "body", "status"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_hostile_bodies_are_refused_and_store_nothing(
    live: LiveServer, what: str, body: bytes, status: int
) -> None:
    with _client(live) as http:
        _, auth = _account(http)
        headers = {**auth, "Content-Type": "application/json"}
        r = http.post("/api/v1/conversations", content=body, headers=headers)
        assert r.status_code == status, (what, r.text[:200])
        assert r.json()["error"]["code"] in ("VALIDATION_FAILED", "PAYLOAD_TOO_LARGE")
        assert http.get("/api/v1/conversations", headers=auth).json()["items"] == []
        r = http.patch(
            f"/api/v1/conversations/{uuid.uuid4()}", content=body, headers=headers
        )  # an unknown id: 404 before or after the body, never a 5xx
        assert r.status_code < 500
        assert http.get("/healthz").status_code == 200


def test_long_headers_and_subprotocols_are_refused(live: LiveServer) -> None:
    with _client(live) as http:
        r = http.get("/healthz", headers={"X-Long": "a" * 100_000})
        assert 400 <= r.status_code < 500
        assert http.get("/healthz").status_code == 200


async def test_long_subprotocol_string_is_refused(live: LiveServer) -> None:
    """A 100 KB subprotocol offer is refused before the upgrade (431, Hypercorn's header
    bound); the next socket is served."""
    token = (await Rest(live.http_url).register())["accessToken"]
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as raw:
        raw.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Protocol: chat.v1, bearer."
            + token.encode()
            + b"x" * 100_000
            + b"\r\n\r\n"
        )
        assert raw.recv(100).startswith(b"HTTP/1.1 431")
    async with open_websocket_url(live.ws_url, subprotocols=["chat.v1", f"bearer.{token}"]) as ws:
        assert '"session.ready"' in await ws.get_message()


async def test_cross_site_websocket_hijacking_is_refused(live: LiveServer) -> None:
    """A page on another site cannot open the socket, even holding a valid token."""
    token = (await Rest(live.http_url).register())["accessToken"]
    for origin in ("https://evil.example", "null", live.http_url + ".evil.example"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(
                live.ws_url,
                subprotocols=["chat.v1", f"bearer.{token}"],
                extra_headers=[("Origin", origin)],
            ):
                pass
        assert rejected.value.status_code == 403
    async with open_websocket_url(
        live.ws_url,
        subprotocols=["chat.v1", f"bearer.{token}"],
        extra_headers=[("Origin", live.http_url)],
    ) as ws:
        assert '"session.ready"' in await ws.get_message()


def _slow_socket(live: LiveServer, first: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    s.sendall(first)
    return s


def _closed_within(s: socket.socket, seconds: float, drip: bytes = b"") -> float:
    """Drip one byte a second until the server closes; the time it took."""
    start = time.monotonic()
    s.settimeout(1.0)
    while time.monotonic() - start < seconds:
        try:
            if drip:
                s.sendall(drip)
            data = s.recv(4096)
            if data == b"" or b"HTTP/1.1 4" in data or b"HTTP/1.1 5" in data:
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    raise AssertionError(f"still open after {seconds} s")


def test_slow_loris_and_half_open_upgrades(live: LiveServer) -> None:
    """Many half-open requests and upgrades at once: others are served meanwhile, and the
    server drops the half-open ones on its own (Hypercorn's keep-alive timeout)."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
    )
    socks = [_slow_socket(live, head if i % 2 else upgrade) for i in range(60)]
    try:
        with _client(live) as http:
            t0 = time.monotonic()
            assert http.get("/healthz").status_code == 200
            assert time.monotonic() - t0 < 2.0
        took = _closed_within(socks[0], 30.0, drip=b"X")
        assert took < 30.0
        took = _closed_within(socks[1], 30.0)
        assert took < 30.0
    finally:
        for s in socks:
            s.close()


def test_login_timing_unknown_email_vs_wrong_password(live: LiveServer) -> None:
    """Same answer, about the same time: the unknown email verifies against a dummy hash
    (structurally equal work). Measured with the real argon2id parameters."""
    real = PasswordService()
    assert live.svc is not None
    live.svc.passwords = real
    try:
        with _client(live) as http:
            emails = [_account(http)[0] for _ in range(4)]
            unknown, wrong = [], []
            answers = set()
            for i in range(12):
                for bucket, email in (
                    (unknown, f"nobody-{uuid.uuid4().hex[:8]}@example.com"),
                    (wrong, emails[i % 4]),
                ):
                    t0 = time.perf_counter()
                    r = http.post(
                        "/api/v1/auth/login",
                        json={"email": email, "password": "not the password"},
                        headers={"X-Forwarded-For": f"10.{i}.{len(bucket)}.9"},
                    )
                    bucket.append(time.perf_counter() - t0)
                    if r.status_code == 401:
                        answers.add(
                            (r.status_code, r.json()["error"]["code"], r.json()["error"]["message"])
                        )
            assert answers == {(401, "INVALID_CREDENTIALS", "wrong email or password")}
            a, b = statistics.median(unknown), statistics.median(wrong)
            print(
                f"login medians: unknown email {a * 1000:.1f} ms, wrong password {b * 1000:.1f} ms"
            )
            assert abs(a - b) < max(0.5 * max(a, b), 0.015), (a, b)
    finally:
        live.svc.passwords = live.passwords
