"""PNG plots (matplotlib, Agg) from benchmarks/results/*.json; missing files are skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_all"]


def _load(d: Path, name: str) -> dict[str, Any] | None:
    for candidate in (d / f"{name}.json", d / f"{name}-quick.json"):
        if candidate.exists():
            return dict(json.loads(candidate.read_text()))
    return None


def _relay(d: Path, doc: dict[str, Any]) -> None:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind, style in (("parley", "-"), ("floor", "--")):
        runs = doc.get(kind) or []
        xs = [r["streams"] for r in runs]
        for q, color in (("p50", "tab:blue"), ("p99", "tab:orange"), ("max", "tab:red")):
            ys = [r["relay_ms"].get(q) for r in runs]
            ax.plot(xs, ys, style, marker="o", color=color, label=f"{kind} {q}")
        cpu = [r.get("server", {}).get("cpu_us_per_token") for r in runs]
        ax2.plot(xs, cpu, style, marker="o", label=f"{kind} CPU µs / token")
        fpt = [r.get("frames_per_token") for r in runs]
        ax2b = ax2.twinx() if kind == "parley" else None
        if ax2b is not None:
            ax2b.plot(xs, fpt, ":", marker="x", color="gray", label="parley frames / token")
            ax2b.set_ylabel("frames per token")
            ax2b.set_ylim(0, 1.1)
            ax2b.legend(loc="upper center")
    direct = doc.get("direct", {}).get("relay_ms", {})
    if direct:
        ax.axhline(direct.get("p99", 0), color="gray", lw=0.8, label="direct-to-upstream p99 (1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"concurrent streams ({doc.get('tps')} tokens/s each)")
    ax.set_ylabel("relay latency, ms (upstream write → client receipt)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrent streams")
    ax2.set_ylabel("server CPU µs per relayed token")
    ax2.legend(loc="upper left", fontsize=7)
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle("Relay latency and CPU against load (Parley embedded default vs bare floor)")
    fig.tight_layout()
    fig.savefig(d / "relay.png", dpi=110)
    plt.close(fig)


def _idle(d: Path, doc: dict[str, Any]) -> None:
    levels = doc.get("levels") or []
    if not levels:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [lv["connected"] for lv in levels]
    ax.plot(xs, [lv["rss_connected_mib"] for lv in levels], marker="o", label="server RSS")
    ax.axhline(1024, color="red", lw=0.8, ls="--", label="target at 10k: 1 GiB")
    ax.set_xlabel("authenticated idle WebSockets")
    ax.set_ylabel("RSS, MiB")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(d / "idle.png", dpi=110)
    plt.close(fig)


def _comparison(d: Path, doc: dict[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(12, 4))
    labels, data = [], []
    names = {
        "parley": "parley\nSQLite",
        "parley_mysql": "parley\nMariaDB+Redis",
        "floor": "floor",
        "floor_durable": "durable\nfloor",
        "floor_durable_sqlite": "durable floor\nSQLite",
    }
    for kind, name in names.items():
        r = doc.get(kind)
        if not r:
            continue
        for metric in ("first_token_ms", "relay_ms"):
            m = r[metric]
            labels.append(f"{name}\n{metric.removesuffix('_ms').replace('_', ' ')}")
            data.append([m.get("p50", 0), m.get("p99", 0), m.get("max", 0)])
    x = range(len(labels))
    for k, q in enumerate(("p50", "p99", "max")):
        ax.bar([i + (k - 1) * 0.25 for i in x], [row[k] for row in data], 0.25, label=q)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title(
        f"{doc.get('streams')} streams x {doc.get('tokens')} tokens at {doc.get('tps')} tokens/s"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(d / "comparison.png", dpi=110)
    plt.close(fig)


def plot_all(results_dir: Path) -> None:
    for name, fn in (("relay", _relay), ("idle", _idle), ("comparison", _comparison)):
        doc = _load(results_dir, name)
        if doc is not None:
            fn(results_dir, doc)


if __name__ == "__main__":
    plot_all(Path(__file__).resolve().parent / "results")
