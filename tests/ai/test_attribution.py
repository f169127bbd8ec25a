"""Root causes from evidence and topology, on the held-out labelled fleet and small made-up ones.

The held-out fleet (tests/data/heldout_fleet.json) was written, with its truth, before the
analytics were tuned; these tests hold the engine to it, also with the server ids reversed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.ai import analytics, compose, pipeline
from shared.ai.facts import FleetFacts
from shared.ai.fleet import (
    Fleet,
    JsonFleetSource,
    build_synthetic_fleet,
    dependency_map,
)
from shared.ai.results import AnalysisResult, OptimizationResult, PredictionResult
from shared.ai.texts import INCIDENT_KINDS
from shared.errors import ConfigError
from shared.jobs import JobType
from shared.settings import AISettings

from .fleets import (
    HELDOUT,
    Change,
    FleetPlan,
    Spec,
    build,
    fleet_of,
    heldout_raw,
    heldout_truth,
    renamed,
)

ROOT = Path(__file__).resolve().parent.parent.parent


def _heldout(reverse_ids: bool) -> tuple[FleetFacts, dict[str, str]]:
    raw = heldout_raw()
    ids = sorted(s["id"] for s in raw["servers"])
    if not reverse_ids:
        return analytics.analyse(fleet_of(raw)), {i: i for i in ids}
    names = {old: f"srv-{len(ids) - n:02d}" for n, old in enumerate(ids)}
    return analytics.analyse(fleet_of(renamed(raw, names, ids[::-1]))), names


def _overlaps(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


@pytest.mark.parametrize("reverse_ids", [False, True])
def test_every_held_out_incident_is_found_with_its_root(reverse_ids: bool) -> None:
    facts, name = _heldout(reverse_ids)

    for labelled in heldout_truth()["incidents"]:
        window = (
            datetime.fromisoformat(labelled["start"]),
            datetime.fromisoformat(labelled["end"]),
        )
        servers = {name[s] for s in labelled["servers"]}
        found = [
            i
            for i in facts.incidents
            if _overlaps((i.start, i.recovered_at or i.end), window) and servers & set(i.servers)
        ]
        assert len(found) == 1, labelled["id"]
        assert found[0].root_cause.determined, labelled["id"]
        assert found[0].root_cause.server_id == name[labelled["root"]], labelled["id"]
    assert len(facts.incidents) == len(heldout_truth()["incidents"])


def test_the_fleet_wide_latency_rise_is_one_event_not_an_incident() -> None:
    facts, _ = _heldout(False)
    labelled = heldout_truth()["fleetWide"][0]
    window = (datetime.fromisoformat(labelled["start"]), datetime.fromisoformat(labelled["end"]))

    [event] = facts.fleet_wide
    assert event.metric == "response_ms" and event.direction == 1
    assert _overlaps((event.start, event.end), window)
    assert event.datacenters == ["ams", "fra"] and len(event.servers) >= 10
    assert not [i for i in facts.incidents if _overlaps((i.start, i.end), window)]


def test_a_noisy_sample_just_before_an_incident_is_not_its_root() -> None:
    facts, _ = _heldout(False)
    noise = heldout_truth()["noise"][0]
    at = datetime.fromisoformat(noise["at"])

    cascade = next(i for i in facts.incidents if "fra-pg-main" in i.servers)
    assert cascade.root_cause.server_id == "fra-pg-main"
    assert all(e.start > at for e in cascade.episodes if e.server_id == noise["server"])
    assert cascade.start > at


def test_no_link_crosses_datacenters_unless_the_topology_says_so() -> None:
    for fleet in (build_synthetic_fleet(42), fleet_of(heldout_raw())):
        facts = analytics.analyse(fleet)
        dc = {s.id: s.datacenter for s in fleet.servers}
        declared = {s.id: set(s.depends_on or ()) for s in fleet.servers}
        for incident in facts.incidents:
            assert len({dc[s] for s in incident.servers}) == 1 or any(
                link.callee in declared[link.caller] for link in incident.links
            )
            for link in incident.links:
                assert dc[link.caller] == dc[link.callee] or link.callee in declared[link.caller]


def test_dependencies_follow_roles_within_a_datacenter_and_depends_on_replaces_them() -> None:
    plan = FleetPlan(
        servers=[
            Spec("lb", "load_balancer"),
            Spec("app", "application"),  # no web tier: the load balancer calls the app
            Spec("db", "database"),
            Spec("db-far", "database", "dc-b"),
            Spec("app-far", "application", "dc-b", depends_on=["db"]),
        ]
    )
    calls = dependency_map(fleet_of(build(plan)))

    assert calls == {
        "lb": {"app"},
        "app": {"db"},
        "db": set(),
        "db-far": set(),
        "app-far": {"db"},
    }


def test_depends_on_naming_an_unknown_server_is_rejected(tmp_path: Path) -> None:
    data = build(FleetPlan(servers=[Spec("web", "web"), Spec("app", "application")]))
    data["servers"][0]["dependsOn"] = ["nope"]
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(data))

    with pytest.raises(ConfigError, match="dependsOn"):
        JsonFleetSource(str(path)).load()


def test_evidence_that_does_not_separate_two_servers_is_undetermined(settings: AISettings) -> None:
    # two application servers of one datacenter saturate at the same moment, in the same way
    plan = FleetPlan(
        servers=[
            Spec("web-1", "web"),
            Spec("app-1", "application"),
            Spec("app-2", "application"),
            Spec("db-1", "database"),
        ],
        changes=[
            Change("app-1", "cpu", 30.5, 8, level=97.0),
            Change("app-2", "cpu", 30.5, 8, level=97.0),
            Change("web-1", "responseMs", 31.8, 7, 4.5),
        ],
    )
    fleet = fleet_of(build(plan))

    [incident] = analytics.analyse(fleet).incidents
    cause = incident.root_cause
    assert not cause.determined and cause.confidence_reason == "tie"
    assert {c.server_id for c in cause.candidates[:2]} == {"app-1", "app-2"}
    assert cause.confidence < 0.7  # little above a coin toss between the two
    result = pipeline.run(
        "incident report", JobType.REPORT, lambda p, m: True, settings=settings, fleet=_Given(fleet)
    )
    assert "Root cause undetermined" in result.markdown
    assert "app-1" in result.markdown and "app-2" in result.markdown


class _Given:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def load(self) -> Fleet:
        return self.fleet


def test_confidence_grows_with_the_margin_and_says_why() -> None:
    facts, _ = _heldout(False)
    ranked = sorted(
        (i.root_cause for i in facts.incidents if len(i.servers) > 1), key=lambda c: c.margin
    )
    assert [c.confidence for c in ranked] == sorted(c.confidence for c in ranked)
    assert all(c.confidence_reason in {"clear_margin", "narrow_margin"} for c in ranked)
    singles = [i.root_cause for i in facts.incidents if len(i.servers) == 1]
    assert singles and all(c.confidence_reason == "single_server" for c in singles)


def test_every_incident_kind_has_a_fix() -> None:
    for kind in INCIDENT_KINDS:
        assert kind in compose._INCIDENT_FIXES, kind


def test_optimisation_answers_every_incident_and_the_fleet_wide_event(settings: AISettings) -> None:
    result = pipeline.run(
        "서버 최적화 제안해줘",
        JobType.OPTIMIZATION,
        lambda p, m: True,
        settings=settings,
        fleet=JsonFleetSource(str(HELDOUT)),
    )
    assert isinstance(result, OptimizationResult)
    ids = {r.id for r in result.recommendations}
    assert {f"rec-{i.id}" for i in result.facts.incidents} <= ids
    assert {f"rec-{e.id}" for e in result.facts.fleet_wide} <= ids
    cache = next(
        r
        for r in result.recommendations
        if r.id.startswith("rec-inc") and "fra-redis-1" in r.action_text
    )
    assert "maxmemory" in cache.action_text  # the cache's own fix, not a generic one


@pytest.mark.parametrize(
    ("query", "server", "metric"),
    [
        ("Predict CPU usage of fra-api-1 for next week", "fra-api-1", "cpu"),
        ("fra-lb-a 메모리 사용량 예측해줘", "fra-lb-a", "memory"),
        ("Predict the response time of fra-api-1", "fra-api-1", "response_ms"),
    ],
)
def test_prediction_answers_the_asked_for_metric_even_when_it_is_flat(
    query: str, server: str, metric: str, settings: AISettings
) -> None:
    result = pipeline.run(
        query,
        JobType.PREDICTION,
        lambda p, m: True,
        settings=settings,
        fleet=JsonFleetSource(str(HELDOUT)),
    )
    assert isinstance(result, PredictionResult)
    [forecast] = result.forecasts
    assert (forecast.server_id, forecast.metric) == (server, metric)
    assert forecast.outlook in {"flat", "unclear"} and forecast.hours_to_threshold is None
    assert forecast.note in result.markdown
    assert ("7 days" in forecast.note) or ("7일" in forecast.note)


def test_a_general_prediction_answers_for_a_flat_fleet(settings: AISettings) -> None:
    raw = heldout_raw()
    flat = fleet_of({**raw, "servers": [s for s in raw["servers"] if s["id"] == "fra-lb-a"]})
    result = pipeline.run(
        "Predict resource usage",
        JobType.PREDICTION,
        lambda p, m: True,
        settings=settings,
        fleet=_Given(flat),
    )
    assert isinstance(result, PredictionResult)
    assert not result.facts.trends
    assert {f.metric for f in result.forecasts} == {"cpu", "memory", "disk", "disk_io"}


def test_a_fleet_wide_shift_alone_makes_no_server_a_problem(settings: AISettings) -> None:
    servers = [
        Spec("lb", "load_balancer"),
        Spec("web", "web"),
        Spec("app", "application"),
        Spec("db", "database"),
        Spec("web-b", "web", "dc-b"),
        Spec("app-b", "application", "dc-b"),
    ]
    plan = FleetPlan(
        servers=servers, changes=[Change(s.id, "responseMs", 40.4, 6, 2.5) for s in servers]
    )

    result = pipeline.run(
        "analyse all servers",
        JobType.ANALYSIS,
        lambda p, m: True,
        settings=settings,
        fleet=_Given(fleet_of(build(plan))),
    )

    assert isinstance(result, AnalysisResult)
    assert not result.facts.incidents and len(result.facts.fleet_wide) == 1
    assert all(f.severity == "normal" for f in result.findings)
    assert all(any("fleet-wide event fw-1" in line for line in f.evidence) for f in result.findings)
    assert result.fleet_wide[0] in result.markdown


@pytest.fixture
def fleet_url() -> Iterator[str]:
    handler = partial(SimpleHTTPRequestHandler, directory=str(HELDOUT.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{HELDOUT.name}"
    finally:
        server.shutdown()
        server.server_close()


def _cli(*args: str, env: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.ai", "incident report", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_cli_says_which_fleet_it_analysed(fleet_url: str) -> None:
    by_flag = _cli("--fleet", str(HELDOUT))
    by_env = _cli(env={"FLEET_SOURCE": str(HELDOUT)})
    by_url = _cli("--fleet", fleet_url)
    default = _cli(env={"FLEET_SOURCE": "synthetic"})

    assert f"[fleet] {HELDOUT} (--fleet): 14 servers" in by_flag.stderr
    assert f"[fleet] {HELDOUT} (FLEET_SOURCE): 14 servers" in by_env.stderr
    assert f"[fleet] {fleet_url} (--fleet): 14 servers" in by_url.stderr
    assert "[fleet] synthetic:42 (default): 15 servers" in default.stderr
    assert "fra-pg-main" in by_flag.stdout and "fra-pg-main" in by_url.stdout


def test_a_surge_that_crosses_no_limit_is_rooted_at_the_front_door() -> None:
    # the web servers' CPU rises with the traffic and a hair later, on the same sample
    plan = FleetPlan(
        servers=[
            Spec("lb", "load_balancer"),
            Spec("w1", "web"),
            Spec("w2", "web"),
            Spec("app", "application"),
            Spec("db", "database"),
        ],
        changes=[
            Change("lb", "netIn", 30.3, 8, 3.0),
            Change("w1", "netIn", 30.5, 8, 2.5),
            Change("w2", "netIn", 30.6, 8, 2.5),
            Change("w1", "cpu", 30.5, 8, level=60.0),
            Change("w2", "cpu", 30.6, 8, level=60.0),
            Change("app", "cpu", 31.2, 7, level=65.0),
        ],
    )

    [incident] = analytics.analyse(fleet_of(build(plan))).incidents

    assert incident.kind == "traffic_surge"
    assert incident.root_cause.determined and incident.root_cause.server_id == "lb"


def test_an_odd_sample_bridged_into_a_later_rise_does_not_make_its_server_first() -> None:
    # web-1 answers slowly once, then (with everyone behind the database) for a while
    plan = FleetPlan(
        servers=[Spec("web-1", "web"), Spec("app-1", "application"), Spec("db-1", "database")],
        changes=[
            Change("web-1", "responseMs", 28.0, 1, 4.0),
            Change("db-1", "cpu", 30.0, 8, level=96.0),
            Change("app-1", "responseMs", 30.4, 8, 4.0),
            Change("web-1", "responseMs", 30.5, 8, 4.0),
        ],
    )

    [incident] = analytics.analyse(fleet_of(build(plan))).incidents

    assert incident.root_cause.determined and incident.root_cause.server_id == "db-1"


def test_an_episode_stored_before_onsets_existed_is_still_read() -> None:
    from shared.ai.facts import Episode

    old = {
        "serverId": "db-01",
        "metric": "cpu",
        "unit": "%",
        "kind": "threshold",
        "severity": "warning",
        "signsAt": None,
        "start": "2025-12-23T02:00:00+09:00",
        "end": "2025-12-23T03:00:00+09:00",
        "recoveredAt": None,
        "baseline": 30.0,
        "peak": 95.0,
        "peakAt": "2025-12-23T02:30:00+09:00",
        "threshold": 90.0,
    }

    episode = Episode.model_validate(old)

    assert episode.onset == episode.start and episode.samples == 0
