from __future__ import annotations

import base64
import time

import jwt
import pytest

from server.auth.passwords import PasswordService
from server.auth.tokens import (
    KeyRing,
    TokenExpired,
    TokenInvalid,
    hash_refresh_token,
    new_refresh_token,
)

A = ("a", "a" * 40)
B = ("b", "b" * 40)


def test_newest_key_signs_all_verify() -> None:
    old = KeyRing([A])
    token_a, _ = old.issue(user_id="u", session_id="s", kind="guest", role="user")
    rotated = KeyRing([B, A])
    token_b, claims = rotated.issue(user_id="u", session_id="s", kind="registered", role="admin")
    assert jwt.get_unverified_header(token_b)["kid"] == "b"
    assert rotated.verify(token_a).kind == "guest"
    assert rotated.verify(token_b) == claims
    # once "a" leaves the ring its tokens stop verifying
    with pytest.raises(TokenInvalid):
        KeyRing([B]).verify(token_a)


def test_claims_and_expiry() -> None:
    ring = KeyRing([A], ttl_seconds=900)
    now = time.time()
    token, claims = ring.issue(
        user_id="u1", session_id="s1", kind="registered", role="user", now=now
    )
    payload = jwt.decode(
        token, A[1], algorithms=["HS256"], options={"verify_exp": False}, issuer="parley"
    )
    assert {"sub", "sid", "kind", "role", "iat", "exp", "jti"} <= set(payload)
    assert claims.exp - claims.iat == 900
    with pytest.raises(TokenExpired):
        ring.verify(token, now=now + 901)
    assert ring.verify(token, now=now + 899).sub == "u1"
    old, _ = ring.issue(user_id="u", session_id="s", kind="guest", role="user", now=now - 1000)
    with pytest.raises(TokenExpired):
        ring.verify(old)


def test_tampering_rejected() -> None:
    ring = KeyRing([A])
    token, _ = ring.issue(user_id="u", session_id="s", kind="guest", role="user")
    head, body, sig = token.split(".")
    for bad in (
        f"{head}.{body}.{sig[:-2]}xx",
        "garbage",
        "",
        jwt.encode({"sub": "u"}, A[1], algorithm="HS256", headers={"kid": "a"}),
        jwt.encode({"sub": "u"}, "x" * 64, algorithm="HS512", headers={"kid": "a"}),
    ):
        with pytest.raises(TokenInvalid):
            ring.verify(bad)
    forged = jwt.encode(
        {
            "sub": "u",
            "sid": "s",
            "kind": "k",
            "role": "admin",
            "iat": 1,
            "exp": 2**40,
            "jti": "j",
            "iss": "parley",
        },
        "wrong" * 10,
        algorithm="HS256",
        headers={"kid": "a"},
    )
    with pytest.raises(TokenInvalid):
        ring.verify(forged)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "header",
    [
        "!!!!",  # not base64url
        _b64(b"not json"),
        _b64(b"[1, 2]"),  # JSON, not an object
        _b64(b'{"alg": "none", "kid": "a"}'),
        _b64(b'{"alg": "HS256", "kid": 7}'),
        _b64(b'{"alg": "HS256", "kid": "zz"}'),  # a key the ring does not hold
        "é" + _b64(b'{"alg": "HS256", "kid": "a"}'),  # not ASCII
        _b64(b'{"alg": "HS256", "kid": "a"}') + "==x",  # junk after a valid header
    ],
)
def test_a_bad_header_is_an_invalid_token_whatever_the_rest(header: str) -> None:
    ring = KeyRing([A])
    token, _ = ring.issue(user_id="u", session_id="s", kind="guest", role="user")
    _, body, sig = token.split(".")
    with pytest.raises(TokenInvalid):
        ring.verify(f"{header}.{body}.{sig}")


def test_refresh_tokens() -> None:
    tokens = {new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100
    t = tokens.pop()
    assert len(t) >= 43  # 32 bytes base64url
    assert hash_refresh_token(t) == hash_refresh_token(t) and len(hash_refresh_token(t)) == 64
    assert t not in hash_refresh_token(t)


def test_argon2id_hashing() -> None:
    svc = PasswordService()
    h = svc.hash_sync("correct horse battery")
    assert h.startswith("$argon2id$") and "m=19456,t=2,p=1" in h
    assert svc.verify_sync(h, "correct horse battery")
    assert not svc.verify_sync(h, "wrong")
    assert not svc.verify_sync(None, "anything")
    assert not svc.verify_sync("not a hash", "x")
