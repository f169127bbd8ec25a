"""Print how well the incident analysis matches labelled fleets: recall, precision, root cause.

Usage: ``python scripts/quality.py [-v]`` (``make quality``). Fleets:

- the synthetic fleet (seed 42), labelled by its scripted incidents;
- the held-out fleet ``tests/data/heldout_fleet.json`` with ``heldout_truth.json``, written
  before the analytics were tuned (its figures are the honest ones), then the same fleet with
  its server ids replaced by shuffled and by reversed-order names, so that no tie can be
  broken by a name;
- with ``--generated N``, N generated stress fleets (``tests/ai/fleets.stress_plan``: random
  incident kinds overlapping fleet-wide shifts and noisy samples), as listed and with ids
  reversed, and how often each confidence band was right (the calibration).

A detected incident matches a labelled one when their windows overlap and they share a server;
a detected fleet-wide event matches a labelled one when their windows overlap. Recall: labelled
items matched. Precision: detected items that match something labelled. Root cause: labelled
incidents whose matched incident names the right root as determined (an "undetermined" answer
counts as wrong; how many of those list the right root among their candidates is printed too).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.ai import analytics  # noqa: E402
from shared.ai.facts import FleetFacts  # noqa: E402
from shared.ai.fleet import SCRIPTED_INCIDENTS, Fleet, build_synthetic_fleet  # noqa: E402

HELDOUT = ROOT / "tests/data/heldout_fleet.json"
HELDOUT_TRUTH = ROOT / "tests/data/heldout_truth.json"
SLACK = timedelta(minutes=10)


@dataclass(frozen=True)
class Labelled:
    id: str
    root: str | None  #: None for a fleet-wide event
    start: datetime
    end: datetime
    servers: frozenset[str]


@dataclass(frozen=True)
class Score:
    labelled: int
    rooted: int  #: labelled incidents (fleet-wide events have no root)
    detected: int
    recalled: int
    precise: int
    roots_right: int
    undetermined_with_root: int
    misses: list[str]

    def line(self, name: str) -> str:
        recall = self.recalled / self.labelled if self.labelled else 1.0
        precision = self.precise / self.detected if self.detected else 1.0
        return (
            f"{name:<34} recall {recall:5.0%} ({self.recalled}/{self.labelled})  "
            f"precision {precision:5.0%} ({self.precise}/{self.detected})  "
            f"root cause {self.roots_right}/{self.rooted}"
            + (
                f" (+{self.undetermined_with_root} undetermined listing the root)"
                if self.undetermined_with_root
                else ""
            )
        )


def _overlaps(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    return a[0] <= b[1] + SLACK and b[0] <= a[1] + SLACK


def score(facts: FleetFacts, truth: list[Labelled]) -> Score:
    incidents = [(i, (i.start, i.recovered_at or i.end)) for i in facts.incidents]
    events = [(e, (e.start, e.end)) for e in facts.fleet_wide]
    used_incidents: set[str] = set()
    used_events: set[str] = set()
    recalled = roots = undetermined = 0
    misses: list[str] = []
    for item in truth:
        window = (item.start, item.end)
        if item.root is None:
            hit = next((e for e, w in events if _overlaps(w, window)), None)
            if hit is not None:
                recalled += 1
                used_events.add(hit.id)
            else:
                misses.append(f"missed fleet-wide {item.id}")
            continue
        matches = [
            i for i, w in incidents if _overlaps(w, window) and item.servers & set(i.servers)
        ]
        if not matches:
            misses.append(f"missed {item.id}")
            continue
        recalled += 1
        best = max(matches, key=lambda i: len(item.servers & set(i.servers)))
        used_incidents.update(i.id for i in matches)
        cause = best.root_cause
        if cause.determined and cause.server_id == item.root:
            roots += 1
        else:
            names = [c.server_id for c in cause.candidates]
            undetermined += (not cause.determined) and item.root in names
            verdict = "determined" if cause.determined else f"undetermined {names}"
            misses.append(f"root of {item.id}: {cause.server_id} ({verdict}), not {item.root}")
    for i, _ in incidents:
        if i.id not in used_incidents:
            misses.append(f"fp incident {i.id} root {i.root_cause.server_id} at {i.start}")
    for e, _ in events:
        if e.id not in used_events:
            misses.append(f"fp fleet-wide {e.id} {e.metric} at {e.start}")
    detected = len(incidents) + len(events)
    return Score(
        labelled=len(truth),
        rooted=sum(1 for item in truth if item.root is not None),
        detected=detected,
        recalled=recalled,
        precise=len(used_incidents) + len(used_events),
        roots_right=roots,
        undetermined_with_root=undetermined,
        misses=misses,
    )


def synthetic_truth() -> list[Labelled]:
    return [
        Labelled(s.key, s.server_id, s.start, s.end, frozenset((s.server_id, *s.followers)))
        for s in SCRIPTED_INCIDENTS
    ]


def heldout_truth(rename: dict[str, str] | None = None) -> list[Labelled]:
    data = json.loads(HELDOUT_TRUTH.read_text(encoding="utf-8"))
    name = (lambda s: s) if rename is None else rename.__getitem__
    items = [
        Labelled(
            i["id"],
            name(i["root"]),
            datetime.fromisoformat(i["start"]),
            datetime.fromisoformat(i["end"]),
            frozenset(name(s) for s in i["servers"]),
        )
        for i in data["incidents"]
    ]
    items += [
        Labelled(
            e["id"],
            None,
            datetime.fromisoformat(e["start"]),
            datetime.fromisoformat(e["end"]),
            frozenset(),
        )
        for e in data["fleetWide"]
    ]
    return items


def renamed(raw: dict[str, Any], order: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The fleet with ids ``srv-00``… given in ``order`` (and the servers listed in that order)."""
    rename = {old: f"srv-{n:02d}" for n, old in enumerate(order)}
    servers = {s["id"]: s for s in raw["servers"]}
    out = []
    for old in order:
        server = dict(servers[old], id=rename[old], name=rename[old])
        if "dependsOn" in server:
            server["dependsOn"] = [rename[d] for d in server["dependsOn"]]
        out.append(server)
    return {**raw, "servers": out, "source": "renamed"}, rename


def generated(count: int) -> None:
    """Root-cause accuracy and confidence calibration on generated stress fleets."""
    from tests.ai.fleets import build, fleet_of, renamed, stress_plan

    tally = {"right": 0, "undetermined, right on top": 0, "wrong or missed": 0}
    bands: dict[float, list[bool]] = {}
    reversed_right = total = 0
    for seed in range(count):
        plan, truth = stress_plan(seed)
        data = build(plan)
        ids = sorted(s["id"] for s in data["servers"])
        names = {old: f"s{len(ids) - n:02d}" for n, old in enumerate(ids)}
        for reverse in (False, True):
            fleet = fleet_of(renamed(data, names, ids[::-1]) if reverse else data)
            facts = analytics.analyse(fleet)
            for item in truth:
                root = names[item.root] if reverse else item.root
                near = [
                    i
                    for i in facts.incidents
                    if i.start <= item.at + timedelta(minutes=40)
                    and (i.recovered_at or i.end) >= item.at - timedelta(minutes=10)
                    and root in i.servers
                ]
                cause = near[0].root_cause if near else None
                right = cause is not None and cause.server_id == root
                if reverse:
                    reversed_right += right and cause is not None and cause.determined
                    continue
                total += 1
                if right and cause is not None and cause.determined:
                    tally["right"] += 1
                elif right:
                    tally["undetermined, right on top"] += 1
                else:
                    tally["wrong or missed"] += 1
                if cause is not None and len(cause.candidates) > 1:
                    band = min(int(cause.confidence * 10), 9) / 10
                    bands.setdefault(band, []).append(right)
    print(
        f"{f'generated ({count} fleets)':<34} root cause {tally['right']}/{total}  "
        f"(undetermined with the root on top {tally['undetermined, right on top']}, "
        f"wrong or missed {tally['wrong or missed']}); ids reversed {reversed_right}/{total}"
    )
    print(
        "    confidence band -> share right: "
        + ", ".join(
            f"{band:.1f}: {sum(v) / len(v):.0%} ({len(v)})" for band, v in sorted(bands.items())
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every miss")
    parser.add_argument("--generated", type=int, default=0, metavar="N", help="stress fleets")
    args = parser.parse_args()
    raw = json.loads(HELDOUT.read_text(encoding="utf-8"))
    ids = sorted(s["id"] for s in raw["servers"])
    shuffled = ids[:]
    random.Random(11).shuffle(shuffled)
    runs: list[tuple[str, FleetFacts, list[Labelled]]] = [
        (
            "synthetic (seed 42, tuned on)",
            analytics.analyse(build_synthetic_fleet(42)),
            synthetic_truth(),
        )
    ]
    heldout = Fleet.model_validate({**raw, "source": str(HELDOUT)})
    runs.append(("held-out", analytics.analyse(heldout), heldout_truth()))
    for label, order in (
        ("held-out, ids shuffled", shuffled),
        ("held-out, ids reversed", ids[::-1]),
    ):
        data, rename = renamed(raw, order)
        runs.append((label, analytics.analyse(Fleet.model_validate(data)), heldout_truth(rename)))
    for label, facts, truth in runs:
        result = score(facts, truth)
        print(result.line(label))
        if args.verbose:
            for miss in result.misses:
                print(f"    {miss}")
    if args.generated:
        generated(args.generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
