"""deploy/ is checked with the real tools where they exist here: Debian's nginx (`nginx -t`
on the site, behind a harness config, on throwaway ports, with a self-signed
certificate), `systemd-analyze verify` on the units, a real redis-server loading
redis.conf; every Kubernetes YAML is parsed and its key fields are asserted. The image
itself is not built here (docs/OPERATIONS.md)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.check import check_redis
from server.settings import SECRET_SETTINGS, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PARLEY_BIN = Path(sys.executable).with_name("parley")
#: the drain ends with the process gone within drain + 3 (cut turns) + 2 (closes) + 3
#: (Hypercorn) s; serve.py bounds the drain itself at drain + 6 s
DRAIN_TAIL_SECONDS = 9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    assert path, f"{name} is missing: `make services` (deploy/dev/services.sh) installs it"
    return path


# -- nginx ------------------------------------------------------------------------------


def nginx_harness(tmp_path: Path, site_text: str) -> list[str]:
    """The site with its certificate, log and listen lines pointed at throwaway ones."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if not cert.exists():
        subprocess.run(
            [
                tool("openssl"),
                *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=parley.test", "-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    site = site_text.replace("/etc/ssl/parley/fullchain.pem", str(cert))
    site = site.replace("/etc/ssl/parley/privkey.pem", str(key))
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    # nginx -t binds every listen address: never 80/443, never IPv6 wildcard
    site = re.sub(r"^\s*listen \[::\]:\d+[^;]*;\n", "", site, flags=re.M)
    site = re.sub(r"listen 80;", f"listen 127.0.0.1:{free_port()};", site)
    site = re.sub(r"listen 443 ssl", f"listen 127.0.0.1:{free_port()} ssl", site)
    assert "listen 80" not in site and "listen 443" not in site
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    return [
        tool("nginx"),
        *("-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")),
        *("-e", str(tmp_path / "error.log")),
    ]


def test_nginx_accepts_the_site(tmp_path: Path) -> None:
    text = (DEPLOY / "nginx" / "parley.conf").read_text()
    r = subprocess.run(nginx_harness(tmp_path, text), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stderr
    # the harness is real: a broken site fails
    broken = text.replace("proxy_buffering off;", "proxy_buffering sometimes;")
    bad = tmp_path / "bad"
    bad.mkdir()
    r = subprocess.run(nginx_harness(bad, broken), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "proxy_buffering" in r.stderr


def _blocks(text: str) -> dict[str, str]:
    """``location X { ... }`` bodies by their argument (the site has no nested blocks)."""
    return {
        m.group(1).strip(): m.group(2)
        for m in re.finditer(r"^\s*location\s+([^{]+)\{([^}]*)\}", text, flags=re.S | re.M)
    }


def test_nginx_site_websocket_settings() -> None:
    from server.serve import hypercorn_config

    text = (DEPLOY / "nginx" / "parley.conf").read_text()
    locations = _blocks(text)
    ws = locations["= /ws"]
    assert "proxy_buffering off;" in ws
    assert "proxy_set_header Upgrade    $http_upgrade;" in ws
    assert "proxy_set_header Connection $connection_upgrade;" in ws
    ping = Settings(env="test").ws_ping_interval_seconds  # type: ignore[call-arg]
    assert hypercorn_config(Settings(env="test")).websocket_ping_interval is None  # type: ignore[call-arg]  # Parley's own
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", ws).group(1))  # type: ignore[union-attr]
    assert read_timeout > ping + 10  # longer than a ping period plus the pong timeout
    for name, body in locations.items():  # a location that sets headers inherits none
        assert "X-Forwarded-For   $proxy_add_x_forwarded_for" in body, name
        assert "proxy_pass http://parley;" in body, name
    assert re.search(r"listen 443 ssl", text) and "ssl_certificate_key" in text
    assert "http_503" in text  # a draining instance's 503 sends the upgrade elsewhere
    assert "deny all;" in locations["~ ^/(metrics|readyz|healthz)$"]


# -- systemd ----------------------------------------------------------------------------


def _units(tmp_path: Path) -> list[Path]:
    """Instances of the templates, ExecStart pointed at this checkout's parley."""
    out: list[Path] = []
    names = {
        "parley@.service": ["parley@8000.service", "parley@8001.service"],
        "parley-job@.service": [
            "parley-job@backup.service",
            "parley-job@restore-check.service",
            "parley-job@retention.service",
        ],
    }
    for src in sorted((DEPLOY / "systemd").glob("*")):
        if src.suffix not in (".service", ".timer"):
            continue
        text = src.read_text().replace("/opt/parley/venv/bin/parley", str(PARLEY_BIN))
        for name in names.get(src.name, [src.name]):
            dst = tmp_path / name
            dst.write_text(text)
            out.append(dst)
    return out


def test_systemd_units_verify(tmp_path: Path) -> None:
    units = _units(tmp_path)
    assert len(units) == 8
    cmd = [tool("systemd-analyze"), "verify", "--man=no", *map(str, units)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr  # warnings fail too
    # the harness is real: a bad value is reported
    bad = tmp_path / "bad@1.service"
    server_unit = next(u for u in units if u.name == "parley@8000.service")
    bad.write_text(server_unit.read_text().replace("KillSignal=SIGTERM", "KillSignal=SIGNOPE"))
    r = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "SIGNOPE" in r.stderr


def _unit_values(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            values.setdefault(k.strip(), []).append(v.strip())
    return values


def test_systemd_server_unit_drains() -> None:
    s = Settings(env="test")  # type: ignore[call-arg]
    unit = _unit_values(DEPLOY / "systemd" / "parley@.service")
    assert unit["KillSignal"] == ["SIGTERM"] and unit["Restart"] == ["on-failure"]
    assert int(unit["TimeoutStopSec"][0]) > s.drain_seconds + DRAIN_TAIL_SECONDS
    assert int(unit["TimeoutStopSec"][0]) > 30  # the contract's exit bound
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert int(unit["LimitNOFILE"][0]) > s.ws_max_connections
    files = {v.split("=", 1)[0] for v in unit["Environment"] if "_FILE=" in v}
    assert files == {"PARLEY_JWT_KEYS_FILE", "PARLEY_DATABASE_URL_FILE", "PARLEY_REDIS_URL_FILE"}
    job = _unit_values(DEPLOY / "systemd" / "parley-job@.service")
    assert job["ExecStart"] == ["/opt/parley/venv/bin/parley jobs run %i"]
    timers = {p.stem: _unit_values(p) for p in (DEPLOY / "systemd").glob("*.timer")}
    assert {t["Unit"][0] for t in timers.values()} == {
        "parley-job@retention.service",
        "parley-job@backup.service",
        "parley-job@restore-check.service",
    }


# -- Kubernetes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), f
                by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def one(k8s: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    assert len(k8s[kind]) == 1, kind
    return k8s[kind][0]


def test_k8s_deployment_probes_and_drain(k8s: dict[str, list[dict[str, Any]]]) -> None:
    config = one(k8s, "ConfigMap")["data"]
    drain = float(config["PARLEY_DRAIN_SECONDS"])
    assert drain == Settings(env="test").drain_seconds  # type: ignore[call-arg]
    dep = one(k8s, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # SIGKILL never comes before the drain is over: preStop, then the whole drain
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + DRAIN_TAIL_SECONDS
    # readiness notices quickly: a draining pod is out of rotation within seconds
    ready = c["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 10
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_secrets_are_files(k8s: dict[str, list[dict[str, Any]]]) -> None:
    config = one(k8s, "ConfigMap")["data"]
    secret_keys = set(one(k8s, "Secret")["stringData"])
    for name in SECRET_SETTINGS:
        env = f"PARLEY_{name.upper()}"
        assert env not in config, f"{env} is a secret: mount it as a file"
        path = config[f"{env}_FILE"]
        assert path.startswith("/etc/parley/secrets/")
        assert path.rsplit("/", 1)[1] in secret_keys
    pods = [one(k8s, "Deployment")["spec"]["template"]["spec"]] + [
        cj["spec"]["jobTemplate"]["spec"]["template"]["spec"] for cj in k8s["CronJob"]
    ]
    pods.append(one(k8s, "Job")["spec"]["template"]["spec"])
    for pod in pods:
        vols = {v["name"]: v for v in pod["volumes"]}
        (c,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        m = mounts["/etc/parley/secrets"]
        assert m["readOnly"] is True
        assert vols[m["name"]]["secret"]["secretName"] == "parley-secrets"
        assert {"configMapRef": {"name": "parley-config"}} in c["envFrom"]
        assert not any(e.get("name", "").endswith(("_KEYS", "_URL")) for e in c.get("env", []))


def test_k8s_cronjobs_service_pdb_hpa(k8s: dict[str, list[dict[str, Any]]]) -> None:
    jobs = {cj["metadata"]["name"]: cj for cj in k8s["CronJob"]}
    assert set(jobs) == {"parley-retention", "parley-backup", "parley-restore-check"}
    claim = one(k8s, "PersistentVolumeClaim")["metadata"]["name"]
    for name, cj in jobs.items():
        spec = cj["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["args"] == ["jobs", "run", name.removeprefix("parley-")]
        backups = next(v for v in pod["volumes"] if v["name"] == "backups")
        assert backups["persistentVolumeClaim"]["claimName"] == claim
        assert {"name": "backups", "mountPath": "/backups"} in c["volumeMounts"]
    assert one(k8s, "ConfigMap")["data"]["PARLEY_BACKUP_DIR"] == "/backups"
    dep = one(k8s, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = one(k8s, "Service")["spec"]
    assert svc["selector"] == labels
    ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["ports"]} <= ports
    assert one(k8s, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    hpa = one(k8s, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "parley",
    }
    assert hpa["minReplicas"] >= 2
    assert one(k8s, "Job")["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


# -- Dockerfile and Redis ------------------------------------------------------------------


def test_dockerfile_shape() -> None:
    import server
    from server.web import WEB_DIST

    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, flags=re.M)
    assert [s[1] for s in stages] == ["web", "build", "runtime"]
    assert stages[0][0].startswith("node:") and "RUN npm run build" in text
    assert re.search(r"^USER 10001:10001$", text, flags=re.M)
    assert 'ENTRYPOINT ["parley"]' in text and "STOPSIGNAL SIGTERM" in text
    # the client lands where server/web.py looks for it: web/dist beside the packages
    assert WEB_DIST.relative_to(Path(server.__file__).resolve().parent.parent) == Path("web/dist")
    assert "site-packages/web/dist" in text
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        if not src.startswith(("web/", "requirements/")):  # those come with other work
            assert (ROOT / src).exists(), src


@pytest.fixture
def redis_with_conf(tmp_path: Path) -> Iterator[str]:
    """A redis-server of our own loading deploy/redis.conf (port and dir overridden)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            tool("redis-server"),
            str(DEPLOY / "redis.conf"),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_conf_loads_and_passes_the_check(redis_with_conf: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_with_conf)
    try:
        conf = {k: v for k, v in client.config_get("*").items()}
    finally:
        client.close()
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    result = check_redis(Settings(env="test", redis_url=redis_with_conf))  # type: ignore[call-arg]
    assert result.ok and "appendonly on" in result.detail, result
