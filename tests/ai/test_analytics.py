from __future__ import annotations

from datetime import timedelta

import pytest

from shared.ai import analytics
from shared.ai.facts import FleetFacts
from shared.ai.fleet import SCRIPTED_INCIDENTS, build_synthetic_fleet


def test_least_squares_recovers_a_line() -> None:
    slope, intercept, r2 = analytics.least_squares([0, 1, 2, 3], [1, 3, 5, 7])
    assert (slope, intercept, r2) == (2.0, 1.0, 1.0)


def test_percentile_interpolates_like_numpy() -> None:
    assert analytics._percentile([1, 2, 3, 4], 0.5) == 2.5
    assert analytics._percentile([10, 20, 30, 40, 50], 0.95) == pytest.approx(48.0)


@pytest.mark.parametrize("seed", [42, 1, 7])
def test_every_scripted_incident_is_found_and_nothing_else(seed: int) -> None:
    facts = analytics.analyse(build_synthetic_fleet(seed))

    found = {(i.kind, i.root_cause.server_id): i for i in facts.incidents}
    assert len(facts.incidents) == len(SCRIPTED_INCIDENTS)
    for scripted in SCRIPTED_INCIDENTS:
        incident = found[(scripted.key, scripted.server_id)]
        assert set(scripted.followers) <= set(incident.servers)
        assert incident.servers[0] == scripted.server_id  # the root went wrong first
        assert abs(incident.start - scripted.start) <= timedelta(minutes=30)
        assert incident.recovered_at is not None and not incident.ongoing


def test_followers_come_after_the_root(facts: FleetFacts) -> None:
    for incident in facts.incidents:
        root = incident.root_cause.server_id
        root_start = min(e.first_seen for e in incident.episodes if e.server_id == root)
        assert all(e.first_seen >= root_start for e in incident.episodes)
        if len(incident.servers) > 1:
            assert incident.root_cause.lead_minutes >= 10


def test_trends_and_time_to_threshold(facts: FleetFacts) -> None:
    trends = {(t.server_id, t.metric): t for t in facts.trends}
    disk = trends[("storage-01", "disk")]
    # the synthetic disk fills 67 -> 79 % over 24 h: 0.5 %/h, 2 h to 80 %, 22 h to 90 %
    assert disk.slope_per_hour == pytest.approx(0.5, abs=0.02)
    assert disk.hours_to_warning == pytest.approx(
        (80 - disk.current) / disk.slope_per_hour, abs=0.25
    )
    assert disk.hours_to_critical == pytest.approx(
        (90 - disk.current) / disk.slope_per_hour, abs=0.25
    )
    leak = trends[("cache-01", "memory")]
    assert leak.since.hour == 6 and leak.slope_per_hour > 1.5  # measured since the restart
    assert ("web-01", "cpu") not in trends  # the daily rhythm is not a trend


def test_capacity_and_consolidation(facts: FleetFacts) -> None:
    verdicts = {row.server_id: row.verdict for row in facts.capacity}
    assert verdicts["web-03"] == verdicts["web-04"] == "over_provisioned"
    assert verdicts["app-03"] == "under_provisioned"
    assert [c.servers for c in facts.consolidations] == [["web-03", "web-04"]]
    merged = facts.consolidations[0]
    rows = {row.server_id: row for row in facts.capacity}
    assert merged.combined_cpu_p95 == pytest.approx(
        rows["web-03"].cpu_p95 + rows["web-04"].cpu_p95, abs=0.1
    )


def test_status_summary_counts_the_latest_sample(facts: FleetFacts) -> None:
    status = facts.status
    assert status.total == 15
    assert sum(status.counts.values()) == 15
    assert status.incidents_24h == 4
    fleet = build_synthetic_fleet(42)
    assert status.avg_cpu == round(sum(s.metrics.cpu[-1] for s in fleet.servers) / 15, 1)


def test_a_down_server_is_reported_down() -> None:
    fleet = build_synthetic_fleet(42).model_copy(deep=True)
    fleet.servers[0].metrics.up[-1] = False
    status = analytics.status_summary(fleet)
    assert status.counts["down"] == 1
    assert status.servers[0].status.value == "down"
