"""Analytics computed in code from the fleet: anomalies, incidents, trends, capacity, status.

The model never computes a number: everything an answer states comes from here.

- Anomalies: a sample is abnormal when it crosses the metric's warning/critical limit, or when
  it deviates strongly from a rolling baseline (mean and spread of the previous 4 hours).
  Runs of abnormal samples become ``Episode`` s.
- Incidents: episodes on different servers that start within ``CORRELATION_WINDOW`` of each
  other (or continue on the same server) are one incident; the server that went wrong first is
  the root-cause candidate and the others follow it.
- Trends: least-squares slope and R² since the last restart (at most 24 h); time until the
  warning/critical limit is crossed when the line is rising and fits well.
- Capacity: p50/p95 utilisation outside incidents; over/under-provisioned servers and
  same-role servers that one machine could carry.

Pure Python on purpose: the series are small (15 x 144) and importing numpy would cost more
(~70-125 ms) than these loops take; the router's hot path uses the status summary.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.ai.facts import (
    Candidate,
    Capacity,
    Consolidation,
    Episode,
    FleetFacts,
    FleetWideEvent,
    Incident,
    Link,
    RootCause,
    ServerStatus,
    Severity,
    StatusSummary,
    TimelineEvent,
    Trend,
    Window,
)
from shared.ai.fleet import Fleet, Server
from shared.ai.results import ChartSeries


@dataclass(frozen=True)
class MetricRule:
    """How one metric is judged."""

    unit: str
    warning: float | None  #: limit; for ``load`` a multiple of the CPU cores
    critical: float | None
    abs_floor: float  #: smallest spread the baseline may have (noise is never zero)
    min_change: float  #: relative change a deviation needs, as a fraction of the baseline
    directions: tuple[int, ...] = (1,)  #: which deviations matter: up (+1), down (-1)


RULES: dict[str, MetricRule] = {
    "cpu": MetricRule("%", 80, 90, 2.0, 0.5),
    "memory": MetricRule("%", 80, 90, 1.0, 0.3),
    "disk": MetricRule("%", 80, 90, 0.5, 0.2),
    "disk_io": MetricRule("%", 70, 90, 2.0, 1.0),
    "net_in": MetricRule("Mbps", None, None, 5.0, 0.25, (1, -1)),
    "net_out": MetricRule("Mbps", None, None, 5.0, 0.25, (1, -1)),
    "load": MetricRule("", 1.0, 1.5, 0.2, 0.5),
    "response_ms": MetricRule("ms", 500, 1000, 1.0, 0.5),
    "packet_loss": MetricRule("%", 1.0, 5.0, 0.05, 1.0),
}
#: the baseline is the last 4 h of normal samples; after 2 h abnormal the new level is accepted
#: (in time, not samples: a fleet sampled every 5 minutes gets the same hours as one at 10)
BASELINE_SPAN = timedelta(hours=4)
ADAPT_SPAN = timedelta(hours=2)
DEVIATION_Z = 4.0
SIGNS_Z = 2.0
CORRELATION_WINDOW = timedelta(minutes=30)
CLUSTER_SLACK = timedelta(minutes=10)
#: a signal that moved this many samples after the first one gains nothing more by being late
MAX_DELAY_SAMPLES = 3.0
#: deviations this far from the baseline (robust units) on two linked servers make an incident
STRONG_Z = 10.0
#: below this score margin the best candidate is not separated from the next: "undetermined"
UNDETERMINED_MARGIN = 0.3
#: a signal moving on this share of the servers carrying it (and on at least
#: ``FLEET_WIDE_MIN_SERVERS``) within ``FLEET_WIDE_SPREAD`` intervals is one fleet-wide event
FLEET_WIDE_SHARE = 2 / 3
FLEET_WIDE_MIN_SERVERS = 3
#: "at once": onsets within this many sample intervals (two: a shift seen on the next sample)
FLEET_WIDE_SPREAD = 2
#: a metric flickering around its limit is one incident, not several
SAME_SERVER_GAP = timedelta(minutes=60)
#: a server that stopped answering is as far from normal as anything we measure
DOWN_Z = 50.0
TREND_MIN_R2 = 0.6
TREND_MAX_HOURS = 24 * 7
CAPACITY_METRICS = ("cpu", "memory")
#: metrics whose rising line is a capacity trend; forecasts can also answer for the others
TREND_METRICS = ("cpu", "memory", "disk", "disk_io")
OUTLOOK_METRICS = (*TREND_METRICS, "response_ms", "load")


def _r(value: float, digits: int = 1) -> float:
    return round(value, digits)


def limits(server: Server, metric: str) -> tuple[float | None, float | None]:
    """The metric's warning and critical limits for this server (load scales with cores)."""
    rule = RULES[metric]
    if metric == "load" and rule.warning is not None and rule.critical is not None:
        return rule.warning * server.cpu_cores, rule.critical * server.cpu_cores
    return rule.warning, rule.critical


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# --------------------------------------------------------------------------- anomalies


@dataclass
class _Point:
    level: int  # 0 normal, 1 deviation, 2 warning, 3 critical
    baseline: float
    spread: float
    median: float = 0.0  # robust baseline, kept for abnormal points only
    mad_scale: float = 1.0


class _Rolling:
    """Mean and spread of the last ``size`` baseline values, updated in O(1) per sample
    (recomputing 48 values for every sample of every metric took most of a second)."""

    def __init__(self, initial: Sequence[float], size: int) -> None:
        self.values: deque[float] = deque()
        self.size = size
        self.total = self.squares = 0.0
        for value in initial:
            self.add(value)

    def add(self, value: float) -> None:
        self.values.append(value)
        self.total += value
        self.squares += value * value
        if len(self.values) > self.size:
            old = self.values.popleft()
            self.total -= old
            self.squares -= old * old

    def mean_spread(self, rule: MetricRule) -> tuple[float, float]:
        n = len(self.values)
        mean = self.total / n
        std = math.sqrt(max(0.0, self.squares / n - mean * mean))
        return mean, max(std, rule.abs_floor, 0.05 * abs(mean))


def _robust(history: Sequence[float], rule: MetricRule, points: int) -> tuple[float, float]:
    """Median and MAD (scaled to a normal sigma) of the baseline: one odd sample moves neither."""
    recent = history[-points:]
    median = _percentile(recent, 0.5)
    mad = _percentile([abs(value - median) for value in recent], 0.5) * 1.4826
    return median, max(mad, rule.abs_floor, 0.05 * abs(median))


def _is_deviation(value: float, mean: float, spread: float, rule: MetricRule) -> bool:
    change = value - mean
    strong = abs(change) >= rule.min_change * max(abs(mean), rule.abs_floor)
    return strong and any(d * change / spread >= DEVIATION_Z for d in rule.directions)


def _level(value: float, limits_: tuple[float | None, float | None]) -> int:
    warning, critical = limits_
    if critical is not None and value >= critical:
        return 3
    if warning is not None and value >= warning:
        return 2
    return 0


def _classify_points(
    server: Server, metric: str, values: Sequence[float], interval: timedelta
) -> list[_Point]:
    """Judge each sample against the limits and against the baseline before it.

    Abnormal samples stay out of the baseline, so a long episode is not absorbed into its own
    "normal"; after ``ADAPT_SPAN`` of abnormal samples in a row the new level is accepted.
    """
    rule = RULES[metric]
    metric_limits = limits(server, metric)
    window, adapt = BASELINE_SPAN // interval, ADAPT_SPAN // interval
    history = list(values[:6])
    baseline = _Rolling(history, window)
    points = []
    streak = 0
    for value in values:
        mean, spread = baseline.mean_spread(rule)
        level = _level(value, metric_limits)
        if level == 0 and _is_deviation(value, mean, spread, rule):
            level = 1
        streak = streak + 1 if level else 0
        point = _Point(level, mean, spread)
        if level:
            point.median, point.mad_scale = _robust(history, rule, window)
        if level == 0 or streak > adapt:
            history.append(value)
            baseline.add(value)
        points.append(point)
    return points


def _runs(points: Sequence[_Point]) -> list[tuple[int, int]]:
    """Runs of abnormal points (inclusive), bridging single normal gaps."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    last = -10
    for index, point in enumerate(points):
        if point.level == 0:
            continue
        if start is None or index - last > 2:
            if start is not None:
                runs.append((start, last))
            start = index
        last = index
    if start is not None:
        runs.append((start, last))
    return runs


def _signs_start(values: Sequence[float], points: Sequence[_Point], start: int) -> int | None:
    """Walk back from the episode while the metric already leaned the same way."""
    base = points[start]
    index = start
    while index > 0 and start - index < 6:
        if (values[index - 1] - base.baseline) / base.spread < SIGNS_Z:
            break
        index -= 1
    return index if index < start else None


def _steady_start(
    values: Sequence[float], points: Sequence[_Point], run: tuple[int, int], direction: int
) -> int:
    """Where the metric left its baseline for good: an odd first sample (a spike that the next
    sample falls back from by more than half) must not move the onset earlier, whether the run
    then pauses or goes on; a metric hovering at its limit or still rising keeps its start."""
    first, last = run
    base = points[first]
    if first == last:
        return first
    spike = (values[first] - base.baseline) * direction
    after = (values[first + 1] - base.baseline) * direction
    if after >= 0.5 * spike or (not points[first + 1].level and after >= SIGNS_Z * base.spread):
        return first
    return next((i for i in range(first + 1, last + 1) if points[i].level), first)


def _onset(
    fleet: Fleet,
    values: Sequence[float],
    base: _Point,
    first: int,
    *,
    direction: int,
    limit: float | None = None,
) -> datetime:
    """When the metric left its baseline (``SIGNS_Z`` spreads away), between two samples.

    Two servers whose first abnormal sample is the same are still ordered by how far into
    the interval each crossed: a straight line between the last normal and the first abnormal
    sample (the samples are all there is; the line is the least-assuming guess).
    """
    level = base.baseline + direction * SIGNS_Z * base.spread
    if limit is not None and direction > 0:
        level = min(level, limit)  # a crossed limit counts as leaving the baseline
    index = first
    while index > 0 and first - index < 6 and (values[index - 1] - level) * direction >= 0:
        index -= 1
    stamps = fleet.timestamps
    if index == 0:
        return stamps[0]
    before, after = values[index - 1], values[index]
    step = after - before
    fraction = 1.0 if step == 0 else min(1.0, max(0.0, (level - before) / step))
    return stamps[index - 1] + (stamps[index] - stamps[index - 1]) * fraction


def _episode(
    fleet: Fleet,
    server: Server,
    metric: str,
    run: tuple[int, int],
    data: tuple[list[float], list[_Point]],
) -> Episode | None:
    values, points = data
    first, last = run
    levels = [points[i].level for i in range(first, last + 1)]
    top = max(levels)
    if top == 1 and last - first < 1:
        return None  # a single odd sample is noise
    base = points[first]
    peak_index = max(
        range(first, last + 1),
        key=lambda i: (values[i] - base.baseline) * (1 if values[i] >= base.baseline else -1),
    )
    direction = 1 if values[peak_index] >= base.baseline else -1
    steady = _steady_start(values, points, (first, last), direction)
    stamps = fleet.timestamps
    signs = _signs_start(values, points, first)
    warning, critical = limits(server, metric)
    return Episode(
        server_id=server.id,
        metric=metric,
        unit=RULES[metric].unit,
        kind="threshold" if top >= 2 else "deviation",
        severity=Severity.CRITICAL if top == 3 else Severity.WARNING,
        signs_at=stamps[signs] if signs is not None else None,
        start=stamps[first],
        end=stamps[last],
        recovered_at=stamps[last + 1] if last + 1 < len(stamps) else None,
        baseline=_r(base.baseline),
        peak=_r(values[peak_index], 2 if metric == "packet_loss" else 1),
        peak_at=stamps[peak_index],
        threshold=(critical if top == 3 else warning) if top >= 2 else None,
        onset=_onset(fleet, values, points[steady], steady, direction=direction, limit=warning),
        robust_z=_r(abs(values[peak_index] - base.median) / base.mad_scale),
        samples=sum(1 for level in levels if level),
    )


def _down_episodes(fleet: Fleet, server: Server) -> list[Episode]:
    up = server.metrics.up
    episodes = []
    index = 0
    while index < len(up):
        if up[index]:
            index += 1
            continue
        first = index
        while index < len(up) and not up[index]:
            index += 1
        stamps = fleet.timestamps
        episodes.append(
            Episode(
                server_id=server.id,
                metric="up",
                unit="",
                kind="threshold",
                severity=Severity.DOWN,
                signs_at=None,
                start=stamps[first],
                end=stamps[index - 1],
                recovered_at=stamps[index] if index < len(stamps) else None,
                baseline=1.0,
                peak=0.0,
                peak_at=stamps[first],
                threshold=None,
                onset=stamps[first - 1] + (stamps[first] - stamps[first - 1]) / 2
                if first
                else stamps[0],
                robust_z=_r(DOWN_Z),
                samples=index - first,
            )
        )
    return episodes


def find_episodes(fleet: Fleet) -> list[Episode]:
    """Every abnormal stretch of every metric of every server, by start time."""
    episodes: list[Episode] = []
    interval = timedelta(minutes=fleet.interval_minutes)
    for server in fleet.servers:
        episodes.extend(_down_episodes(fleet, server))
        up = server.metrics.up
        for metric in RULES:
            series = server.series(metric)
            if series is None:
                continue
            # while a server is down its metrics read zero: not a deviation of their own
            values = [
                value if up[i] else (series[i - 1] if i else value)
                for i, value in enumerate(series)
            ]
            points = _classify_points(server, metric, values, interval)
            for run in _runs(points):
                episode = _episode(fleet, server, metric, run, (values, points))
                if episode is not None:
                    episodes.append(episode)
    episodes.sort(key=lambda e: (e.first_seen, e.server_id, e.metric))
    return episodes


# --------------------------------------------------------------------------- trends


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Slope, intercept and R² of the best straight line through the points."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - mean_y) ** 2 for y in ys)
    slope = sxy / sxx if sxx else 0.0
    intercept = mean_y - slope * mean_x
    r2 = (sxy * sxy) / (sxx * syy) if sxx and syy else 0.0
    return slope, intercept, r2


def _hours_to(limit: float, current: float, slope: float) -> float | None:
    if current >= limit:
        return 0.0
    if slope <= 0:
        return None
    hours = (limit - current) / slope
    return _r(hours) if hours <= TREND_MAX_HOURS else None


def _fit(fleet: Fleet, server: Server, metric: str) -> Trend | None:
    """A straight line through the metric since the last restart, rising or not."""
    values = server.series(metric)
    warning, critical = limits(server, metric)
    if values is None or warning is None or critical is None:
        return None
    up = server.metrics.up
    # a restart resets the metric: only the samples since then describe the present
    first = max((i + 1 for i, alive in enumerate(up) if not alive), default=0)
    if len(values) - first < 8:
        return None
    hours = [
        (stamp - fleet.timestamps[first]) / timedelta(hours=1) for stamp in fleet.timestamps[first:]
    ]
    slope, intercept, r2 = least_squares(hours, values[first:])
    current = intercept + slope * hours[-1]
    return Trend(
        server_id=server.id,
        metric=metric,
        unit=RULES[metric].unit,
        since=fleet.timestamps[first],
        current=_r(current),
        slope_per_hour=_r(slope, 2) + 0.0,  # never "-0"
        r2=_r(r2, 2),
        warning=warning,
        critical=critical,
        hours_to_warning=_hours_to(warning, current, slope),
        hours_to_critical=_hours_to(critical, current, slope),
    )


def _trend(fleet: Fleet, server: Server, metric: str) -> Trend | None:
    """The fit when it rises, fits well and reaches the warning limit within a week."""
    fit = _fit(fleet, server, metric)
    if fit is None or fit.slope_per_hour <= 0 or fit.r2 < TREND_MIN_R2:
        return None
    return fit if fit.hours_to_warning is not None else None


def find_outlooks(fleet: Fleet) -> list[Trend]:
    """Every server's line for each capacity metric, so a forecast can answer for a flat one."""
    return [
        fit
        for server in fleet.servers
        for metric in OUTLOOK_METRICS
        if (fit := _fit(fleet, server, metric)) is not None
    ]


def find_trends(fleet: Fleet) -> list[Trend]:
    """Rising metrics that will cross a limit within a week, soonest first."""
    trends = [
        trend
        for server in fleet.servers
        for metric in TREND_METRICS
        if (trend := _trend(fleet, server, metric)) is not None
    ]
    trends.sort(key=lambda t: (t.hours_to_warning or 0.0, t.server_id))
    return trends


# --------------------------------------------------------------------------- fleet-wide events


def _carriers(fleet: Fleet, metric: str) -> int:
    return sum(1 for server in fleet.servers if server.series(metric) is not None)


def _fleet_wide_group(
    episodes: Sequence[Episode], carriers: int, interval: timedelta
) -> list[Episode] | None:
    """The first set of episodes whose onsets fall close enough together on enough servers.

    Only onsets count, never the order servers are listed in, so the answer is the same for
    any ordering or naming of the fleet.
    """
    ordered = sorted(episodes, key=lambda e: e.onset)
    for anchor in ordered:
        reach = anchor.onset + FLEET_WIDE_SPREAD * interval
        window = [e for e in ordered if anchor.onset <= e.onset <= reach]
        servers = {e.server_id for e in window}
        if len(servers) >= max(FLEET_WIDE_MIN_SERVERS, math.ceil(FLEET_WIDE_SHARE * carriers)):
            return window
    return None


def _one_source(
    group: Sequence[Episode], episodes: Sequence[Episode], topology: _Topology, interval: timedelta
) -> bool:
    """Whether one server with a cause signal (CPU, memory, disk, down…) that moved about when
    the group did could account for every server in it through the topology."""
    first = min(e.onset for e in group)
    members = {e.server_id for e in group}
    sources = {
        e.server_id
        for e in episodes
        if e.metric not in SYMPTOM_METRICS
        and e.samples >= 2
        and first - CORRELATION_WINDOW <= e.onset <= first + FLEET_WIDE_SPREAD * interval
    }
    return any(members - {src} <= topology.callers[src] for src in sources)


def find_fleet_wide(
    fleet: Fleet, episodes: Sequence[Episode], topology: _Topology | None = None
) -> tuple[list[FleetWideEvent], list[Episode]]:
    """Signals that moved on most of the fleet at once, and the episodes left for incidents.

    A shift on most servers at the same moment has a common cause (shared network, monitoring,
    a traffic change) and is reported once; chaining it through the topology would blame one
    server for all of them.
    """
    interval = timedelta(minutes=fleet.interval_minutes)
    topology = topology or _Topology(fleet)
    events: list[FleetWideEvent] = []
    taken: set[int] = set()
    for metric in RULES:
        carriers = _carriers(fleet, metric)
        for direction in (1, -1):
            pool = [e for e in episodes if e.metric == metric and _direction(e) == direction]
            while (group := _fleet_wide_group(pool, carriers, interval)) is not None:
                if _one_source(group, episodes, topology, interval):
                    # a cascade from one faulty server looks "at once" in a small fleet: keep
                    # it for the incidents and look further on
                    first = group[0].onset
                    pool = [e for e in pool if e.onset > first]
                    continue
                # the rest of the same shift: servers that followed within two more samples
                first, last = group[0].onset, max(e.onset for e in group) + 2 * interval
                members = {id(e) for e in group}
                group += [e for e in pool if id(e) not in members and first <= e.onset <= last]
                taken.update(id(e) for e in group)
                pool = [e for e in pool if id(e) not in taken]
                events.append(_fleet_wide_event(fleet, metric, direction, group, carriers))
    events.sort(key=lambda ev: (ev.start, ev.metric))
    events = [ev.model_copy(update={"id": f"fw-{n}"}) for n, ev in enumerate(events, 1)]
    return events, [e for e in episodes if id(e) not in taken]


def _direction(episode: Episode) -> int:
    return episode.direction


def _fleet_wide_event(
    fleet: Fleet, metric: str, direction: int, group: Sequence[Episode], carriers: int
) -> FleetWideEvent:
    servers = sorted({e.server_id for e in group})
    ratios = [e.peak / e.baseline for e in group if e.baseline]
    return FleetWideEvent(
        id="",
        metric=metric,
        unit=RULES[metric].unit,
        direction=direction,
        start=min(e.onset for e in group).replace(microsecond=0),
        end=max(e.end for e in group),
        servers=servers,
        datacenters=sorted({fleet.server(s).datacenter for s in servers}),
        share=_r(len(servers) / carriers, 2),
        median_change=_r(_percentile(ratios, 0.5), 2) if ratios else 1.0,
    )


# --------------------------------------------------------------------------- incidents

#: Metrics that show an effect (slow answers, less traffic), not a cause.
SYMPTOM_METRICS = frozenset({"response_ms", "net_in", "net_out"})


class _Topology:
    """Who calls whom, directly and transitively, from ``Fleet.dependencies``."""

    def __init__(self, fleet: Fleet) -> None:
        self.calls = fleet.dependencies()
        self.roles = {server.id: server.role.value for server in fleet.servers}
        self.neighbours: dict[str, set[str]] = {sid: set(c) for sid, c in self.calls.items()}
        for caller, callees in self.calls.items():
            for callee in callees:
                self.neighbours[callee].add(caller)
        self.behind: dict[str, frozenset[str]] = {sid: self._reach(sid) for sid in self.calls}
        #: who reaches this server through calls (its direct and indirect callers)
        self.callers: dict[str, set[str]] = {sid: set() for sid in self.calls}
        for caller, reached in self.behind.items():
            for callee in reached:
                self.callers[callee].add(caller)

    def _reach(self, start: str) -> frozenset[str]:
        seen: set[str] = set()
        todo = list(self.calls[start])
        while todo:
            sid = todo.pop()
            if sid not in seen and sid != start:
                seen.add(sid)
                todo.extend(self.calls[sid])
        return frozenset(seen)


def _related(a: Episode, b: Episode, topology: _Topology) -> bool:
    """Two episodes are one incident's when one server could have passed trouble to the other
    (the same server, or a direct call between them) at about the same time."""
    if a.server_id == b.server_id:
        return a.first_seen <= b.end + SAME_SERVER_GAP and b.first_seen <= a.end + SAME_SERVER_GAP
    if b.server_id not in topology.neighbours[a.server_id]:
        return False
    overlap = a.first_seen <= b.end + CLUSTER_SLACK and b.first_seen <= a.end + CLUSTER_SLACK
    return overlap and abs(a.onset - b.onset) <= CORRELATION_WINDOW


def _cluster(episodes: Sequence[Episode], topology: _Topology) -> list[list[Episode]]:
    """Connected groups of related episodes (independent of the order they come in)."""
    parent = list(range(len(episodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(episodes):
        for j in range(i + 1, len(episodes)):
            if find(i) != find(j) and _related(a, episodes[j], topology):
                parent[find(i)] = find(j)
    groups: dict[int, list[Episode]] = {}
    for i, episode in enumerate(episodes):
        groups.setdefault(find(i), []).append(episode)
    return list(groups.values())


def _lead_episode(own: Sequence[Episode], interval: timedelta) -> Episode:
    """The server's first signal; among signals that moved together, a cause over a symptom."""
    earliest = min(e.onset for e in own)
    together = [e for e in own if e.onset <= earliest + interval / 2]
    return min(
        together,
        key=lambda e: (
            e.metric in SYMPTOM_METRICS,
            e.kind != "threshold",
            -e.severity.rank,
            -e.robust_z,
            e.onset,
            e.metric,
        ),
    )


def _surges(own: Sequence[Episode], lead: Episode, interval: timedelta) -> bool:
    """Inbound traffic rose with the server's first signal: trouble arriving from the front."""
    return any(
        e.metric == "net_in" and _direction(e) > 0 and e.onset <= lead.onset + interval / 2
        for e in own
    )


@dataclass(frozen=True)
class _Evidence:
    server_id: str
    lead: Episode
    surge: bool
    slowed: bool  #: answered slower, lost traffic or went down: what a slow callee causes
    robust_z: float
    abnormal_minutes: int


def _explains(a: _Evidence, b: _Evidence, topology: _Topology) -> bool:
    """Whether ``a``'s trouble accounts for ``b``'s through the topology.

    A fault (slow, saturated, down) travels back to the callers, and shows there as slow
    answers or lost traffic, never as more incoming traffic; extra or lost traffic arriving at
    a front door travels on to what is behind it.
    """
    if a.surge or a.lead.metric == "packet_loss":
        return b.server_id in topology.behind[a.server_id]
    return b.slowed and not b.surge and a.server_id in topology.behind[b.server_id]


def _slowed(own: Sequence[Episode]) -> bool:
    return any(
        (e.metric == "response_ms" and _direction(e) > 0)
        or (e.metric in {"net_in", "net_out"} and _direction(e) < 0)
        or e.metric == "up"
        for e in own
    )


def _evidence(cluster: Sequence[Episode], interval: timedelta) -> list[_Evidence]:
    by_server: dict[str, list[Episode]] = {}
    for episode in cluster:
        by_server.setdefault(episode.server_id, []).append(episode)
    rows = []
    for sid, own in by_server.items():
        lead = _lead_episode(own, interval)
        minutes = sum(e.samples for e in own) * interval / timedelta(minutes=1)
        rows.append(
            _Evidence(
                sid,
                lead,
                _surges(own, lead, interval),
                _slowed(own),
                max(e.robust_z for e in own),
                int(minutes),
            )
        )
    return rows


def _candidates(
    cluster: Sequence[Episode], topology: _Topology, interval: timedelta
) -> list[Candidate]:
    """Every server of the incident scored as its cause, best first.

    score = -(samples after the earliest onset, at most 3)
            + (servers it explains - servers that explain it) / (servers - 1)
            + 0.4 x strength (log of robust units) + 0.2 x share of the incident spent abnormal
    Names and list order never enter: ties stay ties, and ``_root_cause`` says so.
    """
    rows = _evidence(cluster, interval)
    earliest = min(row.lead.onset for row in rows)
    span = max(e.end for e in cluster) - min(e.start for e in cluster) + interval
    span_minutes = span / timedelta(minutes=1)
    others = max(1, len(rows) - 1)
    candidates = []
    for row in rows:
        explains = sorted(o.server_id for o in rows if o is not row and _explains(row, o, topology))
        explained_by = sorted(
            o.server_id for o in rows if o is not row and _explains(o, row, topology)
        )
        delay = min(MAX_DELAY_SAMPLES, (row.lead.onset - earliest) / interval)
        strength = min(1.0, math.log10(1 + row.robust_z) / 2)
        score = (
            -delay
            + (len(explains) - len(explained_by)) / others
            + 0.4 * strength
            + 0.2 * min(1.0, row.abnormal_minutes / span_minutes)
        )
        candidates.append(
            Candidate(
                server_id=row.server_id,
                role=topology.roles[row.server_id],
                metric=row.lead.metric,
                direction=_direction(row.lead),
                onset=row.lead.onset,
                robust_z=row.robust_z,
                abnormal_minutes=row.abnormal_minutes,
                explains=explains,
                explained_by=explained_by,
                score=_r(score, 2),
            )
        )
    candidates.sort(key=lambda c: (-c.score, c.onset, c.server_id))
    return candidates


def _kind(fleet: Fleet, lead: Candidate, surge: bool, episodes: Sequence[Episode]) -> str:
    """What went wrong on the root server: its first crossed limit of a cause metric."""
    if surge:
        return "traffic_surge"
    own = [e for e in episodes if e.server_id == lead.server_id]
    causes = [e for e in own if e.kind == "threshold" and e.metric not in SYMPTOM_METRICS]
    pool = causes or [e for e in own if e.kind == "threshold"] or own
    root = min(pool, key=lambda e: (e.start, -e.severity.rank, e.metric))
    if root.metric == "memory":
        return "memory_leak" if _leaked(fleet, root) else "memory_pressure"
    if root.metric == "cpu":
        long = root.end - root.start >= timedelta(hours=3)
        return "cpu_saturation" if long else "cpu_spike"
    return {
        "up": "server_down",
        "disk_io": "disk_io_saturation",
        "disk": "disk_space",
        "packet_loss": "packet_loss",
        "response_ms": "slow_response",
        "load": "high_load",
        "net_in": "traffic_anomaly",
        "net_out": "traffic_anomaly",
    }.get(root.metric, "anomaly")


def _leaked(fleet: Fleet, root: Episode) -> bool:
    """Memory that climbed steadily for hours before it crossed the limit: a leak."""
    server = fleet.server(root.server_id)
    end = fleet.timestamps.index(root.start)
    per_hour = 60 / fleet.interval_minutes
    begin = max(0, end - int(6 * per_hour))
    values = server.metrics.memory[begin:end]
    if len(values) < 2 * per_hour:
        return False
    slope, _, r2 = least_squares([i / per_hour for i in range(len(values))], values)
    return slope >= 0.5 and r2 >= 0.8


def _timeline(episodes: Sequence[Episode]) -> list[TimelineEvent]:
    events = []
    for e in episodes:
        if e.signs_at is not None:
            events.append(
                TimelineEvent(
                    at=e.signs_at,
                    server_id=e.server_id,
                    metric=e.metric,
                    event="warning_signs",
                    value=e.baseline,
                    unit=e.unit,
                )
            )
        start_event = "down" if e.metric == "up" else "started"
        events.append(
            TimelineEvent(
                at=e.start,
                server_id=e.server_id,
                metric=e.metric,
                event=start_event,
                value=e.peak if e.metric == "up" else e.baseline,
                unit=e.unit,
            )
        )
        if e.metric != "up":
            events.append(
                TimelineEvent(
                    at=e.peak_at,
                    server_id=e.server_id,
                    metric=e.metric,
                    event="peak",
                    value=e.peak,
                    unit=e.unit,
                )
            )
        if e.recovered_at is not None:
            events.append(
                TimelineEvent(
                    at=e.recovered_at,
                    server_id=e.server_id,
                    metric=e.metric,
                    event="recovered",
                    value=e.baseline,
                    unit=e.unit,
                )
            )
    order = {"warning_signs": 0, "down": 1, "started": 1, "peak": 2, "recovered": 3}
    events.sort(key=lambda ev: (ev.at, order[ev.event], ev.server_id))
    return events


def _confidence(
    candidates: Sequence[Candidate], cluster: Sequence[Episode]
) -> tuple[float, str, float]:
    """Confidence from the margin between the best and the second candidate.

    One server alone: how clear its own signal is (a crossed limit held for several samples).
    Several: 0.5 at no margin (a coin toss between the top two) rising towards 0.95 as the
    margin grows (a margin of 1, about one sample earlier or explaining every other server,
    gives 0.85). ``make quality`` prints how often each band was right on generated
    two-datacenter fleets with overlapping fleet-wide shifts and noisy samples (last run, 200
    incidents: 0.5-0.6 right 57 % of the time, 0.6-0.7 80 %, 0.7 and above 100 %).
    Below ``UNDETERMINED_MARGIN`` the evidence does not separate them.
    """
    if len(candidates) == 1:
        sid = candidates[0].server_id
        crossed = any(
            e.kind == "threshold" and e.samples >= 3 for e in cluster if e.server_id == sid
        )
        return (0.9 if crossed else 0.7), "single_server", 0.0
    margin = candidates[0].score - candidates[1].score
    confidence = min(0.95, 0.5 + 0.45 * (1 - math.exp(-1.5 * margin)))
    if margin < UNDETERMINED_MARGIN:
        return _r(confidence, 2), "tie", _r(margin, 2)
    reason = "clear_margin" if margin >= 1.0 else "narrow_margin"
    return _r(confidence, 2), reason, _r(margin, 2)


def _root_cause(
    fleet: Fleet, cluster: Sequence[Episode], candidates: list[Candidate], kind: str
) -> RootCause:
    best = candidates[0]
    confidence, reason, margin = _confidence(candidates, cluster)
    others = [c.onset for c in candidates[1:]]
    lead = (min(others) - best.onset) / timedelta(minutes=1) if others else 0.0
    own = [e for e in cluster if e.server_id == best.server_id]
    evidence = [f"{best.metric}_{next(e.kind for e in own if e.metric == best.metric)}"]
    if any(e.signs_at is not None for e in own):
        evidence.append("warning_signs")
    if best.explains:
        evidence.append("explains_dependents")
    if others and lead > 0:
        evidence.append("moved_first")
    determined = reason != "tie"
    return RootCause(
        server_id=best.server_id,
        metric=best.metric,
        kind=kind,
        evidence=evidence,
        lead_minutes=_r(lead),
        confidence=confidence,
        determined=determined,
        confidence_reason=reason,
        margin=margin,
        candidates=candidates,
    )


def _is_incident(cluster: Sequence[Episode]) -> bool:
    """A crossed limit held for more than one sample, a server that stopped answering, or
    strong lasting deviations on several linked servers (a surge that crosses no limit)."""
    if any(e.kind == "threshold" and (e.samples >= 2 or e.metric == "up") for e in cluster):
        return True
    strong = {e.server_id for e in cluster if e.samples >= 3 and e.robust_z >= STRONG_Z}
    return len(strong) >= 2


def find_incidents(
    fleet: Fleet, episodes: Sequence[Episode], topology: _Topology | None = None
) -> list[Incident]:
    """Related episodes as incidents, each with its cause weighed on evidence and topology.

    A single odd sample (one abnormal sample, not a server down) is noise: it neither starts
    an incident nor links two; the episodes of fleet-wide events should be left out first.
    """
    topology = topology or _Topology(fleet)
    interval = timedelta(minutes=fleet.interval_minutes)
    sustained = [e for e in episodes if e.samples >= 2 or e.metric == "up"]
    clusters = [c for c in _cluster(sustained, topology) if _is_incident(c)]
    clusters.sort(key=lambda c: (min(e.first_seen for e in c), min(e.onset for e in c), len(c)))
    incidents: list[Incident] = []
    for cluster in clusters:
        cluster.sort(key=lambda e: (e.onset, e.server_id, e.metric))
        candidates = _candidates(cluster, topology, interval)
        root_id = candidates[0].server_id
        surge = _surges(
            [e for e in cluster if e.server_id == root_id],
            next(e for e in cluster if e.server_id == root_id and e.metric == candidates[0].metric),
            interval,
        )
        kind = _kind(fleet, candidates[0], surge, cluster)
        servers = [c.server_id for c in sorted(candidates, key=lambda c: (c.onset, -c.score))]
        start = min(e.first_seen for e in cluster)
        end = max(e.end for e in cluster)
        ongoing = any(e.recovered_at is None for e in cluster)
        recovered = None if ongoing else max(e.recovered_at for e in cluster if e.recovered_at)
        incidents.append(
            Incident(
                id=f"inc-{len(incidents) + 1}",
                kind=kind,
                severity=max((e.severity for e in cluster), key=lambda s: s.rank),
                start=start,
                end=end,
                recovered_at=recovered,
                ongoing=ongoing,
                duration_minutes=int(((recovered or end) - start) / timedelta(minutes=1)),
                servers=servers,
                root_cause=_root_cause(fleet, cluster, candidates, kind),
                links=[
                    Link(caller=a, callee=b)
                    for a in sorted(servers)
                    for b in sorted(topology.calls[a])
                    if b in servers
                ],
                episodes=list(cluster),
                timeline=_timeline(cluster),
            )
        )
    return incidents


# --------------------------------------------------------------------------- capacity


def _incident_mask(fleet: Fleet, server: Server, incidents: Sequence[Incident]) -> list[bool]:
    """True for samples inside an incident that touched this server."""
    mask = [False] * len(fleet.timestamps)
    for incident in incidents:
        if server.id not in incident.servers:
            continue
        until = incident.recovered_at or fleet.timestamps[-1]
        for i, stamp in enumerate(fleet.timestamps):
            mask[i] = mask[i] or incident.start <= stamp <= until
    return mask


def find_capacity(fleet: Fleet, incidents: Sequence[Incident]) -> list[Capacity]:
    """Steady-state utilisation (incidents excluded) and a sizing verdict per server."""
    rows = []
    for server in fleet.servers:
        mask = _incident_mask(fleet, server, incidents)
        keep = [i for i, alive in enumerate(server.metrics.up) if alive and not mask[i]]
        stats = {}
        for metric in CAPACITY_METRICS:
            series = server.series(metric) or []
            values = [series[i] for i in keep]
            stats[metric] = (_r(_percentile(values, 0.5)), _r(_percentile(values, 0.95)))
        cpu95, mem95 = stats["cpu"][1], stats["memory"][1]
        verdict = "balanced"
        if cpu95 >= 70 or mem95 >= 85:
            verdict = "under_provisioned"
        elif cpu95 < 20 and mem95 < 35:
            verdict = "over_provisioned"
        rows.append(
            Capacity(
                server_id=server.id,
                role=server.role.value,
                datacenter=server.datacenter,
                cpu_cores=server.cpu_cores,
                memory_gb=server.memory_gb,
                cpu_p50=stats["cpu"][0],
                cpu_p95=cpu95,
                memory_p50=stats["memory"][0],
                memory_p95=mem95,
                verdict=verdict,
            )
        )
    return rows


def find_consolidations(capacity: Sequence[Capacity]) -> list[Consolidation]:
    """Over-provisioned servers of one role and datacenter that one machine could carry."""
    groups: dict[tuple[str, str], list[Capacity]] = {}
    for row in capacity:
        if row.verdict == "over_provisioned":
            groups.setdefault((row.role, row.datacenter), []).append(row)
    result = []
    for (role, datacenter), rows in groups.items():
        cpu = _r(sum(row.cpu_p95 for row in rows))
        memory = _r(sum(row.memory_p95 for row in rows))
        # leave headroom: the merged server should still sit below ~60 % at p95
        if len(rows) >= 2 and cpu < 60 and memory < 60:
            result.append(
                Consolidation(
                    servers=[row.server_id for row in rows],
                    role=role,
                    datacenter=datacenter,
                    combined_cpu_p95=cpu,
                    combined_memory_p95=memory,
                    servers_saved=len(rows) - 1,
                )
            )
    return result


# --------------------------------------------------------------------------- status


def _server_status(fleet: Fleet, server: Server) -> ServerStatus:
    last = len(fleet.timestamps) - 1
    alerts = []
    status = Severity.NORMAL
    if not server.metrics.up[last]:
        status = Severity.DOWN
    for metric in RULES:
        series = server.series(metric)
        warning, critical = limits(server, metric)
        if series is None or warning is None or critical is None:
            continue
        value = series[last]
        if value >= warning:
            alerts.append(metric)
            level = Severity.CRITICAL if value >= critical else Severity.WARNING
            status = max(status, level, key=lambda s: s.rank)
    return ServerStatus(
        server_id=server.id,
        role=server.role.value,
        datacenter=server.datacenter,
        status=status,
        cpu=server.metrics.cpu[last],
        memory=server.metrics.memory[last],
        disk=server.metrics.disk[last],
        response_ms=server.metrics.response_ms[last],
        alerts=alerts,
    )


def status_summary(fleet: Fleet, incidents: Sequence[Incident] = ()) -> StatusSummary:
    """How every server is doing at the latest sample."""
    servers = [_server_status(fleet, server) for server in fleet.servers]
    counts = {severity.value: 0 for severity in Severity}
    for row in servers:
        counts[row.status.value] += 1
    return StatusSummary(
        at=fleet.timestamps[-1],
        total=len(servers),
        counts=counts,
        avg_cpu=_r(sum(row.cpu for row in servers) / len(servers)),
        avg_memory=_r(sum(row.memory for row in servers) / len(servers)),
        incidents_24h=len(incidents),
        ongoing_incidents=sum(1 for incident in incidents if incident.ongoing),
        servers=servers,
    )


def window_of(fleet: Fleet) -> Window:
    return Window(
        start=fleet.timestamps[0],
        end=fleet.timestamps[-1],
        interval_minutes=fleet.interval_minutes,
        points=len(fleet.timestamps),
        servers=len(fleet.servers),
        source=fleet.source,
    )


def analyse(fleet: Fleet) -> FleetFacts:
    """All the facts about the fleet."""
    topology = _Topology(fleet)
    fleet_wide, episodes = find_fleet_wide(fleet, find_episodes(fleet), topology)
    incidents = find_incidents(fleet, episodes, topology)
    capacity = find_capacity(fleet, incidents)
    return FleetFacts(
        window=window_of(fleet),
        fleet_wide=fleet_wide,
        outlooks=find_outlooks(fleet),
        status=status_summary(fleet, incidents),
        incidents=incidents,
        trends=find_trends(fleet),
        capacity=capacity,
        consolidations=find_consolidations(capacity),
    )


CHART_MARGIN = timedelta(hours=2)


def _slice(fleet: Fleet, start: datetime, end: datetime) -> tuple[int, int]:
    stamps = fleet.timestamps
    first = next((i for i, stamp in enumerate(stamps) if stamp >= start), 0)
    last = max((i for i, stamp in enumerate(stamps) if stamp <= end), default=len(stamps) - 1)
    return first, last


def _incident_series(fleet: Fleet, incident: Incident) -> ChartSeries | None:
    cause = incident.root_cause
    episode = next(
        (
            e
            for e in incident.episodes
            if e.server_id == cause.server_id and e.metric == cause.metric
        ),
        None,
    )
    values = fleet.server(cause.server_id).series(cause.metric)
    if episode is None or values is None:
        return None
    until = episode.recovered_at or episode.end
    first, last = _slice(fleet, episode.first_seen - CHART_MARGIN, until + CHART_MARGIN)
    _, critical = limits(fleet.server(cause.server_id), cause.metric)
    return ChartSeries(
        id=incident.id,
        kind="incident",
        server_id=cause.server_id,
        metric=cause.metric,
        unit=episode.unit,
        start=fleet.timestamps[first],
        interval_minutes=fleet.interval_minutes,
        values=[_r(v, 2) for v in values[first : last + 1]],
        baseline=episode.baseline,
        threshold=episode.threshold,
        critical=critical,
        highlight_start=episode.first_seen,
        highlight_end=until,
    )


def _trend_series(fleet: Fleet, trend: Trend) -> ChartSeries | None:
    values = fleet.server(trend.server_id).series(trend.metric)
    if values is None:
        return None
    first, last = _slice(fleet, trend.since, fleet.timestamps[-1])
    return ChartSeries(
        id=f"trend-{trend.server_id}-{trend.metric}",
        kind="trend",
        server_id=trend.server_id,
        metric=trend.metric,
        unit=trend.unit,
        start=fleet.timestamps[first],
        interval_minutes=fleet.interval_minutes,
        values=[_r(v, 2) for v in values[first : last + 1]],
        threshold=trend.warning,
        critical=trend.critical,
        slope_per_hour=trend.slope_per_hour,
    )


def chart_series(fleet: Fleet, facts: FleetFacts) -> list[ChartSeries]:
    """The samples a chart of each incident and each trend needs (see ``ChartSeries``)."""
    series = [_incident_series(fleet, incident) for incident in facts.incidents]
    series += [_trend_series(fleet, trend) for trend in facts.trends]
    return [s for s in series if s is not None]
