"""A rolling upgrade under load: 0 lost, 0 duplicated chunks.

Two `parley serve` instances on a fresh MariaDB database and a Redis of their own; N
clients (default 500, each its own user) stream long answers (default 200 tokens at 20
tok/s) spread over both. Then: SIGTERM instance 0 (it drains: its clients are told
`server.draining`, reconnect to instance 1 and follow their answers there through Redis),
start it again, SIGTERM instance 1, start it again. Every client's answer, as it put it
together, is compared with what the database stored.

    .venv/bin/python benchmarks/rolling_upgrade.py --clients 500

Writes benchmarks/results/rolling_upgrade.json. A 10-client version runs in `make test`
(tests/chaos/test_instances.py::test_rolling_upgrade_loses_nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cluster_env import cluster, machine  # noqa: E402
from tests.support.chatter import Chatter  # noqa: E402
from tests.support.wsclient import Rest  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "PARLEY_SIM_TOKENS_PER_SECOND": str(args.tps),
        "PARLEY_SIM_MAX_TOKENS": str(args.tokens),
        "PARLEY_WS_UPGRADES_PER_IP_PER_HOUR": "1000000",
        "PARLEY_SIGNUPS_PER_IP_PER_HOUR": "1000000",
    }
    steps: list[dict[str, Any]] = []
    with cluster(2, env) as c:
        urls = [c.ws_url(0), c.ws_url(1)]
        rest = Rest(c.url(0))
        chatters: list[Chatter] = []
        for _ in range(args.clients):
            reg = await rest.register()
            token = reg["accessToken"]
            chatters.append(Chatter(urls, token, await rest.conversation(token)))
        for i, ch in enumerate(chatters):
            ch._next = i % 2
        failures: list[str] = []
        t0 = time.monotonic()

        async def one(ch: Chatter) -> None:
            try:
                await ch.ask("a long story, please", timeout=args.timeout)
            except AssertionError as exc:
                failures.append(str(exc)[:300])

        def step(what: str) -> None:
            steps.append({"at_s": round(time.monotonic() - t0, 2), "step": what})
            print(steps[-1], flush=True)

        async with trio.open_nursery() as nursery:
            for ch in chatters:
                nursery.start_soon(one, ch)
            await trio.sleep(args.settle)
            for i in (0, 1):
                step(f"SIGTERM instance {i}")
                code = await c.aterm(i)
                step(f"instance {i} exited {code}")
                await c.astart(i)
                step(f"instance {i} ready again")
        step("every client done")
        lost = duplicated = stuck = 0
        statuses: dict[str, int] = {}
        stuck_timelines: list[list[str]] = []
        for ch in chatters:
            if ch.assistant_seq is None or ch.out.dones == 0:
                stuck += 1
                if len(stuck_timelines) < 10:
                    stuck_timelines.append([f"{at - t0:.2f} {what}" for at, what in ch.timeline])
                continue
            history = await Rest(c.url(0)).history(ch.token, ch.conv)
            [stored] = [m for m in history if m["seq"] == ch.assistant_seq]
            statuses[stored["status"]] = statuses.get(stored["status"], 0) + 1
            stuck += stored["status"] == "streaming"
            lost += ch.out.text != stored["content"]
            duplicated += ch.out.duplicates > 0 or ch.out.done_frames > 1
    return {
        "command": " ".join(["benchmarks/rolling_upgrade.py", *sys.argv[1:]]),
        "machine": machine(),
        "clients": args.clients,
        "tokens": args.tokens,
        "tokens_per_second": args.tps,
        "lost": lost,
        "duplicated": duplicated,
        "stuck": stuck,
        "statuses": statuses,
        "reconnects": sum(ch.out.reconnects for ch in chatters),
        "resets": sum(ch.out.resets for ch in chatters),
        # why sessions ended before the answer did (the draining ones end on a frame)
        "session_ends": dict(
            Counter(
                what.split("(")[0].split("<")[0]
                for ch in chatters
                for _, what in ch.timeline
                if what.startswith(("ended", "no session.ready", "server.draining", "error"))
            ).most_common()
        ),
        "failure_kinds": dict(Counter(f[:60] for f in failures).most_common(10)),
        "failures": failures[:20],
        "steps": steps,
        "stuck_timelines": stuck_timelines,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds before the first SIGTERM"
    )
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "rolling_upgrade.json")
    args = parser.parse_args()
    summary = trio.run(main, args)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{summary['clients']} clients: lost {summary['lost']}, duplicated "
        f"{summary['duplicated']}, stuck {summary['stuck']}; statuses {summary['statuses']}; "
        f"reconnects {summary['reconnects']}, resets {summary['resets']}"
    )
