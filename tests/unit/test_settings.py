from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import Settings, SettingsError, load_settings

KEY = "k1:" + "s" * 40
# production refuses weak keys (docs/SPEC.md 2.2): a random-looking one, 48 characters
STRONG_KEY = "k1:Vd7Qx2pL9mZs4RtY8wKc3NbH6jF1gAeU0oTiXyPqWvBn5rCz"


def test_defaults_match_contract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PARLEY_DATABASE_URL", "PARLEY_REDIS_URL", "PARLEY_ENV", "PARLEY_JWT_KEYS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.database_url == "sqlite:///./parley-data/parley.db"
    assert s.redis_url == "" and s.llm_provider == "simulated"
    assert s.sim_tokens_per_second == 30 and s.sim_max_tokens == 200
    assert s.access_token_ttl_seconds == 900 and s.env == "development"
    assert s.host == "127.0.0.1" and s.port == 8000
    assert "http://127.0.0.1:8000" in s.origins and "http://localhost:8000" in s.origins


def test_dev_key_is_made_once_and_kept(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, jwt_keys="")
    ring = s.jwt_key_ring()
    assert ring == Settings(data_dir=tmp_path, jwt_keys="").jwt_key_ring()
    assert len(ring) == 1 and len(ring[0][1]) >= 32
    assert (tmp_path / "jwt-dev-key").stat().st_mode & 0o077 == 0


def test_key_ring_parsing() -> None:
    s = Settings(jwt_keys=f"new:{'n' * 32}, old:{'o' * 40}")
    assert s.jwt_key_ring() == [("new", "n" * 32), ("old", "o" * 40)]
    for bad in ("nokid", "k:short", f"a:{'x' * 32},a:{'y' * 32}"):
        with pytest.raises(SettingsError):
            Settings(jwt_keys=bad).jwt_key_ring()


def test_secret_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(KEY + "\n")
    monkeypatch.delenv("PARLEY_JWT_KEYS", raising=False)
    monkeypatch.setenv("PARLEY_JWT_KEYS_FILE", str(f))
    monkeypatch.setenv("PARLEY_LLM_API_KEY_FILE", str(f))
    s = load_settings()
    assert s.jwt_keys == KEY and s.llm_api_key == KEY
    monkeypatch.setenv("PARLEY_JWT_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="PARLEY_JWT_KEYS_FILE"):
        load_settings()


def test_production_refuses_without_explicit_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PARLEY_DATABASE_URL",
        "PARLEY_REDIS_URL",
        "PARLEY_JWT_KEYS",
        "PARLEY_JWT_KEYS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PARLEY_ENV", "production")
    with pytest.raises(SettingsError) as err:
        load_settings()
    msg = str(err.value)
    assert "PARLEY_JWT_KEYS" in msg and "PARLEY_DATABASE_URL" in msg and "PARLEY_REDIS_URL" in msg
    monkeypatch.setenv("PARLEY_JWT_KEYS", STRONG_KEY)
    monkeypatch.setenv("PARLEY_DATABASE_URL", "mysql+pymysql://u:p@db:3306/parley")
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://cache:6379/0")
    assert load_settings().env == "production"


def test_invalid_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_DATABASE_URL", "postgres://x")
    with pytest.raises(SettingsError, match="PARLEY_DATABASE_URL"):
        load_settings()
    monkeypatch.delenv("PARLEY_DATABASE_URL")
    for url, says in (
        ("unix:///run/redis.sock", "rediss:// URL"),
        ("redis://cache:6379/0?decode_responses=yes", "option.s.: decode_responses"),
        ("rediss://cache/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs must be one of"),
        ("rediss://cache/0?ssl_ca_certs=/nonexistent/ca.pem", "certificate files"),
    ):
        monkeypatch.setenv("PARLEY_REDIS_URL", url)
        with pytest.raises(SettingsError, match=f"PARLEY_REDIS_URL.*{says}"):
            load_settings()
    monkeypatch.setenv("PARLEY_REDIS_URL", "rediss://:pw@cache:6380/2?ssl_cert_reqs=none")
    assert load_settings().redis_url.startswith("rediss://")
    monkeypatch.delenv("PARLEY_REDIS_URL")
    monkeypatch.setenv("PARLEY_LLM_PROVIDER", "magic")
    with pytest.raises(SettingsError, match="PARLEY_LLM_PROVIDER"):
        load_settings()


def test_cli_exits_2_on_bad_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli import main

    monkeypatch.setenv("PARLEY_ENV", "production")
    monkeypatch.delenv("PARLEY_JWT_KEYS", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["migrate"])
    assert exc.value.code == 2


def test_contract_defaults_are_settings_and_reach_the_turns_and_sockets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from server.turns import TurnConfig
    from server.ws.state import WsConfig

    defaults = load_settings()
    turn, ws = TurnConfig.from_settings(defaults), WsConfig.from_settings(defaults)
    assert (turn.max_output_tokens, turn.max_output_bytes, turn.max_turns_per_user) == (
        4096,
        65536,
        3,
    )
    assert (turn.idempotency_ttl, turn.duplicate_window, turn.checkpoint_seconds) == (
        86400,
        10.0,
        0.5,
    )
    assert (turn.replay_max_messages, turn.replay_max_bytes) == (200, 1 << 20)
    assert (ws.ping_interval, ws.pong_timeout, ws.stall_timeout) == (25.0, 10.0, 10.0)
    assert (ws.outbox_max_bytes, ws.outbox_max_frames) == (1 << 20, 2048)
    assert (ws.invalid_frames_limit, ws.invalid_frames_window) == (10, 60.0)
    assert (ws.max_frame_bytes, ws.max_content_chars, ws.drain_reconnect_ms) == (65536, 8000, 1000)
    monkeypatch.setenv("PARLEY_MAX_TURNS_PER_USER", "5")
    monkeypatch.setenv("PARLEY_REPLAY_MAX_MESSAGES", "50")
    monkeypatch.setenv("PARLEY_WS_STALL_SECONDS", "3")
    monkeypatch.setenv("PARLEY_MAX_CONTENT_CHARS", "100")
    s = load_settings()
    assert TurnConfig.from_settings(s).max_turns_per_user == 5
    assert TurnConfig.from_settings(s).replay_max_messages == 50
    assert WsConfig.from_settings(s).stall_timeout == 3.0
    assert WsConfig.from_settings(s).max_content_chars == 100


def test_content_limit_must_fit_the_frame_limit() -> None:
    with pytest.raises(SettingsError, match="PARLEY_MAX_CONTENT_CHARS must fit"):
        load_settings(max_content_chars=20_000)
    assert load_settings(max_content_chars=20_000, ws_max_frame_bytes=200_000).max_content_chars
