"""Draws docs/bench.png from the benchmark's results: the API and cold-start panels, each beside
its floor, and the jobs panels beside the peer, one unit per panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str], unit: str) -> None:
    bars = ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )


def draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor, ours, peer = "#9e9e9e", "#1e88e5", "#fb8c00"
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    api = results["apiQueuePaused"]
    names = list(api)
    _bars(
        axes[0][0],
        names,
        [api[n]["latencyMs"]["p90"] for n in names],
        [floor if n.startswith("floor") else ours for n in names],
        "ms",
    )
    axes[0][0].set_title(f"p90 latency, {results['connections']} connections, queue paused")
    _bars(
        axes[0][1],
        names,
        [api[n]["cpuMsPerRequest"].get("function", 0.0) for n in names],
        [floor if n.startswith("floor") else ours for n in names],
        "CPU ms per request",
    )
    axes[0][1].set_title("CPU of the function process per request")
    cold = results["coldStartMs"]
    _bars(
        axes[1][0],
        [f"{n} {kind}" for n in cold for kind in ("wall", "CPU")],
        [cold[n][key] for n in cold for key in ("median", "cpuMs")],
        [
            (floor if n == "bare function" else ours) if key == "median" else "#90caf9"
            for n in cold
            for key in ("median", "cpuMs")
        ],
        "ms",
    )
    axes[1][0].set_title("cold start: process start -> first answer (wall, CPU)")
    jobs, other = results["jobs"], results["peer"]
    pickup = [jobs["pickupMs"]["p50"], other["pickupMs"]["p50"]]
    pickup_labels, pickup_colors = ["this queue", "Procrastinate"], [ours, peer]
    if "pickupClientsFloorMs" in jobs:  # the same path with the client libraries alone
        pickup.insert(1, jobs["pickupClientsFloorMs"]["p50"])
        pickup_labels.insert(1, "client-library floor")
        pickup_colors.insert(1, floor)
    _bars(axes[1][1], pickup_labels, pickup, pickup_colors, "ms")
    axes[1][1].set_title("pickup p50, created -> claimed")
    for ax, title, unit, ours_value, peer_value in (
        (
            axes[1][2],
            "the queue's own CPU per job",
            "CPU ms per job",
            jobs["queueOwnCpuMsPerJob"],
            other["cpuMsPerJob"]["total"],
        ),
        (
            axes[0][2],
            "burst throughput\n(this queue with its AI work, the peer no-op tasks)",
            "jobs per second",
            jobs["burst"]["jobsPerSecond"],
            other["burst"]["jobsPerSecond"],
        ),
    ):
        _bars(ax, ["this queue", "Procrastinate"], [ours_value, peer_value], [ours, peer], unit)
        ax.set_title(title)
    fig.suptitle(
        f"ai-job-queue local benchmark ({results['machine']['cpus']} CPUs,"
        f" Python {results['machine']['python']}); grey = floor measured in the same run",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
