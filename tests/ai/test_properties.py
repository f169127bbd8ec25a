"""Properties of the incident analysis over generated fleets (Hypothesis, kept small).

The conclusions must not depend on what servers are called, the order they are listed in, or
the clock; a healthy server no incident touches changes nothing; a shift on the whole fleet at
once is one fleet-wide event.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.ai import analytics

from .fleets import Change, FleetPlan, Spec, build, fleet_of, renamed, shape, shifted

BOUNDED = settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
_UPSTREAM = {"database": 2, "cache": 2, "application": 1, "web": 0, "load_balancer": -1}


@st.composite
def plans(draw: st.DrawFn, *, fleet_wide: bool = False) -> FleetPlan:
    """One or two datacenters of a few servers; an incident at a data-tier or application
    server that its callers feel one tier per sample and a bit later; optionally a shift."""
    specs: list[Spec] = []
    for dc in ["dc-a", "dc-b"][: draw(st.integers(1, 2))]:
        roles = ["database", "application", "web"]
        roles += ["application"] * draw(st.integers(0, 1)) + ["web"] * draw(st.integers(0, 1))
        roles += ["load_balancer"] * draw(st.integers(0, 1)) + ["cache"] * draw(st.integers(0, 1))
        specs += [Spec(f"{dc}-{role}-{n}", role, dc) for n, role in enumerate(roles)]
    root = draw(st.sampled_from([s for s in specs if s.role in {"database", "application"}]))
    at = 20 + draw(st.floats(0.05, 0.95))
    metric = draw(st.sampled_from(["cpu", "memory"]))
    changes = [Change(root.id, metric, at, 8, level=96.0), Change(root.id, "responseMs", at, 8, 4)]
    for spec in specs:
        hops = _UPSTREAM[root.role] - _UPSTREAM[spec.role]
        if spec.datacenter == root.datacenter and hops > 0 and spec.id != root.id:
            changes.append(Change(spec.id, "responseMs", at + 1.3 * hops, 8 - hops, 4.5))
    if fleet_wide:
        changes += [Change(s.id, "responseMs", 50.4, 5, 2.5) for s in specs]
    return FleetPlan(servers=specs, changes=changes, seed=draw(st.integers(0, 2**16)))


@BOUNDED
@given(
    plan=plans(),
    reverse=st.booleans(),
    seed=st.randoms(use_true_random=False),
    minutes=st.integers(-20_000, 20_000),
)
def test_conclusions_ignore_names_order_and_clock(
    plan: FleetPlan, reverse: bool, seed: Any, minutes: int
) -> None:
    data = build(plan)
    ids = [s["id"] for s in data["servers"]]
    order = ids[::-1] if reverse else seed.sample(ids, len(ids))
    # new names sort in the opposite order of the old ones: a tie broken by name would flip
    names = {old: f"z{len(ids) - n:03d}" for n, old in enumerate(sorted(ids))}
    shift = timedelta(minutes=minutes)

    before = analytics.analyse(fleet_of(data))
    after = analytics.analyse(fleet_of(shifted(renamed(data, names, order), shift)))

    assert before.incidents  # the scripted incident is found at all
    assert shape(before, names) == shape(after, shift=shift)


@BOUNDED
@given(
    plan=plans(),
    datacenter=st.sampled_from(["dc-a", "dc-z"]),
    role=st.sampled_from(["web", "cache"]),
)
def test_a_healthy_server_no_incident_touches_changes_nothing(
    plan: FleetPlan, datacenter: str, role: str
) -> None:
    bigger = FleetPlan(
        servers=[*plan.servers, Spec("quiet-1", role, datacenter)],
        changes=plan.changes,
        seed=plan.seed,
    )

    before = analytics.analyse(fleet_of(build(plan)))
    after = analytics.analyse(fleet_of(build(bigger)))

    # the added server draws its own noise, so the others' must not change: compare the
    # facts of the servers both fleets share
    assert shape(before) == shape(after)


@BOUNDED
@given(plan=plans(fleet_wide=True))
def test_a_shift_on_the_whole_fleet_is_one_fleet_wide_event(plan: FleetPlan) -> None:
    facts = analytics.analyse(fleet_of(build(plan)))

    shift = [e for e in facts.fleet_wide if e.metric == "response_ms"]
    assert len(shift) == 1
    assert len(shift[0].servers) >= 2 / 3 * len(plan.servers)
    # it is not chained into incidents: every incident is the scripted one, before the shift
    assert all(i.start < shift[0].start for i in facts.incidents)
