"""Schemathesis against the live server, driven by the served OpenAPI document (both
backends): no server error, and every answer matches the document (status codes, content
types, bodies). Operations that end the caller's session or account (logout, logout-all,
DELETE /me) run without the token, so the rest of the run keeps its caller.

Found with it: an answer given before the request's body was read (a 405 for an
unexpected method with a body, an early 401 or 413) left those bytes on the keep-alive
connection, and the client's next request on it went unanswered; such answers now close
the connection (``server/security.py``)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.live import LiveServer

LIVE_SETTINGS = {
    "signups_per_ip_per_hour": 10**6,
    "login_failures_per_ip": 10**6,
    "upgrades_per_user_per_hour": 10**6,
}
EXAMPLES = int(os.environ.get("PARLEY_SCHEMATHESIS_EXAMPLES", "15"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)
ENDS_THE_CALLER = r"^/api/v1/(auth/logout|auth/logout-all|me)$"


def _run(
    live: LiveServer, tmp: Path, *extra: str, phases: str = "examples,coverage,fuzzing,stateful"
) -> subprocess.CompletedProcess[str]:
    """Stateful: the document's links (POST /conversations → read, rename, history,
    delete) drive sequences with the new conversation's id."""
    cli = Path(sys.executable).parent / "schemathesis"
    return subprocess.run(
        [
            str(cli),
            "run",
            f"{live.http_url}/api/v1/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            str(EXAMPLES),
            "--workers",
            "1",
            "--phases",
            phases,
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            # its failed logins and sign-ups count against an address of its own, not the
            # 127.0.0.1 that other tests share in Redis (the server trusts the header here)
            "--header",
            f"X-Forwarded-For: 10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.77",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )


def test_schemathesis_against_the_live_server(live: LiveServer, tmp_path: Path) -> None:
    r = httpx.post(
        f"{live.http_url}/api/v1/auth/register",
        json={"email": f"st-{os.getpid()}-{id(tmp_path)}@example.com", "password": "schema pass 1"},
    )
    assert r.status_code == 201
    token = r.json()["accessToken"]
    with_token = _run(
        live,
        tmp_path,
        "--header",
        f"Authorization: Bearer {token}",
        "--exclude-method-regex",
        "DELETE|POST",
        "--exclude-path-regex",
        ENDS_THE_CALLER,
    )
    assert with_token.returncode == 0, with_token.stdout[-6000:]
    writes = _run(
        live,
        tmp_path,
        "--header",
        f"Authorization: Bearer {token}",
        "--include-method-regex",
        "DELETE|POST|PATCH",
        "--exclude-path-regex",
        ENDS_THE_CALLER,
    )
    assert writes.returncode == 0, writes.stdout[-6000:]
    anonymous = _run(
        live, tmp_path, "--include-path-regex", ENDS_THE_CALLER, phases="examples,coverage,fuzzing"
    )
    assert anonymous.returncode == 0, anonymous.stdout[-6000:]
    assert httpx.get(f"{live.http_url}/healthz").status_code == 200
