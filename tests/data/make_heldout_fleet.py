"""Writes the held-out labelled fleet (``heldout_fleet.json``) and its truth file.

Written before any tuning of the analytics against it, and different from the synthetic fleet on
purpose: 14 servers in two datacenters (``fra``, ``ams``), 5-minute samples over 16 h, UTC
timestamps, one explicit cross-datacenter ``dependsOn`` (a replica that follows the primary),
and ids whose alphabetical order points at the wrong root. Scripted:

- a traffic surge entering at ``ams-lb-b`` and spreading to the web, application and database
  behind it (root: the load balancer, the first to move);
- a noisy response-time sample on ``fra-fe-1`` two samples before a cascade from ``fra-pg-main``
  (CPU, disk I/O and memory of the database first, then the APIs, the web tier and the load
  balancer);
- a fleet-wide latency rise: response time x1.8 on every server for 40 minutes;
- two overlapping incidents in different datacenters: memory pressure on the cache
  ``fra-redis-1`` slowing the APIs, and a CPU saturation on ``ams-api-3`` slowing the web server
  and the load balancer in front of it;
- a slow memory leak on ``fra-fe-2`` that crosses 80 % late in the window.

Run ``python tests/data/make_heldout_fleet.py`` to regenerate (deterministic).
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)
POINTS = 192  # 16 h

# id: (role, datacenter, cores, memoryGb, cpu, memory, disk, diskIo, net, responseMs)
SERVERS: dict[str, tuple[str, str, int, int, float, float, float, float, float, float]] = {
    "fra-lb-a": ("load_balancer", "fra", 2, 4, 15, 30, 20, 3, 400, 14),
    "fra-fe-1": ("web", "fra", 4, 8, 30, 45, 40, 6, 150, 150),
    "fra-fe-2": ("web", "fra", 4, 8, 28, 50, 42, 6, 140, 140),
    "fra-fe-3": ("web", "fra", 4, 8, 31, 44, 38, 6, 150, 155),
    "fra-api-1": ("application", "fra", 8, 16, 35, 58, 35, 10, 90, 180),
    "fra-api-2": ("application", "fra", 8, 16, 33, 55, 36, 10, 90, 175),
    "fra-pg-main": ("database", "fra", 32, 128, 30, 70, 55, 25, 60, 8),
    "fra-redis-1": ("cache", "fra", 2, 16, 12, 60, 15, 2, 120, 1.5),
    "fra-nfs-1": ("storage", "fra", 4, 16, 8, 35, 62, 18, 70, 6),
    "ams-lb-b": ("load_balancer", "ams", 2, 4, 10, 28, 20, 3, 200, 13),
    "ams-fe-4": ("web", "ams", 4, 8, 25, 40, 37, 5, 100, 140),
    "ams-api-3": ("application", "ams", 8, 16, 38, 60, 33, 9, 70, 190),
    "ams-pg-replica": ("database", "ams", 16, 64, 20, 65, 54, 15, 40, 7),
    "ams-cache-2": ("cache", "ams", 2, 16, 9, 52, 15, 2, 80, 1.4),
}
#: the replica follows the primary across datacenters: only the topology may say so
DEPENDS_ON = {"ams-pg-replica": ["fra-pg-main"]}


def _stamp(index: float) -> str:
    return (START + STEP * index).isoformat()


def _bump(i: int, rise: float, fall: float, ramp: float = 1.0) -> float:
    """0 before ``rise``, 1 from ``rise + ramp`` until ``fall``, back to 0 over ``ramp``.

    Fractional ``rise`` values put the change between two samples, as in real data.
    """
    up = min(1.0, max(0.0, (i - rise) / ramp))
    down = min(1.0, max(0.0, (i - fall) / ramp))
    return up * (1.0 - down)


def _normal(rng: random.Random, profile: tuple[Any, ...], i: int) -> dict[str, float]:
    _, _, cores, _, cpu, memory, disk, disk_io, net, resp = profile
    wave = 0.5 + 0.5 * math.sin(2 * math.pi * i / POINTS)
    c = cpu * (0.85 + 0.3 * wave) + rng.gauss(0, 1.2)
    return {
        "cpu": c,
        "memory": memory + rng.gauss(0, 0.5),
        "disk": disk + 0.01 * i + rng.gauss(0, 0.03),
        "diskIo": disk_io * (0.9 + 0.2 * wave) + rng.gauss(0, 0.8),
        "netIn": net * (0.85 + 0.3 * wave) * (1 + rng.gauss(0, 0.03)),
        "netOut": net * 0.7 * (0.85 + 0.3 * wave) * (1 + rng.gauss(0, 0.03)),
        "load": 0.0,  # from cpu below
        "responseMs": resp * (0.95 + 0.1 * wave) * (1 + rng.gauss(0, 0.04)),
        "packetLoss": abs(rng.gauss(0, 0.01)),
        "_cores": float(cores),
    }


def _surge(sid: str, i: int, m: dict[str, float]) -> None:
    """1. traffic surge at ams-lb-b, samples 30.5 .. 44."""
    surge = _bump(i, 30.5, 44)
    if sid == "ams-lb-b":
        m["netIn"] *= 1 + 2.5 * surge
        m["netOut"] *= 1 + 2.5 * surge
        m["cpu"] += 40 * surge
    surge_behind = _bump(i, 31.4, 44)
    if sid == "ams-fe-4":
        m["netIn"] *= 1 + 2.2 * surge_behind
        m["cpu"] += 58 * surge_behind
        m["responseMs"] *= 1 + 1.5 * surge_behind
    if sid == "ams-api-3":
        m["cpu"] += 50 * _bump(i, 32.3, 44)
        m["responseMs"] *= 1 + 2.8 * _bump(i, 32.3, 44)
    if sid == "ams-pg-replica":
        m["cpu"] += 45 * _bump(i, 33.2, 44)


def _cascade(sid: str, i: int, m: dict[str, float]) -> None:
    """2. noisy sample on fra-fe-1 at 58, then the cascade from fra-pg-main from 59.6 to 78."""
    if sid == "fra-fe-1" and i == 58:
        m["responseMs"] = 640.0
    db = _bump(i, 59.6, 78)
    if sid == "fra-pg-main":
        m["cpu"] += (95 - m["cpu"]) * db
        m["diskIo"] += (92 - m["diskIo"]) * db
        m["memory"] += (91 - m["memory"]) * db
        m["responseMs"] *= 1 + 8 * db
    if sid in {"fra-api-1", "fra-api-2"}:
        m["responseMs"] *= 1 + 3.5 * _bump(i, 60.4, 78)
    if sid in {"fra-fe-1", "fra-fe-2", "fra-fe-3"}:
        m["responseMs"] *= 1 + 3.0 * _bump(i, 61.2, 78)
    if sid == "fra-lb-a":
        m["responseMs"] *= 1 + 30 * _bump(i, 62.0, 78)


def _fleet_wide(sid: str, i: int, m: dict[str, float]) -> None:
    """3. fleet-wide latency rise, samples 96 .. 104."""
    m["responseMs"] *= 1 + 0.8 * _bump(i, 95.5, 104)


def _overlapping(sid: str, i: int, m: dict[str, float]) -> None:
    """4a. memory pressure on fra-redis-1 from 119.5 to 140, and 4b. a CPU saturation on
    ams-api-3 from 125.5 to 146, overlapping 4a in the other datacenter."""
    cache = _bump(i, 119.5, 140)
    if sid == "fra-redis-1":
        m["memory"] += (94 - m["memory"]) * cache
        m["responseMs"] *= 1 + 6 * cache
        m["cpu"] += 20 * cache
    if sid in {"fra-api-1", "fra-api-2"}:
        m["responseMs"] *= 1 + 2.2 * _bump(i, 120.6, 140)
    hot = _bump(i, 125.5, 146)
    if sid == "ams-api-3":
        m["cpu"] += (97 - m["cpu"]) * hot
        m["responseMs"] *= 1 + 2.5 * hot
    if sid == "ams-fe-4":
        m["responseMs"] *= 1 + 2.8 * _bump(i, 126.4, 146)
    if sid == "ams-lb-b":
        m["responseMs"] *= 1 + 25 * _bump(i, 127.3, 146)


def _leak(sid: str, i: int, m: dict[str, float]) -> None:
    """5. slow memory leak on fra-fe-2 from sample 40: 50 % -> about 84 % at the end."""
    if sid == "fra-fe-2" and i > 40:
        m["memory"] += 0.225 * (i - 40)


def build() -> tuple[dict[str, object], dict[str, object]]:
    rng = random.Random(20260302)
    servers = []
    for sid, profile in SERVERS.items():
        series: dict[str, list[float]] = {}
        for i in range(POINTS):
            m = _normal(rng, profile, i)
            for script in (_surge, _cascade, _fleet_wide, _overlapping, _leak):
                script(sid, i, m)
            m["load"] = max(0.0, m["cpu"]) / 100 * m.pop("_cores") * 1.1 + abs(rng.gauss(0, 0.05))
            for key, raw in m.items():
                value = min(100.0, raw) if key in {"cpu", "memory", "disk", "diskIo"} else raw
                series.setdefault(key, []).append(round(max(0.0, value), 2))
        role, datacenter, cores, memory_gb = profile[:4]
        server: dict[str, object] = {
            "id": sid,
            "role": role,
            "datacenter": datacenter,
            "cpuCores": cores,
            "memoryGb": memory_gb,
            "metrics": {**series, "up": [True] * POINTS},
        }
        if sid in DEPENDS_ON:
            server["dependsOn"] = DEPENDS_ON[sid]
        servers.append(server)
    fleet = {
        "intervalMinutes": 5,
        "timestamps": [_stamp(i) for i in range(POINTS)],
        "servers": servers,
    }
    truth: dict[str, object] = {
        "fleet": "heldout_fleet.json",
        "note": "written before tuning; samples are 5 minutes apart from " + _stamp(0),
        "incidents": [
            {
                "id": "traffic-surge",
                "root": "ams-lb-b",
                "kind": "traffic_surge",
                "start": _stamp(30),
                "end": _stamp(45),
                "servers": ["ams-lb-b", "ams-fe-4", "ams-api-3", "ams-pg-replica"],
            },
            {
                "id": "db-cascade",
                "root": "fra-pg-main",
                "kind": "database",
                "start": _stamp(59),
                "end": _stamp(79),
                "servers": [
                    "fra-pg-main",
                    "fra-api-1",
                    "fra-api-2",
                    "fra-fe-1",
                    "fra-fe-2",
                    "fra-fe-3",
                    "fra-lb-a",
                ],
            },
            {
                "id": "cache-memory",
                "root": "fra-redis-1",
                "kind": "memory_pressure",
                "start": _stamp(119),
                "end": _stamp(141),
                "servers": ["fra-redis-1", "fra-api-1", "fra-api-2"],
            },
            {
                "id": "api-cpu",
                "root": "ams-api-3",
                "kind": "cpu_saturation",
                "start": _stamp(125),
                "end": _stamp(147),
                "servers": ["ams-api-3", "ams-fe-4", "ams-lb-b"],
            },
            {
                "id": "slow-leak",
                "root": "fra-fe-2",
                "kind": "memory_leak",
                "start": _stamp(173),
                "end": _stamp(POINTS - 1),
                "servers": ["fra-fe-2"],
            },
        ],
        "fleetWide": [
            {"id": "latency-rise", "metric": "response_ms", "start": _stamp(95), "end": _stamp(105)}
        ],
        "noise": [{"server": "fra-fe-1", "metric": "response_ms", "at": _stamp(58)}],
    }
    return fleet, truth


def main() -> None:
    fleet, truth = build()
    (HERE / "heldout_fleet.json").write_text(json.dumps(fleet, separators=(",", ":")) + "\n")
    (HERE / "heldout_truth.json").write_text(json.dumps(truth, indent=2) + "\n")


if __name__ == "__main__":
    main()
