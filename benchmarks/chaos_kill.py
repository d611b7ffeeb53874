"""Kill an instance mid-answer, many times: lost / duplicated / stuck counts (target 0/0/0).

Two `parley serve` processes on a fresh MariaDB database and a Redis of their own. Each run
starts an answer on one instance (the victim), kills it with SIGKILL once the client holds
a few chunks, and lets the client reconnect to the other instance and resume, as the
browser client does. A run counts as

- lost: the answer the client put together differs from what the database stored;
- duplicated: a chunk arrived twice, or more than one chat.done;
- stuck: no end of the answer within the timeout, or the stored message still streaming.

    .venv/bin/python benchmarks/chaos_kill.py --runs 100

Writes benchmarks/results/chaos_kill.json. The same scenario runs 10 times in `make test`
(tests/chaos/test_instances.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cluster_env import cluster, machine  # noqa: E402
from tests.support.chatter import Chatter  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.wsclient import Rest  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


async def one_run(c: Cluster, token: str, run: int, timeout: float) -> dict[str, Any]:
    victim, survivor = run % 2, 1 - run % 2
    conv = await Rest(c.url(survivor)).conversation(token)
    chatter = Chatter([c.ws_url(victim), c.ws_url(survivor)], token, conv)
    chatter._next = 0
    started = time.monotonic()
    killed_at: list[float] = []
    result: dict[str, Any] = {"run": run}

    restarted_at: list[float] = []

    async def kill() -> None:
        with trio.fail_after(20):
            while chatter.last_chunk < 5:  # noqa: ASYNC110
                await trio.sleep(0.005)
        c.kill9(victim)
        killed_at.append(time.monotonic())
        await c.astart(victim)
        restarted_at.append(time.monotonic())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill)
            outcome = await chatter.ask(f"run {run}", timeout=timeout)
            answered_at = time.monotonic()
    except AssertionError as exc:
        result.update(stuck=True, detail=str(exc)[:300], timeline=_timeline(chatter, started))
        return result
    history = await Rest(c.url(survivor)).history(token, conv)
    [stored] = [m for m in history if m["seq"] == chatter.assistant_seq]
    result.update(
        stuck=stored["status"] == "streaming",
        lost=outcome.text != stored["content"],
        duplicated=outcome.duplicates > 0 or outcome.done_frames > 1 or outcome.dones > 1,
        status=stored["status"],
        reset=outcome.resets > 0,
        # from the kill to the end of the answer on the survivor (not the victim's restart)
        recovered_s=round(answered_at - killed_at[0], 3) if killed_at else None,
        restart_s=round(restarted_at[0] - killed_at[0], 3) if restarted_at else None,
        run_s=round(time.monotonic() - started, 3),
    )
    if result["recovered_s"] and result["recovered_s"] > 10:  # an outlier: say what happened
        result["timeline"] = _timeline(chatter, started)
        result["killed_at_s"] = round(killed_at[0] - started, 3)
    return result


def _timeline(chatter: Chatter, started: float) -> list[str]:
    return [f"{t - started:.3f} {what}" for t, what in chatter.timeline]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "PARLEY_TURN_LEASE_SECONDS": str(args.lease),
        "PARLEY_TURN_SWEEP_SECONDS": str(args.sweep),
        "PARLEY_SIM_TOKENS_PER_SECOND": "60",
        "PARLEY_SIM_MAX_TOKENS": "60",
    }
    runs: list[dict[str, Any]] = []
    with cluster(2, env) as c:
        token = (await Rest(c.url(0)).register())["accessToken"]
        for run in range(args.runs):
            result = await one_run(c, token, run, args.timeout)
            runs.append(result)
            print(json.dumps(result), flush=True)
    recovered = sorted(r["recovered_s"] for r in runs if r.get("recovered_s") is not None)
    return {
        "command": " ".join(["benchmarks/chaos_kill.py", *sys.argv[1:]]),
        "machine": machine(),
        "settings": env,
        "runs": len(runs),
        "lost": sum(1 for r in runs if r.get("lost")),
        "duplicated": sum(1 for r in runs if r.get("duplicated")),
        "stuck": sum(1 for r in runs if r.get("stuck")),
        "resets": sum(1 for r in runs if r.get("reset")),
        "recovery_seconds": {
            "p50": recovered[len(recovered) // 2] if recovered else None,
            "max": recovered[-1] if recovered else None,
        },
        "results": runs,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--lease", type=float, default=2.0, help="PARLEY_TURN_LEASE_SECONDS")
    parser.add_argument("--sweep", type=float, default=0.5, help="PARLEY_TURN_SWEEP_SECONDS")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos_kill.json")
    args = parser.parse_args()
    summary = trio.run(main, args)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"runs {summary['runs']}: lost {summary['lost']}, duplicated {summary['duplicated']}, "
        f"stuck {summary['stuck']} (resets {summary['resets']}); recovery after the kill "
        f"p50 {summary['recovery_seconds']['p50']} s, max {summary['recovery_seconds']['max']} s"
    )
