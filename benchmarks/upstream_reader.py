"""CPU per token of reading an upstream stream: OpenAIProvider's httpx transport vs its h11 one.

    .venv/bin/python -m benchmarks.upstream_reader [--streams 200] [--tokens 200] \\
        [--tps 1000] [--repeat 3] [--transports httpx,h11] [--out PATH]

Starts the fake upstream (benchmarks/fake_upstream.py, its own process), then for each
transport runs `--streams` concurrent streams of `--tokens` tokens through
`OpenAIProvider.stream()` directly (no resilience layer, no Parley server) and measures
this process only: CPU seconds (`time.process_time()`) per token and tokens/s (wall).
`--tps` is each stream's pace at the fake (0: as fast as the fake can write).

Two regimes, both worth a run. Saturated (the default: 200 streams x 1,000 tokens/s
offered, more than one core reads): tokens/s is the reader's capacity, and `cpu_share`
(CPU s / wall s) is near 1; but several chunks then pile up per socket read, and a faster
reader reads more often with fewer chunks per read, so CPU per token there understates
per-chunk savings. Paced (e.g. ``--tps 50``: 10,000 tokens/s offered, `cpu_share` well
under 1): each chunk is its own read, as at real model speeds, and CPU per token is the
figure a server pays.

Each transport gets one provider for the whole run and one untimed warm-up round, then
`--repeat` timed rounds, the transports taking turns; the summary is the median round.
Every stream's text must equal `expected_text(tokens)` (``lost`` counts those that do
not, failed ones included). Writes `--out` (default benchmarks/results/upstream_reader.json)
with the command, the machine, the parameters and every round's raw figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import h11
import httpx
import trio

from benchmarks.cluster_env import machine
from benchmarks.fake_upstream import expected_text, running_fake_upstream
from server.llm import ChatMessage, OpenAIProvider, StreamEnd, TokenDelta, UpstreamError

RESULTS = Path(__file__).resolve().parent / "results" / "upstream_reader.json"
MESSAGES = [ChatMessage("user", "benchmark")]


async def one_round(provider: OpenAIProvider, streams: int, tokens: int) -> dict[str, Any]:
    expected = expected_text(tokens)
    counts = {"tokens": 0, "lost": 0, "errors": 0}
    errors: list[str] = []

    async def one() -> None:
        parts: list[str] = []
        ended = False
        try:
            async with provider.stream(MESSAGES, max_tokens=tokens) as events:
                async for event in events:
                    if isinstance(event, TokenDelta):
                        parts.append(event.text)
                    elif isinstance(event, StreamEnd):
                        ended = True
        except UpstreamError as exc:
            counts["errors"] += 1
            if len(errors) < 5:
                errors.append(repr(exc))
        counts["tokens"] += len(parts)
        if not ended or "".join(parts) != expected:
            counts["lost"] += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = counts["tokens"]
    return {
        "cpu_s": round(cpu, 4),
        "wall_s": round(wall, 4),
        "tokens": n,
        "cpu_us_per_token": round(cpu / n * 1e6, 2) if n else None,
        "tokens_per_s": round(n / wall, 1) if wall > 0 else None,
        "cpu_share": round(cpu / wall, 3) if wall > 0 else None,
        "lost": counts["lost"],
        "errors": counts["errors"],
        "error_samples": errors,
    }


async def measure(args: argparse.Namespace, base_url: str) -> dict[str, list[dict[str, Any]]]:
    providers = {
        t: OpenAIProvider(base_url, None, "fake", transport=t, include_usage=False)
        for t in args.transports
    }
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in args.transports}
    try:
        for t, p in providers.items():
            warm = await one_round(p, args.streams, min(args.tokens, 20))
            print(f"[warm-up] {t}: {json.dumps(warm)}", file=sys.stderr)
        for rep in range(args.repeat):
            for t, p in providers.items():
                r = await one_round(p, args.streams, args.tokens)
                runs[t].append(r)
                print(f"[{rep}] {t}: {json.dumps(r)}", file=sys.stderr)
    finally:
        for p in providers.values():
            await p.aclose()
    return runs


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median CPU per token, and the median of each figure."""
    key = [r["cpu_us_per_token"] or float("inf") for r in rounds]
    mid = sorted(range(len(rounds)), key=lambda i: key[i])[len(rounds) // 2]
    return {
        "cpu_us_per_token": statistics.median(key),
        "tokens_per_s": statistics.median(r["tokens_per_s"] or 0.0 for r in rounds),
        "cpu_share": statistics.median(r["cpu_share"] or 0.0 for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "median_round": mid,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--tps", type=float, default=1000.0, help="per stream, at the fake; 0 = max")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--transports", default="httpx,h11", type=lambda s: s.split(","))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    with running_fake_upstream(tokens=args.tokens, tps=args.tps) as (_proc, base_url):
        runs = trio.run(measure, args, base_url)

    summary = {t: median_round(r) for t, r in runs.items()}
    doc = {
        "command": "python -m benchmarks.upstream_reader " + " ".join(sys.argv[1:]),
        "machine": {
            **machine(),
            "trio": trio.__version__,
            "h11": h11.__version__,
            "httpx": httpx.__version__,
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        "params": {
            "streams": args.streams,
            "tokens": args.tokens,
            "tps_per_stream": args.tps,
            "offered_tokens_per_s": args.streams * args.tps if args.tps > 0 else None,
            "repeat": args.repeat,
            "transports": args.transports,
        },
        "summary_median": summary,
        "runs": runs,
        "notes": (
            "This process only (the fake upstream is another process): CPU = "
            "time.process_time() over a round, start of the first stream to the end of the "
            "last; tokens = TokenDelta events; one warm-up round per transport first (its "
            "connections stay pooled where the transport keeps them)."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    lost = sum(s["lost"] + s["errors"] for s in summary.values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
