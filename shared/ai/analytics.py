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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.ai.facts import (
    Capacity,
    Consolidation,
    Episode,
    FleetFacts,
    Incident,
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
BASELINE_POINTS = 24  # 4 h at 10 minutes
ADAPT_POINTS = 12  # 2 h abnormal -> the new level becomes the baseline
DEVIATION_Z = 4.0
SIGNS_Z = 2.0
CORRELATION_WINDOW = timedelta(minutes=30)
#: a metric flickering around its limit is one incident, not several
SAME_SERVER_GAP = timedelta(minutes=60)
TREND_MIN_R2 = 0.6
TREND_MAX_HOURS = 24 * 7
CAPACITY_METRICS = ("cpu", "memory")


def _r(value: float, digits: int = 1) -> float:
    return round(value, digits)


def limits(server: Server, metric: str) -> tuple[float | None, float | None]:
    """The metric's warning and critical limits for this server (load scales with cores)."""
    rule = RULES[metric]
    if metric == "load" and rule.warning is not None and rule.critical is not None:
        return rule.warning * server.cpu_cores, rule.critical * server.cpu_cores
    return rule.warning, rule.critical


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((value - mean) ** 2 for value in values) / len(values)
    return mean, math.sqrt(var)


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


def _baseline(history: Sequence[float], rule: MetricRule) -> tuple[float, float]:
    mean, std = _mean_std(history[-BASELINE_POINTS:])
    return mean, max(std, rule.abs_floor, 0.05 * abs(mean))


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


def _classify_points(server: Server, metric: str, values: Sequence[float]) -> list[_Point]:
    """Judge each sample against the limits and against the baseline before it.

    Abnormal samples stay out of the baseline, so a long episode is not absorbed into its own
    "normal"; after ``ADAPT_POINTS`` abnormal samples in a row the new level is accepted.
    """
    rule = RULES[metric]
    metric_limits = limits(server, metric)
    history = list(values[:6])
    points = []
    streak = 0
    for value in values:
        mean, spread = _baseline(history, rule)
        level = _level(value, metric_limits)
        if level == 0 and _is_deviation(value, mean, spread, rule):
            level = 1
        streak = streak + 1 if level else 0
        if level == 0 or streak > ADAPT_POINTS:
            history.append(value)
        points.append(_Point(level, mean, spread))
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
    peak_index = max(
        range(first, last + 1),
        key=lambda i: (
            (values[i] - points[first].baseline)
            * (1 if values[i] >= points[first].baseline else -1)
        ),
    )
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
        baseline=_r(points[first].baseline),
        peak=_r(values[peak_index], 2 if metric == "packet_loss" else 1),
        peak_at=stamps[peak_index],
        threshold=(critical if top == 3 else warning) if top >= 2 else None,
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
            )
        )
    return episodes


def find_episodes(fleet: Fleet) -> list[Episode]:
    """Every abnormal stretch of every metric of every server, by start time."""
    episodes: list[Episode] = []
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
            points = _classify_points(server, metric, values)
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


def _trend(fleet: Fleet, server: Server, metric: str) -> Trend | None:
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
    to_warning = _hours_to(warning, current, slope)
    if slope <= 0 or r2 < TREND_MIN_R2 or to_warning is None:
        return None
    return Trend(
        server_id=server.id,
        metric=metric,
        unit=RULES[metric].unit,
        since=fleet.timestamps[first],
        current=_r(current),
        slope_per_hour=_r(slope, 2),
        r2=_r(r2, 2),
        warning=warning,
        critical=critical,
        hours_to_warning=to_warning,
        hours_to_critical=_hours_to(critical, current, slope),
    )


def find_trends(fleet: Fleet) -> list[Trend]:
    """Rising metrics that will cross a limit within a week, soonest first."""
    trends = [
        trend
        for server in fleet.servers
        for metric in ("cpu", "memory", "disk", "disk_io")
        if (trend := _trend(fleet, server, metric)) is not None
    ]
    trends.sort(key=lambda t: (t.hours_to_warning or 0.0, t.server_id))
    return trends


# --------------------------------------------------------------------------- incidents


@dataclass
class _Cluster:
    episodes: list[Episode]

    @property
    def start(self) -> datetime:
        return self.episodes[0].first_seen

    @property
    def end(self) -> datetime:
        return max(e.end for e in self.episodes)

    def accepts(self, episode: Episode) -> bool:
        same_server = any(e.server_id == episode.server_id for e in self.episodes)
        if same_server and episode.first_seen <= self.end + SAME_SERVER_GAP:
            return True
        near_start = episode.first_seen - self.start <= CORRELATION_WINDOW
        return near_start and episode.first_seen <= self.end + timedelta(minutes=10)


def _cluster(episodes: Sequence[Episode]) -> list[_Cluster]:
    clusters: list[_Cluster] = []
    for episode in episodes:
        home = next((c for c in reversed(clusters) if c.accepts(episode)), None)
        if home is None:
            clusters.append(_Cluster([episode]))
        else:
            home.episodes.append(episode)
    return clusters


#: Metrics that show an effect (slow answers, less traffic), not a cause.
SYMPTOM_METRICS = frozenset({"response_ms", "net_in", "net_out"})


def _root_episode(cluster: _Cluster) -> Episode:
    """The first limit crossed by a cause metric on the server that went wrong first."""
    root_server = cluster.episodes[0].server_id
    own = [e for e in cluster.episodes if e.server_id == root_server]
    causes = [e for e in own if e.kind == "threshold" and e.metric not in SYMPTOM_METRICS]
    candidates = causes or [e for e in own if e.kind == "threshold"] or own
    return min(candidates, key=lambda e: (e.start, -e.severity.rank, e.metric))


def _kind(fleet: Fleet, root: Episode) -> str:
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
    begin = max(0, end - 36)
    values = server.metrics.memory[begin:end]
    if len(values) < 12:
        return False
    slope, _, r2 = least_squares([i / 6 for i in range(len(values))], values)
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


def _root_cause(cluster: _Cluster, root: Episode, kind: str, servers: list[str]) -> RootCause:
    others = [e.first_seen for e in cluster.episodes if e.server_id != root.server_id]
    lead = int((min(others) - cluster.start) / timedelta(minutes=1)) if others else 0
    evidence = [f"{root.metric}_{root.kind}"]
    if root.signs_at is not None:
        evidence.append("warning_signs")
    if others:
        evidence.append("followers")
    if root.recovered_at is not None and len(servers) > 1:
        evidence.append("joint_recovery")
    # more independent signs that one server led -> more confidence it is the cause
    confidence = 0.5 + 0.15 * (root.kind == "threshold") + 0.1 * (root.signs_at is not None)
    confidence += 0.15 * (lead >= 10) + 0.05 * (len(servers) > 1)
    return RootCause(
        server_id=root.server_id,
        metric=root.metric,
        kind=kind,
        evidence=evidence,
        lead_minutes=lead,
        confidence=_r(min(confidence, 0.95), 2),
    )


def find_incidents(fleet: Fleet, episodes: Sequence[Episode]) -> list[Incident]:
    """Correlated episodes as incidents; an incident needs at least one crossed limit."""
    incidents: list[Incident] = []
    for cluster in _cluster(episodes):
        if not any(e.kind == "threshold" for e in cluster.episodes):
            continue
        root = _root_episode(cluster)
        kind = _kind(fleet, root)
        servers = list(dict.fromkeys(e.server_id for e in cluster.episodes))
        ongoing = any(e.recovered_at is None for e in cluster.episodes)
        recovered = (
            None if ongoing else max(e.recovered_at for e in cluster.episodes if e.recovered_at)
        )
        end = recovered or cluster.end
        incidents.append(
            Incident(
                id=f"inc-{len(incidents) + 1}",
                kind=kind,
                severity=max((e.severity for e in cluster.episodes), key=lambda s: s.rank),
                start=cluster.start,
                end=cluster.end,
                recovered_at=recovered,
                ongoing=ongoing,
                duration_minutes=int((end - cluster.start) / timedelta(minutes=1)),
                servers=servers,
                root_cause=_root_cause(cluster, root, kind, servers),
                episodes=list(cluster.episodes),
                timeline=_timeline(cluster.episodes),
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
    incidents = find_incidents(fleet, find_episodes(fleet))
    capacity = find_capacity(fleet, incidents)
    return FleetFacts(
        window=window_of(fleet),
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
