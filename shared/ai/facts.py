"""The facts the analytics compute from the fleet: what every AI answer is built from.

Pure data (pydantic, camelCase on the wire). Numbers are rounded once here, when the facts are
made, and every text shows them exactly as stored, so each number in an answer can be traced
to a fact.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class FactModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Severity(enum.StrEnum):
    NORMAL = "normal"
    WARNING = "warning"
    CRITICAL = "critical"
    DOWN = "down"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.NORMAL: 0, Severity.WARNING: 1, Severity.CRITICAL: 2, Severity.DOWN: 3}


class Window(FactModel):
    start: datetime
    end: datetime
    interval_minutes: int
    points: int
    servers: int
    source: str


class Episode(FactModel):
    """One metric of one server out of its normal range for a while."""

    server_id: str
    metric: str
    unit: str
    kind: str  #: "threshold" (crossed a warning/critical limit) or "deviation" (from baseline)
    severity: Severity
    signs_at: datetime | None  #: first warning sign before ``start``
    start: datetime
    end: datetime  #: last abnormal sample
    recovered_at: datetime | None  #: first normal sample after ``end``; None while ongoing
    baseline: float  #: rolling mean before the episode
    peak: float
    peak_at: datetime
    threshold: float | None  #: the limit crossed, for threshold episodes
    #: when the metric left its baseline, interpolated between the samples around the crossing
    onset: datetime
    robust_z: float  #: the peak's distance from the baseline median in robust units (MAD)
    samples: int  #: abnormal samples in the episode (1 = a single odd sample)

    @model_validator(mode="before")
    @classmethod
    def _older_results(cls, data: Any) -> Any:
        """Results stored before onsets existed stay readable: onset = start, strength unknown."""
        if isinstance(data, dict) and "onset" not in data and "start" in data:
            data = {**data, "onset": data["start"], "robustZ": 0.0, "samples": 0}
        return data

    @property
    def first_seen(self) -> datetime:
        return self.signs_at or self.start

    @property
    def direction(self) -> int:
        """+1 when the metric rose (its extreme at or above the baseline), -1 when it fell."""
        return 1 if self.peak >= self.baseline else -1


class TimelineEvent(FactModel):
    at: datetime
    server_id: str
    metric: str
    event: str  #: warning_signs | started | peak | recovered | down
    value: float
    unit: str


class Candidate(FactModel):
    """One server of an incident weighed as its cause."""

    server_id: str
    role: str
    metric: str  #: the signal that moved first on this server
    direction: int  #: +1 rose, -1 fell
    onset: datetime  #: interpolated time the signal left its baseline
    robust_z: float  #: the strongest deviation on this server, in robust units
    abnormal_minutes: int
    explains: list[str]  #: incident servers whose trouble this one accounts for (topology)
    explained_by: list[str]  #: incident servers that account for this one's trouble
    score: float


class Link(FactModel):
    """A direct call between two servers of an incident (from the fleet's topology)."""

    caller: str
    callee: str


class RootCause(FactModel):
    server_id: str  #: the best candidate (the cause when ``determined``)
    metric: str
    kind: str
    evidence: list[str]  #: machine-readable evidence keys, rendered per language
    lead_minutes: float  #: how long before the next server's onset the root's signal moved
    confidence: float = Field(ge=0, le=1)
    determined: bool = True  #: False when the evidence does not separate the candidates
    #: why the confidence is what it is: single_server | clear_margin | narrow_margin | tie
    confidence_reason: str = "single_server"
    margin: float = 0.0  #: score of the best candidate minus the runner-up's
    candidates: list[Candidate] = Field(default_factory=list)  #: best first


class Incident(FactModel):
    id: str
    kind: str  #: cpu_spike, memory_leak, disk_io_saturation, packet_loss, ...
    severity: Severity
    start: datetime
    end: datetime
    recovered_at: datetime | None
    ongoing: bool
    duration_minutes: int
    servers: list[str]  #: in the order their signals left the baseline
    root_cause: RootCause
    links: list[Link] = Field(default_factory=list)
    episodes: list[Episode]
    timeline: list[TimelineEvent]

    @property
    def onset(self) -> datetime:
        """When the incident began, as every answer states it (headline, summary, the order
        sentence's first time, the timeline's first row): the earliest onset of its servers'
        lead signals. Not ``start`` (the first warning-sign or abnormal *sample*), which can
        be a sample later than the onset the text orders the servers by."""
        return min((c.onset for c in self.root_cause.candidates), default=self.start)


class FleetWideEvent(FactModel):
    """One signal moving on most of the fleet at once: a common cause, not a chain."""

    id: str
    metric: str
    unit: str
    direction: int  #: +1 rose, -1 fell
    start: datetime  #: the earliest onset
    end: datetime  #: the last abnormal sample
    servers: list[str]
    datacenters: list[str]
    share: float  #: fraction of the servers that carry the metric
    median_change: float  #: median peak / baseline ratio over the servers


class Trend(FactModel):
    """A least-squares line through a metric's recent samples."""

    server_id: str
    metric: str
    unit: str
    since: datetime
    current: float
    slope_per_hour: float
    r2: float
    warning: float
    critical: float
    hours_to_warning: float | None
    hours_to_critical: float | None


class Capacity(FactModel):
    server_id: str
    role: str
    datacenter: str
    cpu_cores: int
    memory_gb: float
    cpu_p50: float
    cpu_p95: float
    memory_p50: float
    memory_p95: float
    verdict: str  #: over_provisioned | under_provisioned | balanced


class Consolidation(FactModel):
    servers: list[str]
    role: str
    datacenter: str
    combined_cpu_p95: float
    combined_memory_p95: float
    servers_saved: int


class ServerStatus(FactModel):
    server_id: str
    role: str
    datacenter: str
    status: Severity
    cpu: float
    memory: float
    disk: float
    response_ms: float
    alerts: list[str]  #: metric names over a limit now


class StatusSummary(FactModel):
    at: datetime
    total: int
    counts: dict[str, int]  #: per Severity value
    avg_cpu: float
    avg_memory: float
    incidents_24h: int
    ongoing_incidents: int
    servers: list[ServerStatus]


class FleetFacts(FactModel):
    window: Window
    status: StatusSummary
    incidents: list[Incident]
    trends: list[Trend]
    capacity: list[Capacity]
    consolidations: list[Consolidation]
    fleet_wide: list[FleetWideEvent] = Field(default_factory=list)
    #: cpu/memory/disk/disk I/O of every server fitted with a line, rising or not (prediction)
    outlooks: list[Trend] = Field(default_factory=list)
