"""Summarise py-spy ``--format raw`` (collapsed stacks) files: where the server's CPU goes.

    python benchmarks/profile_summary.py benchmarks/results/profiles/*.txt

For each file: the share of samples by the package of the innermost frame (self
time), the share of samples with a Parley frame (server/, protocol/, store/) anywhere
on the stack by the innermost Parley function and by inclusive areas, and the top
self-time functions.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
_PKGS = (
    "hypercorn",
    "wsproto",
    "h11",
    "quart_trio",
    "quart",
    "werkzeug",
    "httpx",
    "httpcore",
    "anyio",
    "trio_websocket",
    "trio",
    "sqlalchemy",
    "pymysql",
    "redis",
    "prometheus_client",
    "structlog",
    "pydantic",
    "jwt",
    "orjson",
    "logging",
    "json",
    "sqlite3",
    "threading",
)


def _package(path: str) -> str:
    """py-spy prints paths relative to sys.path: the first component is the package."""
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    head = path.split("/", 1)[0]
    if head in ("server", "protocol", "store"):
        return f"parley:{head}"
    if "/" not in path:
        return "stdlib:" + path.removesuffix(".py")
    return head


#: inclusive areas: a sample counts for an area when any of these functions is on its stack
_INCLUSIVE = {
    "database (Database.tx, in threads)": {"Database.tx.<locals>.work"},
    "chat.send handling (TurnManager.send)": {"TurnManager.send"},
    "upstream read + SSE parse (OpenAIProvider._events)": {"OpenAIProvider._events"},
    "turn loop (TurnManager._generate)": {"TurnManager._generate"},
    "checkpointer": {"TurnManager._checkpointer"},
    "connection writer (_writer)": {"_writer"},
    "connection reader (_reader)": {"_reader"},
    "heartbeat / watchdog (_heartbeat, _watch)": {"_heartbeat", "_watch"},
    "websocket handshake + auth (handle_websocket)": {"authenticate"},
    "REST (guest, conversations)": {"guest", "create_conversation", "create"},
    "metrics (prometheus_client)": {"inc", "observe", "labels"},
    "logging": {"_proxy_to_logger", "emit", "log", "info"},
}


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m["func"], m["file"]


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    by_pkg: Counter[str] = Counter()
    by_func: Counter[str] = Counter()
    by_entry: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        func, file = _parse(frames[-1])
        by_pkg[_package(file)] += n
        by_func[f"{func} ({_package(file)})"] += n
        own = [_parse(f) for f in frames if _package(_parse(f)[1]).startswith("parley:")]
        key = own[-1][0] if own else "(no Parley frame: hypercorn/trio/libs only)"
        by_entry[key] += n
        thread = "worker thread" if "Thread._bootstrap" in frames[0] else "trio thread"
        by_thread[thread] += n
        names = {_parse(f)[0] for f in frames}
        for label, funcs in _INCLUSIVE.items():
            if names & funcs:
                by_area[label] += n

    def pct(c: Counter[str]) -> dict[str, float]:
        return {k: round(v * 100 / total, 1) for k, v in c.most_common(top)}

    return {
        "file": path.name,
        "samples": total,
        "self_by_package_pct": pct(by_pkg),
        "by_thread_pct": pct(by_thread),
        "inclusive_by_area_pct": pct(by_area),
        "by_innermost_parley_function_pct": pct(by_entry),
        "top_self_functions_pct": pct(by_func),
    }


def main(argv: list[str]) -> int:
    out = [summarise(Path(p)) for p in argv]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
