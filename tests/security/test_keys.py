"""Keys and secrets: production refuses weak JWT keys; a rotation walked with live tokens
and an open socket (add a key, promote it, retire the old one): nobody is logged out, no
socket is closed (both backends)."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import jwt
import pytest
import trio

from server.auth.passwords import PasswordService
from server.auth.tokens import KeyRing
from server.settings import SettingsError, load_settings, weak_jwt_keys
from tests.conftest import BACKENDS, make_settings
from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect

OLD = ("old", secrets.token_urlsafe(32))
NEW = ("new", secrets.token_urlsafe(32))


def _production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: str) -> None:
    monkeypatch.setenv("PARLEY_ENV", "production")
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PARLEY_DATABASE_URL", "mysql+pymysql://u:p@db:3306/parley")
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("PARLEY_JWT_KEYS", keys)


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ("k1:" + "a" * 40, "shorter than 43"),
        ("k1:" + "ab" * 30, "not random"),
        ("k1:REPLACE-WITH-48-RANDOM-CHARACTERS-xxxxxxxxxxxxxxxx", "not random"),
        (f"dev-1a2b:{NEW[1]}", "development key"),
        (f"k2:{NEW[1]},k1:{NEW[1]}", "repeats key 'k2'"),
    ],
)
def test_production_refuses_weak_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: str, says: str
) -> None:
    _production(monkeypatch, tmp_path, keys)
    with pytest.raises(SettingsError, match="PARLEY_JWT_KEYS") as err:
        load_settings()
    assert says in str(err.value)
    assert NEW[1] not in str(err.value)  # never the secret itself


def test_production_refuses_the_development_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dev = secrets.token_urlsafe(40)
    (tmp_path / "jwt-dev-key").write_text(f"dev-0001:{dev}\n")
    _production(monkeypatch, tmp_path, f"prod:{dev}")
    with pytest.raises(SettingsError, match="development key"):
        load_settings()
    _production(monkeypatch, tmp_path, f"prod:{NEW[1]},old:{OLD[1]}")
    assert load_settings().jwt_key_ring() == [("prod", NEW[1]), ("old", OLD[1])]
    assert weak_jwt_keys([NEW, OLD], tmp_path) == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_rotation_with_live_tokens_and_an_open_socket(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, fast_passwords: PasswordService
) -> None:
    settings = make_settings(
        backend,
        request,
        tmp_path,
        jwt_keys=f"{OLD[0]}:{OLD[1]}",
        ws_upgrades_per_ip_per_hour=10**6,
        sim_tokens_per_second=400.0,
        sim_max_tokens=20,
    )
    server = LiveServer(settings, fast_passwords).start()
    assert server.svc is not None
    svc = server.svc

    def use_ring(*keys: tuple[str, str]) -> None:
        svc.keyring = KeyRing(list(keys), ttl_seconds=svc.keyring.ttl_seconds)

    try:
        rest = Rest(server.http_url)
        reg = await rest.register()
        token, refresh = reg["accessToken"], reg["refreshToken"]
        conv = await rest.conversation(token)
        async with connect(server.ws_url, token) as ws:
            # 1. add the new key, old still signs: both verify
            await trio.to_thread.run_sync(server.call, use_ring, OLD, NEW)
            assert (await rest.call("GET", "/api/v1/me", token=token)).status_code == 200
            # 2. promote: the new key signs, the old still verifies
            await trio.to_thread.run_sync(server.call, use_ring, NEW, OLD)
            assert (await rest.call("GET", "/api/v1/me", token=token)).status_code == 200
            r = await rest.call("POST", "/api/v1/auth/refresh", json={"refreshToken": refresh})
            assert r.status_code == 200
            fresh = r.json()["accessToken"]
            assert svc.keyring.verify(fresh).sub == reg["user"]["id"]
            assert jwt.get_unverified_header(fresh)["kid"] == "new"
            # the open socket swaps to the new token and keeps working
            await ws.send("auth.refresh", {"accessToken": fresh})
            assert (await ws.recv())["type"] == "session.ready"
            # 3. retire the old key (after one access-token lifetime: old tokens are
            # expired by then; here the client has refreshed already)
            await trio.to_thread.run_sync(server.call, use_ring, NEW)
            assert (await rest.call("GET", "/api/v1/me", token=fresh)).status_code == 200
            assert (await rest.call("GET", "/api/v1/me", token=token)).status_code == 401
            result = await ws.turn(conv, "still here?", message_id=str(uuid.uuid4()))
            assert result.done is not None  # the socket was never closed
    finally:
        await trio.to_thread.run_sync(server.stop)
