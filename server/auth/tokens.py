"""Access tokens (JWT, HS256, key ring with ``kid``) and opaque refresh tokens."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

__all__ = [
    "AccessClaims",
    "KeyRing",
    "TokenExpired",
    "TokenInvalid",
    "hash_refresh_token",
    "new_refresh_token",
]

ALGORITHM = "HS256"
ISSUER = "parley"


class TokenInvalid(Exception):
    """Bad signature, unknown key, malformed or missing claims."""


class TokenExpired(TokenInvalid):
    """Well-formed and signed by us, but past ``exp``."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    sub: str
    sid: str
    kind: str
    role: str
    iat: int
    exp: int
    jti: str


class KeyRing:
    """``[(kid, secret), ...]`` newest first: the newest signs, every key verifies."""

    def __init__(self, keys: list[tuple[str, str]], *, ttl_seconds: int = 900) -> None:
        if not keys:
            raise ValueError("the key ring needs at least one key")
        self._keys = dict(keys)
        self._signing_kid = keys[0][0]
        self.ttl_seconds = ttl_seconds

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    def issue(
        self, *, user_id: str, session_id: str, kind: str, role: str, now: float | None = None
    ) -> tuple[str, AccessClaims]:
        iat = int(now if now is not None else time.time())
        claims = AccessClaims(
            sub=user_id,
            sid=session_id,
            kind=kind,
            role=role,
            iat=iat,
            exp=iat + self.ttl_seconds,
            jti=uuid.uuid4().hex,
        )
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "sub": claims.sub,
            "sid": claims.sid,
            "kind": claims.kind,
            "role": claims.role,
            "iat": claims.iat,
            "exp": claims.exp,
            "jti": claims.jti,
        }
        token = jwt.encode(
            payload,
            self._keys[self._signing_kid],
            algorithm=ALGORITHM,
            headers={"kid": self._signing_kid},
        )
        return token, claims

    def verify(self, token: str, *, now: float | None = None) -> AccessClaims:
        header = _unverified_header(token)
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str) or kid not in self._keys:
            raise TokenInvalid("unknown signing key")
        options: Any = {"require": ["sub", "sid", "kind", "role", "iat", "exp", "jti"]}
        try:
            if now is not None:
                payload = jwt.decode(
                    token,
                    self._keys[kid],
                    algorithms=[ALGORITHM],
                    issuer=ISSUER,
                    options={**options, "verify_exp": False},
                )
                if int(payload["exp"]) <= now:
                    raise TokenExpired("token expired")
            else:
                payload = jwt.decode(
                    token, self._keys[kid], algorithms=[ALGORITHM], issuer=ISSUER, options=options
                )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired("token expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenInvalid(str(exc)) from exc
        try:
            return AccessClaims(
                sub=str(payload["sub"]),
                sid=str(payload["sid"]),
                kind=str(payload["kind"]),
                role=str(payload["role"]),
                iat=int(payload["iat"]),
                exp=int(payload["exp"]),
                jti=str(payload["jti"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenInvalid("bad claims") from exc


def _unverified_header(token: str) -> dict[str, Any]:
    """The token's header, read only to pick the key: ``jwt.decode`` then checks the whole
    token strictly, header included. (``jwt.get_unverified_header`` would check every
    character of the token once more in Python, which doubled what a verify cost.)"""
    head = token.split(".", 1)[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error) as exc:  # orjson.JSONDecodeError is a ValueError
        raise TokenInvalid("malformed token") from exc
    if not isinstance(header, dict):
        raise TokenInvalid("malformed token")
    return header


def new_refresh_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
