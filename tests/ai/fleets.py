"""Test helpers: small generated fleets, the held-out labelled fleet, renaming and shifting.

A plain module (not a conftest) so tests import what they use.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.ai.facts import FleetFacts, Incident
from shared.ai.fleet import Fleet

DATA = Path(__file__).resolve().parent.parent / "data"
HELDOUT = DATA / "heldout_fleet.json"
HELDOUT_TRUTH = DATA / "heldout_truth.json"

#: normal level per role: cpu %, memory %, response ms, inbound Mbit/s
_LEVELS = {
    "load_balancer": (12.0, 30.0, 12.0, 300.0),
    "web": (25.0, 45.0, 120.0, 120.0),
    "application": (35.0, 55.0, 180.0, 80.0),
    "database": (30.0, 70.0, 8.0, 50.0),
    "cache": (10.0, 50.0, 4.0, 90.0),
    "storage": (8.0, 35.0, 6.0, 60.0),
}


@dataclass
class Spec:
    """One server of a generated fleet."""

    id: str
    role: str
    datacenter: str = "dc-a"
    depends_on: list[str] | None = None


@dataclass
class Change:
    """A scripted change: ``metric`` of ``server`` moves to ``factor`` x (or to ``level``)
    from sample ``at`` (fractional: between samples) for ``samples`` samples."""

    server: str
    metric: str
    at: float
    samples: int
    factor: float = 1.0
    level: float | None = None


@dataclass
class FleetPlan:
    servers: list[Spec]
    changes: list[Change] = field(default_factory=list)
    points: int = 72
    interval_minutes: int = 10
    seed: int = 1
    start: datetime = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)


def _weight(i: int, change: Change) -> float:
    rise = min(1.0, max(0.0, i - change.at))
    fall = min(1.0, max(0.0, i - (change.at + change.samples)))
    return rise * (1.0 - fall)


def build(plan: FleetPlan) -> dict[str, Any]:
    """The plan as fleet JSON (the documented format)."""
    rng = random.Random(plan.seed)
    servers = []
    for spec in plan.servers:
        cpu, memory, response, net = _LEVELS[spec.role]
        series: dict[str, list[float]] = {
            k: [] for k in ("cpu", "memory", "disk", "netIn", "netOut", "load", "responseMs")
        }
        for i in range(plan.points):
            wave = 0.5 + 0.5 * math.sin(2 * math.pi * i / plan.points)
            m = {
                "cpu": cpu * (0.9 + 0.2 * wave) + rng.gauss(0, 1.0),
                "memory": memory + rng.gauss(0, 0.4),
                "disk": 40 + rng.gauss(0, 0.05),
                "netIn": net * (0.9 + 0.2 * wave) * (1 + rng.gauss(0, 0.02)),
                "netOut": net * 0.7 * (1 + rng.gauss(0, 0.02)),
                "responseMs": response * (1 + rng.gauss(0, 0.03)),
            }
            for change in plan.changes:
                if change.server != spec.id:
                    continue
                w = _weight(i, change)
                if change.level is not None:
                    m[change.metric] += (change.level - m[change.metric]) * w
                else:
                    m[change.metric] *= 1 + (change.factor - 1) * w
            m["load"] = max(0.0, m["cpu"]) / 100 * 4 * 1.1
            for key, value in m.items():
                capped = min(100.0, value) if key in {"cpu", "memory", "disk"} else value
                series[key].append(round(max(0.0, capped), 2))
        server: dict[str, Any] = {
            "id": spec.id,
            "role": spec.role,
            "datacenter": spec.datacenter,
            "cpuCores": 4,
            "metrics": {**series, "up": [True] * plan.points},
        }
        if spec.depends_on is not None:
            server["dependsOn"] = spec.depends_on
        servers.append(server)
    step = timedelta(minutes=plan.interval_minutes)
    return {
        "intervalMinutes": plan.interval_minutes,
        "timestamps": [(plan.start + step * i).isoformat() for i in range(plan.points)],
        "servers": servers,
    }


def fleet_of(data: dict[str, Any]) -> Fleet:
    return Fleet.model_validate(data)


def renamed(data: dict[str, Any], names: dict[str, str], order: list[str]) -> dict[str, Any]:
    """The fleet with every id replaced through ``names`` and servers listed in ``order``."""
    by_id = {s["id"]: s for s in data["servers"]}
    servers = []
    for old in order:
        server = dict(by_id[old], id=names[old], name=names[old])
        if "dependsOn" in server:
            server["dependsOn"] = [names[d] for d in server["dependsOn"]]
        servers.append(server)
    return {**data, "servers": servers}


def shifted(data: dict[str, Any], by: timedelta) -> dict[str, Any]:
    stamps = [(datetime.fromisoformat(s) + by).isoformat() for s in data["timestamps"]]
    return {**data, "timestamps": stamps}


def heldout_raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(HELDOUT.read_text(encoding="utf-8"))
    return data


def reversed_heldout() -> Fleet:
    """The held-out fleet with its ids renamed in reverse order and listed backwards."""
    raw = heldout_raw()
    ids = sorted(s["id"] for s in raw["servers"])
    names = {old: f"srv-{len(ids) - n:02d}" for n, old in enumerate(ids)}
    return fleet_of(renamed(raw, names, ids[::-1]))


@dataclass(frozen=True)
class Given:
    """A fleet source (``pipeline.run(fleet=...)``) that hands over a fleet already built."""

    fleet: Fleet

    def load(self) -> Fleet:
        return self.fleet


def heldout_truth() -> dict[str, Any]:
    truth: dict[str, Any] = json.loads(HELDOUT_TRUTH.read_text(encoding="utf-8"))
    return truth


def _incident_shape(incident: Incident, name: dict[str, str], shift: timedelta) -> tuple[Any, ...]:
    cause = incident.root_cause
    # a tie has no single root: compare the tied set, never which of them a sort put first
    root: Any = name[cause.server_id] if cause.determined else "undetermined"
    return (
        incident.start - shift,
        incident.end - shift,
        incident.severity,
        root,
        cause.confidence,
        cause.confidence_reason,
        frozenset(name[s] for s in incident.servers),
        frozenset((name[c.server_id], c.score, c.onset - shift) for c in cause.candidates),
        frozenset((name[link.caller], name[link.callee]) for link in incident.links),
    )


def shape(
    facts: FleetFacts, name: dict[str, str] | None = None, shift: timedelta = timedelta(0)
) -> tuple[Any, ...]:
    """What the analysis concluded, free of ids (through ``name``), list order and clock."""
    ids = name or {}
    every = {s for i in facts.incidents for s in i.servers}
    every |= {s for e in facts.fleet_wide for s in e.servers}
    mapping = {s: ids.get(s, s) for s in every}
    incidents = sorted((_incident_shape(i, mapping, shift) for i in facts.incidents), key=repr)
    events = sorted(
        (
            (
                e.metric,
                e.direction,
                e.start - shift,
                e.end - shift,
                frozenset(mapping[s] for s in e.servers),
            )
            for e in facts.fleet_wide
        ),
        key=repr,
    )
    return tuple(incidents), tuple(events)


# --------------------------------------------------------------------------- stress fleets

_TIER = {"database": 3, "cache": 3, "storage": 3, "application": 2, "web": 1, "load_balancer": 0}


@dataclass(frozen=True)
class Scripted:
    root: str
    at: datetime
    kind: str


def _callers(specs: list[Spec]) -> dict[str, set[str]]:
    """Who reaches each server through the default role links (same datacenter)."""
    data = build(FleetPlan(servers=specs, points=8))
    from shared.ai.fleet import dependency_map

    calls = dependency_map(fleet_of(data))
    callers: dict[str, set[str]] = {s.id: set() for s in specs}
    for start in calls:
        todo, seen = list(calls[start]), set()
        while todo:
            sid = todo.pop()
            if sid not in seen:
                seen.add(sid)
                callers[sid].add(start)
                todo.extend(calls[sid])
    return callers


def stress_plan(seed: int) -> tuple[FleetPlan, list[Scripted]]:
    """Two datacenters of 6-9 servers, a day at 10 minutes, five incidents of random kinds
    (database, cache, application, traffic surge at a load balancer) whose callers slow down
    up to a sample per tier later; half of them overlap a fleet-wide latency rise spread over
    two samples, half have a noisy web sample just before. Harder than either labelled fleet."""
    rng = random.Random(seed)
    specs: list[Spec] = []
    for dc in ("r1", "r2"):
        roles = ["load_balancer"] + ["web"] * rng.randint(1, 3)
        roles += ["application"] * rng.randint(1, 2) + ["database", "cache"]
        roles += ["storage"] if rng.random() < 0.5 else []
        specs += [Spec(f"{dc}-{role[:3]}-{n}", role, dc) for n, role in enumerate(roles)]
    callers = _callers(specs)
    tier = {s.id: _TIER[s.role] for s in specs}
    changes: list[Change] = []
    truth: list[Scripted] = []
    start = FleetPlan(servers=specs).start
    for base in (25.0, 50.0, 75.0, 100.0, 120.0):
        at = base + rng.random()
        kind = rng.choice(["database", "cache", "application", "surge"])
        datacenter = rng.choice(["r1", "r2"])
        pool = [s for s in specs if s.datacenter == datacenter]
        if kind == "surge":
            root = next(s for s in pool if s.role == "load_balancer")
            changes.append(Change(root.id, "netIn", at, 6, 3.0))
            for web in (s for s in pool if s.role == "web"):
                changes.append(Change(web.id, "cpu", at + rng.uniform(0, 0.9), 6, level=88.0))
                changes.append(Change(web.id, "netIn", at + rng.uniform(0, 0.9), 6, 2.5))
        else:
            root = rng.choice([s for s in pool if s.role == kind])
            metric = {"database": "disk", "cache": "memory", "application": "cpu"}[kind]
            changes.append(Change(root.id, metric, at, 6, level=92.0))
            changes.append(Change(root.id, "responseMs", at, 6, 3.0))
            for caller in sorted(callers[root.id]):
                hops = tier[root.id] - tier[caller]
                lag = rng.uniform(0, 1.0) * hops
                changes.append(Change(caller, "responseMs", at + lag, 6, rng.uniform(2.5, 4.0)))
        if rng.random() < 0.5:
            for s in specs:
                changes.append(
                    Change(s.id, "responseMs", at + rng.uniform(0, 2), 6, rng.uniform(1.6, 3.0))
                )
        if rng.random() < 0.5:
            # one odd sample, the one just before the incident's first affected sample
            web = rng.choice([s for s in pool if s.role == "web"])
            changes.append(Change(web.id, "responseMs", math.ceil(at) - 2, 1, 4.0))
        truth.append(Scripted(root.id, start + timedelta(minutes=10 * at), kind))
    return FleetPlan(servers=specs, changes=changes, points=144, seed=seed), truth
