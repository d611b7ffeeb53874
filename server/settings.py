"""Every Parley setting, in one place (pydantic-settings, prefix ``PARLEY_``).

Every secret setting also reads ``NAME_FILE``: a path whose content is the value.
``PARLEY_ENV=production`` refuses to start without explicit JWT keys, a MySQL URL
and a Redis URL (:func:`check_production`).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "SECRET_SETTINGS",
    "Settings",
    "SettingsError",
    "check_production",
    "load_settings",
    "weak_jwt_keys",
]

#: Settings whose value may come from ``PARLEY_<NAME>_FILE``.
SECRET_SETTINGS = (
    "jwt_keys",
    "llm_api_key",
    "database_url",
    "redis_url",
    "restore_check_database_url",
)


class SettingsError(Exception):
    """A setting is missing or invalid; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # 0: none. Else each server process also serves its own /metrics on base + its worker
    # index (0 .. workers-1), so that Prometheus scrapes (and sums) every one of them.
    metrics_port_base: int = Field(0, ge=0, le=65535)
    data_dir: Path = Path("./parley-data")

    database_url: str = "sqlite:///./parley-data/parley.db"
    db_pool_size: int = Field(10, ge=1, le=200)
    redis_url: str = ""

    llm_provider: Literal["simulated", "openai"] = "simulated"
    llm_base_url: str = ""
    llm_api_key: str = ""
    llm_model: str = ""
    llm_system_prompt: str = ""
    # The openai provider's streaming HTTP client: "h11" (trio sockets + h11, keep-alive
    # pool; measured ~45 % less CPU per token) or "httpx" (the general-purpose client)
    llm_http_client: Literal["h11", "httpx"] = "h11"
    sim_tokens_per_second: float = Field(30.0, gt=0, le=100_000)
    sim_max_tokens: int = Field(200, ge=1, le=100_000)
    # "[[sim:...]]" prefixes in a message inject faults (tests, demos); off unless set, and
    # never in production: any user could otherwise trip the shared circuit breaker
    sim_fault_injection: bool = False

    # Upstream resilience (contract section 4).
    upstream_first_token_timeout: float = Field(20.0, gt=0)
    upstream_gap_timeout: float = Field(30.0, gt=0)
    upstream_total_timeout: float = Field(180.0, gt=0)
    upstream_max_retries: int = Field(2, ge=0, le=10)
    upstream_breaker_threshold: int = Field(5, ge=1)
    upstream_breaker_cooldown: float = Field(30.0, gt=0)

    jwt_keys: str = ""
    access_token_ttl_seconds: int = Field(900, ge=10, le=86_400)
    refresh_token_ttl_seconds: int = Field(30 * 86_400, ge=60)
    guest_refresh_token_ttl_seconds: int = Field(7 * 86_400, ge=60)
    guest_inactivity_days: int = Field(7, ge=1)
    # A session the deny-list has no entry for is checked in the database, then taken as
    # live for this long on this instance (server/auth/identity.is_session_denied)
    session_check_cache_seconds: float = Field(5.0, ge=0, le=60)

    drain_seconds: float = Field(20.0, ge=0, le=25)
    drain_reconnect_ms: int = Field(1000, ge=0, le=60_000)
    ws_coalesce_ms: float = Field(40.0, ge=0, le=1000)
    ws_max_connections: int = Field(10_000, ge=1)
    ws_max_connections_per_user: int = Field(10, ge=1)

    # The WebSocket's bounds (contract section 4).
    ws_ping_interval_seconds: float = Field(25.0, gt=0, le=3600)
    ws_pong_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    ws_max_frame_bytes: int = Field(65_536, ge=1024, le=16 * 1024 * 1024)
    ws_outbox_max_bytes: int = Field(1024 * 1024, ge=4096)
    ws_outbox_max_frames: int = Field(2048, ge=16)
    ws_stall_seconds: float = Field(10.0, gt=0, le=3600)
    ws_invalid_frames_limit: int = Field(10, ge=1)
    ws_invalid_frames_window_seconds: float = Field(60.0, gt=0)

    # Turns (contract section 4: state machine, idempotency, resume, truncation).
    max_content_chars: int = Field(8000, ge=1, le=1_000_000)
    max_output_tokens: int = Field(4096, ge=1, le=1_000_000)
    max_output_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_turns_per_user: int = Field(3, ge=1, le=1000)
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60)
    duplicate_window_seconds: float = Field(10.0, ge=0, le=3600)
    replay_max_messages: int = Field(200, ge=1, le=100_000)
    replay_max_bytes: int = Field(1024 * 1024, ge=1024)
    checkpoint_seconds: float = Field(0.5, gt=0, le=60)
    # Many instances (Redis): a live turn's lease (renewed every fifth of it) and how often
    # every instance sweeps for turns whose owner died.
    turn_lease_seconds: float = Field(10.0, ge=1, le=300)
    turn_sweep_seconds: float = Field(3.0, gt=0, le=300)

    allowed_origins: str = ""
    trust_proxy_headers: bool = False

    # Abuse limits (contract section 2).
    login_failures_per_account: int = 5
    login_failures_per_ip: int = 20
    login_failure_window_seconds: int = 900
    signups_per_ip_per_hour: int = 30
    ws_upgrades_per_ip_per_hour: int = 600
    chat_sends_per_user_per_minute: int = 20
    # Issue 12 (docs/SPEC.md 2.3): guest upgrades (also in the per-IP sign-up budget),
    # successful logins per account, live sessions per user (past it the oldest is revoked)
    upgrades_per_user_per_hour: int = Field(5, ge=1)
    logins_per_account_per_hour: int = Field(30, ge=1)
    max_sessions_per_user: int = Field(20, ge=1)
    # Per WebSocket connection: chat.resume and ping frames per minute (RATE_LIMITED past
    # them). "Sustained abuse": this many RATE_LIMITED answers on one connection within
    # ws_abuse_window_seconds, then close 4029.
    ws_resumes_per_minute: int = Field(30, ge=1)
    ws_pings_per_minute: int = Field(60, ge=1)
    ws_abuse_rate_limited: int = Field(10, ge=1)
    ws_abuse_window_seconds: float = Field(60.0, gt=0)
    # Guests get less than registered users.
    guest_chat_sends_per_minute: int = Field(5, ge=1)
    guest_max_turns: int = Field(1, ge=1)
    guest_max_conversations: int = Field(20, ge=1)
    max_conversations_per_user: int = Field(1000, ge=1)
    # What a user may keep (message text), then chat.send answers PAYLOAD_TOO_LARGE;
    # measured at most once a minute per user (server/ws/dispatch.py)
    max_stored_bytes_per_user: int = Field(100 * 1024 * 1024, ge=1024)
    guest_max_stored_bytes: int = Field(5 * 1024 * 1024, ge=1024)

    log_level: str = "INFO"
    log_json: bool | None = None  # empty: JSON lines, or readable ones on a terminal

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, v: str) -> str:
        if not (v.startswith("sqlite") or v.startswith("mysql")):
            raise ValueError("must start with sqlite:// or mysql+pymysql://")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://")):
            raise ValueError("must be empty, a redis:// or a rediss:// URL")
        if v:
            from store.cache.resp import pool_options

            pool_options(v)  # its options: a ValueError names the one it does not serve
        return v

    @field_validator("jobs_schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        jobs = ("retention", "backup", "restore-check")  # jobs/run.py JOBS
        for part in filter(None, (p.strip() for p in v.split(","))):
            name, _, at = part.partition("@")
            if name not in jobs or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", at):
                raise ValueError(f"{part!r}: each entry is JOB@HH:MM (UTC), JOB one of {jobs}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: object) -> object:
        """``PARLEY_X_FILE=/path`` supplies ``PARLEY_X`` from a file (secrets, rotation)."""
        if not isinstance(data, dict):
            return data
        for name in SECRET_SETTINGS:
            path = os.environ.get(f"PARLEY_{name.upper()}_FILE")
            if path and not data.get(name) and not os.environ.get(f"PARLEY_{name.upper()}"):
                try:
                    data[name] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ValueError(
                        f"PARLEY_{name.upper()}_FILE: cannot read {path}: {exc}"
                    ) from exc
        return data

    @model_validator(mode="after")
    def _content_fits_a_frame(self) -> Settings:
        # A character is at most 6 bytes in a JSON frame (\uXXXX); the envelope needs room.
        if self.max_content_chars * 6 + 1024 > self.ws_max_frame_bytes:
            raise ValueError(
                "PARLEY_MAX_CONTENT_CHARS must fit in PARLEY_WS_MAX_FRAME_BYTES "
                "(6 bytes a character at worst, plus 1024 for the envelope)"
            )
        return self

    @property
    def single_instance(self) -> bool:
        """Without Redis there is one process: nothing else can own a streaming turn."""
        return not self.redis_url

    @property
    def sim_faults(self) -> bool:
        return self.sim_fault_injection and self.env != "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def origins(self) -> list[str]:
        if self.allowed_origins.strip():
            return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]
        own = {f"http://{self.host}:{self.port}"}
        if self.host in ("127.0.0.1", "0.0.0.0", "::"):  # noqa: S104 (a comparison, no bind)
            own |= {f"http://localhost:{self.port}", f"http://127.0.0.1:{self.port}"}
        return sorted(own)

    def jwt_key_ring(self) -> list[tuple[str, str]]:
        """``kid:secret,kid:secret`` newest first; development makes and keeps one key."""
        raw = self.jwt_keys.strip()
        if not raw:
            if self.env == "production":
                raise SettingsError("PARLEY_JWT_KEYS (or PARLEY_JWT_KEYS_FILE) is required")
            return [self._dev_key()]
        ring: list[tuple[str, str]] = []
        for part in raw.split(","):
            kid, sep, secret = part.strip().partition(":")
            if not sep or not kid or len(secret) < 32:
                raise SettingsError(
                    "PARLEY_JWT_KEYS: each entry must be kid:secret with a secret of 32+ characters"
                )
            ring.append((kid, secret))
        if len({k for k, _ in ring}) != len(ring):
            raise SettingsError("PARLEY_JWT_KEYS: key ids must be unique")
        return ring

    def _dev_key(self) -> tuple[str, str]:
        path = self.data_dir / "jwt-dev-key"
        if path.exists():
            kid, _, secret = path.read_text().strip().partition(":")
            if kid and len(secret) >= 32:
                return kid, secret
        self.data_dir.mkdir(parents=True, exist_ok=True)
        kid, secret = f"dev-{secrets.token_hex(4)}", secrets.token_urlsafe(48)
        path.write_text(f"{kid}:{secret}\n")
        path.chmod(0o600)
        return kid, secret

    # -- Backups and restore checks (jobs/backup.py, jobs/restore_check.py) ---------------
    backup_dir: Path = Path("./parley-data/backups")
    backup_keep: int = Field(7, ge=1, le=10_000)
    # empty: the live server with the database name + "_restore_check" (SQLite: a temporary
    # file); never the live database. Also read from PARLEY_RESTORE_CHECK_DATABASE_URL_FILE.
    restore_check_database_url: str = ""

    # -- Retention (jobs/retention.py), schedule, tracing (docs/SPEC.md section 6) ---------
    retention_deleted_days: int = Field(30, ge=1)  # soft-deleted rows are purged after this
    retention_audit_days: int = Field(365, ge=1)
    retention_tombstone_days: int = Field(365, ge=1)  # how long a purged messageId is known
    retention_revoked_session_days: int = Field(1, ge=1)
    retention_batch_size: int = Field(1000, ge=1, le=100_000)
    # "retention@03:00,backup@03:30" (UTC): jobs this process runs itself (one instance only)
    jobs_schedule: str = ""
    otlp_endpoint: str = ""


def check_production(settings: Settings) -> None:
    """Raise :class:`SettingsError` naming every missing production setting."""
    if settings.env != "production":
        return
    missing = []
    if not settings.jwt_keys.strip():
        missing.append("PARLEY_JWT_KEYS (or PARLEY_JWT_KEYS_FILE)")
    if not settings.database_url.startswith("mysql"):
        missing.append("PARLEY_DATABASE_URL (a mysql+pymysql:// URL)")
    if not settings.redis_url:
        missing.append("PARLEY_REDIS_URL")
    if missing:
        raise SettingsError("production needs: " + ", ".join(missing))
    problems = weak_jwt_keys(settings.jwt_key_ring(), settings.data_dir)
    if problems:
        raise SettingsError("PARLEY_JWT_KEYS: " + "; ".join(problems))


#: Production's floor for a JWT secret: 256 bits as base64url (``secrets.token_urlsafe(32)``).
PRODUCTION_SECRET_CHARS = 43


def weak_jwt_keys(ring: list[tuple[str, str]], data_dir: Path) -> list[str]:
    """What production refuses in a key ring (each problem names the key id, never the
    secret): shorter than the floor, few distinct characters or a placeholder, the
    development key, or one secret under two ids."""
    problems: list[str] = []
    dev_secret = ""
    dev_path = data_dir / "jwt-dev-key"
    if dev_path.exists():
        dev_secret = dev_path.read_text().strip().partition(":")[2]
    seen: dict[str, str] = {}
    for kid, secret in ring:
        if len(secret) < PRODUCTION_SECRET_CHARS:
            problems.append(f"key {kid!r} is shorter than {PRODUCTION_SECRET_CHARS} characters")
        elif len(set(secret)) < 12 or "replace" in secret.lower():
            problems.append(f"key {kid!r} is not random (a placeholder or a repeated pattern)")
        if kid.startswith("dev-") or (dev_secret and secret == dev_secret):
            problems.append(f"key {kid!r} is the development key")
        if secret in seen:
            problems.append(f"key {kid!r} repeats key {seen[secret]!r}")
        seen.setdefault(secret, kid)
    return problems


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise :class:`SettingsError` with a clear message."""
    from pydantic import ValidationError

    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            if err["loc"]:
                name = "PARLEY_" + "_".join(str(p) for p in err["loc"]).upper()
                lines.append(f"{name}: {err['msg']}")
            else:  # a rule between settings: its message names them
                lines.append(str(err["msg"]).removeprefix("Value error, "))
        raise SettingsError("; ".join(lines) or str(exc)) from exc
    check_production(settings)
    return settings
