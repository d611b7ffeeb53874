"""``parley``: serve, migrate, admin grant, jobs run."""

from __future__ import annotations

import argparse
import sys

from server.settings import Settings, SettingsError, load_settings

__all__ = ["main"]


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_migrate(_args: argparse.Namespace) -> int:
    from store.migrate import current_revision, database_location, upgrade_to_head

    settings = _settings()
    upgrade_to_head(settings.database_url)
    revision = current_revision(settings.database_url)
    print(f"database at revision {revision} ({database_location(settings.database_url)})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    settings = _settings(**overrides)
    from server.serve import serve

    return serve(settings)


def cmd_admin_grant(args: argparse.Namespace) -> int:
    import trio

    from store import users
    from store.db import Database
    from store.records import UserRole

    settings = _settings()
    db = Database(settings.database_url, pool_size=1)
    try:
        ok = trio.run(
            db.tx, lambda c: users.set_role(c, args.email.strip().lower(), UserRole.ADMIN.value)
        )
    finally:
        db.dispose()
    if not ok:
        print("parley: no user with that email", file=sys.stderr)
        return 1
    print("granted admin")
    return 0


def cmd_jobs_run(args: argparse.Namespace) -> int:
    if args.name in ("retention", "backup", "restore-check"):
        from jobs.run import run_job

        return run_job(args.name, _settings())
    print(f"parley: job {args.name!r} is not implemented yet", file=sys.stderr)
    return 3


def cmd_check(args: argparse.Namespace) -> int:
    from server.check import run_checks

    return run_checks(upstream=args.upstream)


def _default(name: str) -> object:
    return Settings.model_fields[name].default


_DATABASE_NOTE = (
    "Settings are environment variables (README.md). The database is PARLEY_DATABASE_URL "
    f"(default: {_default('database_url')}, relative to the current folder)."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parley", description="Parley chat server")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the server: REST API, WebSocket, health and metrics. "
        "On SQLite it brings the database schema to the newest version first.",
        epilog=_DATABASE_NOTE,
    )
    s.add_argument(
        "--host", help=f"address to listen on (default: PARLEY_HOST, else {_default('host')})"
    )
    s.add_argument(
        "--port",
        type=int,
        help=f"TCP port, 0 for any free one (default: PARLEY_PORT, else {_default('port')})",
    )
    s.add_argument(
        "--workers",
        type=int,
        help=f"server processes on one port; above 1 needs PARLEY_REDIS_URL "
        f"(default: PARLEY_WORKERS, "
        f"else {_default('workers')})",
    )
    s.set_defaults(func=cmd_serve)
    m = sub.add_parser(
        "migrate",
        help="bring the schema to the newest version",
        description="Bring the database schema to the newest version (run it before serve "
        "on MySQL/MariaDB).",
        epilog=_DATABASE_NOTE,
    )
    m.set_defaults(func=cmd_migrate)
    a = sub.add_parser("admin", help="administration")
    asub = a.add_subparsers(dest="admin_command", required=True)
    g = asub.add_parser("grant", help="give a user the admin role")
    g.add_argument("email", help="the user's email address (any case)")
    g.set_defaults(func=cmd_admin_grant)
    j = sub.add_parser("jobs", help="scheduled jobs")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    r = jsub.add_parser("run", help="run one job once")
    r.add_argument("name", choices=["retention", "backup", "restore-check"], help="the job")
    r.set_defaults(func=cmd_jobs_run)
    c = sub.add_parser("check", help="check settings, database, Redis, upstream, keys, clock")
    c.add_argument("--upstream", action="store_true", help="also send the model one tiny request")
    c.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
