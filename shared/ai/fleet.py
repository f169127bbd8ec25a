"""The server fleet the AI work reads: its shape, a synthetic fleet and a JSON reader.

A ``FleetSource`` returns a ``Fleet``: equally spaced timestamps and, per server, one value per
timestamp for each metric. ``SyntheticFleetSource`` builds a deterministic fleet from a seed
(15 servers, six roles, two datacenters, 24 h at 10-minute resolution, four scripted incidents);
``JsonFleetSource`` reads the same shape from a JSON file or an http(s) URL, so a deployment can
feed real metrics (``FLEET_SOURCE``).

JSON fleet format
-----------------
One object; field names are camelCase::

    {
      "intervalMinutes": 10,                      # optional, default 10
      "timestamps": ["2025-12-22T09:10:00+09:00", ...],   # ISO 8601 with a UTC offset,
                                                  # ascending, equally spaced, at least 6
      "servers": [
        {
          "id": "db-01",                          # unique, shown to users
          "name": "Primary database",             # optional, default = id
          "role": "database",                     # web | application | database | cache |
                                                  # storage | load_balancer
          "datacenter": "dc1-seoul",
          "cpuCores": 16,                         # optional, default 4
          "memoryGb": 64,                         # optional, default 16
          "dependsOn": ["storage-01"],            # optional: the servers this one calls;
                                                  # replaces the default from roles (below)
          "metrics": {                            # one value per timestamp
            "cpu": [...],          # % busy, 0..100
            "memory": [...],       # % used, 0..100
            "disk": [...],         # % of disk space used, 0..100
            "diskIo": [...],       # optional: % disk I/O utilisation, 0..100
            "netIn": [...],        # Mbit/s received
            "netOut": [...],       # Mbit/s sent
            "load": [...],         # 1-minute load average
            "responseMs": [...],   # mean response (or query) time, milliseconds
            "packetLoss": [...],   # optional: % packets lost
            "up": [true, ...]      # false when the server did not answer
          }
        }
      ]
    }

A ``null`` sample is read as the previous sample (the first one as the next non-null sample);
unknown fields are ignored. Every metric list must have exactly one entry per timestamp.

Dependencies (who calls whom) decide how an incident's servers are linked and which one
explains the others. By default they follow the roles within one datacenter: a load balancer
calls the web servers (or, without a web tier, the application servers), a web server calls the
application servers (or the data tier), an application server calls the databases, caches and
storage; data-tier servers call nothing. No default link crosses datacenters. A server's
``dependsOn`` list replaces its default links (``[]`` for none) and may name servers in another
datacenter (a replica following its primary, a shared cache); every id must exist.
"""

from __future__ import annotations

import enum
import json
import math
import random
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shared.errors import ConfigError, DependencyDown

KST = timezone(timedelta(hours=9), "KST")
#: The synthetic fleet replays one fixed day, so every run yields the same facts.
SYNTHETIC_END = datetime(2025, 12, 23, 9, 0, tzinfo=KST)
SYNTHETIC_POINTS = 144  # 24 h at 10 minutes
INTERVAL_MINUTES = 10


class Role(enum.StrEnum):
    WEB = "web"
    APPLICATION = "application"
    DATABASE = "database"
    CACHE = "cache"
    STORAGE = "storage"
    LOAD_BALANCER = "load_balancer"


#: Metric names in Python (snake_case); the JSON uses their camelCase forms.
METRICS: tuple[str, ...] = (
    "cpu",
    "memory",
    "disk",
    "disk_io",
    "net_in",
    "net_out",
    "load",
    "response_ms",
    "packet_loss",
    "up",
)


class _FleetModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def _fill_nulls(values: Any) -> Any:
    """A missing sample repeats its neighbour: the analytics need complete series."""
    if not isinstance(values, list) or all(value is not None for value in values):
        return values
    known = [value for value in values if value is not None]
    if not known:
        raise ValueError("a metric has no samples at all")
    previous = known[0]
    filled = []
    for value in values:
        previous = previous if value is None else value
        filled.append(previous)
    return filled


class ServerMetrics(_FleetModel):
    cpu: list[float]
    memory: list[float]
    disk: list[float]
    disk_io: list[float] | None = None
    net_in: list[float]
    net_out: list[float]
    load: list[float]
    response_ms: list[float]
    packet_loss: list[float] | None = None
    up: list[bool]

    _fill = field_validator("*", mode="before")(classmethod(lambda cls, v: _fill_nulls(v)))


class Server(_FleetModel):
    id: str = Field(min_length=1, max_length=64)
    name: str = ""
    role: Role
    datacenter: str
    cpu_cores: int = Field(default=4, ge=1)
    memory_gb: float = Field(default=16.0, gt=0)
    depends_on: list[str] | None = None  #: the servers this one calls; None = from roles
    metrics: ServerMetrics

    def series(self, metric: str) -> list[float] | None:
        """One metric as floats (``up`` as 1.0/0.0); ``None`` when the server lacks it."""
        values = getattr(self.metrics, metric)
        if values is None:
            return None
        if metric == "up":
            return [1.0 if value else 0.0 for value in values]
        return list(values)


class Fleet(_FleetModel):
    """Servers and their metric series over one window."""

    source: str = "json"
    interval_minutes: int = Field(default=INTERVAL_MINUTES, ge=1)
    timestamps: list[datetime] = Field(min_length=6)
    servers: list[Server] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_shape(self) -> Fleet:
        if any(stamp.tzinfo is None for stamp in self.timestamps):
            raise ValueError("timestamps need a UTC offset")
        if any(b <= a for a, b in zip(self.timestamps, self.timestamps[1:], strict=False)):
            raise ValueError("timestamps must be ascending")
        seen: set[str] = set()
        for server in self.servers:
            if server.id in seen:
                raise ValueError(f"duplicate server id {server.id}")
            seen.add(server.id)
            for metric in METRICS:
                values = getattr(server.metrics, metric)
                if values is not None and len(values) != len(self.timestamps):
                    raise ValueError(
                        f"{server.id}.{metric} has {len(values)} samples, "
                        f"expected {len(self.timestamps)}"
                    )
        for server in self.servers:
            unknown = sorted(set(server.depends_on or ()) - seen - {server.id})
            if unknown or server.id in (server.depends_on or ()):
                raise ValueError(
                    f"{server.id}.dependsOn names unknown servers or itself: "
                    f"{', '.join(unknown) or server.id}"
                )
        return self

    def dependencies(self) -> dict[str, frozenset[str]]:
        """Server id -> the ids it calls directly (see ``dependency_map``)."""
        return dependency_map(self)

    def server(self, server_id: str) -> Server:
        for server in self.servers:
            if server.id == server_id:
                return server
        raise KeyError(server_id)


#: Default call order within a datacenter: each tier calls the first tier after it that the
#: datacenter has (a web tier may be missing); the data tier calls nothing.
_TIERS: tuple[frozenset[Role], ...] = (
    frozenset({Role.LOAD_BALANCER}),
    frozenset({Role.WEB}),
    frozenset({Role.APPLICATION}),
    frozenset({Role.DATABASE, Role.CACHE, Role.STORAGE}),
)


def _tier(role: Role) -> int:
    return next(i for i, tier in enumerate(_TIERS) if role in tier)


def dependency_map(fleet: Fleet) -> dict[str, frozenset[str]]:
    """Server id -> the ids it calls directly: ``dependsOn`` where given, else from roles."""
    by_dc: dict[str, list[Server]] = {}
    for server in fleet.servers:
        by_dc.setdefault(server.datacenter, []).append(server)
    calls: dict[str, frozenset[str]] = {}
    for server in fleet.servers:
        if server.depends_on is not None:
            calls[server.id] = frozenset(server.depends_on)
            continue
        peers = by_dc[server.datacenter]
        callees: frozenset[str] = frozenset()
        for tier in _TIERS[_tier(server.role) + 1 :]:
            callees = frozenset(p.id for p in peers if p.role in tier)
            if callees:
                break
        calls[server.id] = callees
    return calls


class FleetSource(Protocol):
    """Where the fleet's metrics come from."""

    def load(self) -> Fleet: ...


# --------------------------------------------------------------------------- JSON / URL source


@dataclass(frozen=True)
class JsonFleetSource:
    """Reads a fleet in the JSON format above from a file path or an http(s) URL, every load."""

    location: str
    timeout_s: float = 10.0

    def load(self) -> Fleet:
        raw = self._read()
        try:
            data = json.loads(raw)
            if isinstance(data, dict):
                data.setdefault("source", self.location)
            return Fleet.model_validate(data)
        except (ValueError, ValidationError) as exc:
            # the message names the field pydantic rejected
            raise ConfigError(
                f"fleet data at {self.location} is malformed: {exc}",
                details={"setting": "FLEET_SOURCE"},
            ) from exc

    def _read(self) -> bytes:
        if self.location.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(self.location, timeout=self.timeout_s) as response:
                    body: bytes = response.read()
                    return body
            except OSError as exc:
                raise DependencyDown(
                    f"cannot fetch fleet data from {self.location}: {exc}"
                ) from exc
        try:
            return Path(self.location).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read fleet data {self.location}: {exc}",
                details={"setting": "FLEET_SOURCE"},
            ) from exc


# --------------------------------------------------------------------------- synthetic source


@dataclass(frozen=True)
class ScriptedIncident:
    """What the synthetic fleet hides in its data; tests check the analytics find it."""

    key: str
    server_id: str
    metric: str
    start: datetime  # the metric crosses its warning threshold
    end: datetime  # back to normal
    followers: tuple[str, ...]  # servers whose metrics react to it


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 12, day, hour, minute, tzinfo=KST)


SCRIPTED_INCIDENTS: tuple[ScriptedIncident, ...] = (
    ScriptedIncident(
        "cpu_spike", "app-02", "cpu", _at(22, 14), _at(22, 15, 10), ("web-01", "web-02")
    ),
    ScriptedIncident(
        "packet_loss", "lb-01", "packet_loss", _at(22, 20, 10), _at(22, 21), ("web-01", "web-02")
    ),
    ScriptedIncident("memory_leak", "cache-01", "memory", _at(23, 0, 30), _at(23, 6, 50), ()),
    ScriptedIncident(
        "disk_io_saturation", "db-01", "disk_io", _at(23, 2), _at(23, 3, 50), ("app-01", "app-02")
    ),
)


@dataclass(frozen=True)
class _Profile:
    """A server's normal behaviour: level + diurnal swing per metric."""

    role: Role
    datacenter: str
    cores: int
    memory_gb: float
    cpu: tuple[float, float]
    memory: float
    disk: tuple[float, float]  # at the start, at the end (a slow fill)
    disk_io: tuple[float, float]
    net: tuple[float, float]
    response: tuple[float, float]


_DC1, _DC2 = "dc1-seoul", "dc2-busan"
_PROFILES: dict[str, _Profile] = {
    "lb-01": _Profile(
        Role.LOAD_BALANCER, _DC1, 4, 8, (12, 18), 35, (30, 30), (4, 2), (300, 500), (12, 6)
    ),
    "lb-02": _Profile(
        Role.LOAD_BALANCER, _DC2, 4, 8, (10, 14), 33, (28, 28), (4, 2), (220, 380), (12, 6)
    ),
    "web-01": _Profile(Role.WEB, _DC1, 8, 16, (22, 30), 52, (45, 46), (8, 6), (90, 160), (85, 40)),
    "web-02": _Profile(Role.WEB, _DC1, 8, 16, (24, 30), 50, (41, 42), (8, 6), (90, 160), (85, 40)),
    "web-03": _Profile(Role.WEB, _DC2, 8, 16, (5, 8), 24, (35, 35), (4, 3), (20, 40), (70, 20)),
    "web-04": _Profile(Role.WEB, _DC2, 8, 16, (5, 7), 22, (33, 33), (4, 3), (18, 36), (70, 20)),
    "app-01": _Profile(
        Role.APPLICATION, _DC1, 16, 32, (32, 28), 61, (40, 41), (12, 8), (60, 100), (120, 60)
    ),
    "app-02": _Profile(
        Role.APPLICATION, _DC1, 16, 32, (33, 28), 63, (38, 39), (12, 8), (60, 100), (120, 60)
    ),
    "app-03": _Profile(
        Role.APPLICATION, _DC2, 8, 16, (45, 27), 66, (44, 45), (10, 8), (50, 90), (140, 70)
    ),
    "db-01": _Profile(
        Role.DATABASE, _DC1, 16, 64, (28, 22), 76, (70, 72), (18, 14), (40, 60), (5, 3)
    ),
    "db-02": _Profile(
        Role.DATABASE, _DC2, 16, 64, (14, 10), 71, (69, 71), (12, 6), (30, 40), (4, 2)
    ),
    "cache-01": _Profile(
        Role.CACHE, _DC1, 4, 32, (10, 10), 55, (20, 20), (2, 1), (80, 120), (2, 1)
    ),
    "cache-02": _Profile(Role.CACHE, _DC2, 4, 32, (8, 8), 54, (20, 20), (2, 1), (60, 90), (2, 1)),
    "storage-01": _Profile(
        Role.STORAGE, _DC1, 8, 32, (10, 6), 41, (67, 79), (25, 12), (100, 60), (9, 4)
    ),
    "storage-02": _Profile(
        Role.STORAGE, _DC2, 8, 32, (9, 5), 39, (58, 58.5), (22, 10), (80, 50), (9, 4)
    ),
}

_NAMES = {
    Role.LOAD_BALANCER: "Load balancer",
    Role.WEB: "Web server",
    Role.APPLICATION: "Application server (WAS)",
    Role.DATABASE: "Database",
    Role.CACHE: "Cache (Redis)",
    Role.STORAGE: "Storage",
}


def _diurnal(stamp: datetime) -> float:
    """0 at 04:00 local time, 1 at 16:00: the dashboard's users sleep at night."""
    hour = stamp.hour + stamp.minute / 60
    return 0.5 - 0.5 * math.cos(2 * math.pi * (hour - 4) / 24)


def _ramp(stamp: datetime, start: datetime, end: datetime) -> float:
    """0 before ``start``, rising linearly to 1 at ``end`` and staying there."""
    if stamp <= start:
        return 0.0
    if stamp >= end:
        return 1.0
    return (stamp - start) / (end - start)


def _window(
    stamp: datetime, rise: tuple[datetime, datetime], fall: tuple[datetime, datetime]
) -> float:
    """A bump: ramps up over ``rise``, holds, ramps down over ``fall``."""
    return _ramp(stamp, *rise) * (1.0 - _ramp(stamp, *fall))


class _SeriesBuilder:
    """Builds one server's normal series; incidents are added afterwards."""

    def __init__(self, rng: random.Random, stamps: list[datetime], profile: _Profile) -> None:
        self.rng = rng
        self.stamps = stamps
        self.profile = profile

    def _noise(self, scale: float) -> float:
        return self.rng.gauss(0.0, scale)

    def build(self) -> dict[str, list[float]]:
        p, n = self.profile, len(self.stamps)
        day = [_diurnal(stamp) for stamp in self.stamps]
        cpu = [p.cpu[0] + p.cpu[1] * d + self._noise(1.5) for d in day]
        disk_step = (p.disk[1] - p.disk[0]) / (n - 1)
        return {
            "cpu": cpu,
            "memory": [p.memory + 2.0 * d + self._noise(0.6) for d in day],
            "disk": [p.disk[0] + disk_step * i + self._noise(0.05) for i in range(n)],
            "disk_io": [p.disk_io[0] + p.disk_io[1] * d + self._noise(1.0) for d in day],
            "net_in": [(p.net[0] + p.net[1] * d) * (1 + self._noise(0.03)) for d in day],
            "net_out": [(p.net[0] + p.net[1] * d) * 0.8 * (1 + self._noise(0.03)) for d in day],
            "load": [c / 100 * p.cores * 1.1 + abs(self._noise(0.1)) for c in cpu],
            "response_ms": [
                (p.response[0] + p.response[1] * d) * (1 + self._noise(0.04)) for d in day
            ],
            "packet_loss": [abs(self._noise(0.02)) for _ in day],
            "up": [1.0] * n,
        }


def _add_cpu_spike(series: dict[str, dict[str, list[float]]], stamps: list[datetime]) -> None:
    """app-02 runs hot after a bad deploy: load and latency climb first, web tier follows."""
    for i, stamp in enumerate(stamps):
        warning = _window(
            stamp, (_at(22, 13, 30), _at(22, 13, 55)), (_at(22, 14, 50), _at(22, 15, 10))
        )
        spike = _window(
            stamp, (_at(22, 13, 55), _at(22, 14, 0)), (_at(22, 14, 50), _at(22, 15, 10))
        )
        app = series["app-02"]
        app["cpu"][i] = max(app["cpu"][i], app["cpu"][i] + (84 - app["cpu"][i]) * warning * 0.9)
        app["cpu"][i] += (97 - app["cpu"][i]) * spike
        app["load"][i] = app["cpu"][i] / 100 * 16 * 1.1 + 8 * spike
        app["response_ms"][i] *= 1 + 1.0 * warning * (1 - spike) + 6.0 * spike
        follow = _window(
            stamp, (_at(22, 14, 0), _at(22, 14, 10)), (_at(22, 14, 50), _at(22, 15, 10))
        )
        for web in ("web-01", "web-02"):
            series[web]["response_ms"][i] *= 1 + 3.0 * follow


def _add_packet_loss(series: dict[str, dict[str, list[float]]], stamps: list[datetime]) -> None:
    """lb-01's uplink drops packets: a little loss first, then a lot; dc1 web servers starve."""
    for i, stamp in enumerate(stamps):
        early = _window(
            stamp, (_at(22, 19, 40), _at(22, 19, 50)), (_at(22, 20, 0), _at(22, 20, 10))
        )
        loss = _window(stamp, (_at(22, 20, 0), _at(22, 20, 10)), (_at(22, 20, 50), _at(22, 21, 0)))
        lb = series["lb-01"]
        lb["packet_loss"][i] += 0.8 * early + (5.5 + 1.5 * math.sin(i)) * loss
        lb["response_ms"][i] *= 1 + 3.5 * loss
        lb["net_in"][i] *= 1 - 0.2 * loss
        follow = _window(
            stamp, (_at(22, 20, 10), _at(22, 20, 20)), (_at(22, 20, 50), _at(22, 21, 0))
        )
        for web in ("web-01", "web-02"):
            series[web]["response_ms"][i] *= 1 + 2.2 * follow
            series[web]["net_in"][i] *= 1 - 0.35 * follow


def _add_memory_leak(series: dict[str, dict[str, list[float]]], stamps: list[datetime]) -> None:
    """cache-01 leaks ~2 %/h from noon; it is restarted at 06:40 and starts leaking again."""
    cache = series["cache-01"]
    leak_start, restart = _at(22, 12), _at(23, 6, 40)
    for i, stamp in enumerate(stamps):
        if leak_start < stamp < restart:
            hours = (stamp - leak_start) / timedelta(hours=1)
            cache["memory"][i] = 55 + 2.0 * hours + cache["memory"][i] - 55 - 2.0 * _diurnal(stamp)
            if cache["memory"][i] > 86:
                # evictions make the cache slow before it falls over
                cache["response_ms"][i] *= 1 + (cache["memory"][i] - 86) * 0.8
        elif stamp == restart:
            cache["up"][i] = 0.0
            cache["memory"][i] = 0.0
            cache["net_in"][i] = cache["net_out"][i] = 0.0
        elif stamp > restart:
            hours = (stamp - restart) / timedelta(hours=1)
            cache["memory"][i] = 38 + 2.0 * hours + cache["memory"][i] - 55 - 2.0 * _diurnal(stamp)


def _add_backup_io(series: dict[str, dict[str, list[float]]], stamps: list[datetime]) -> None:
    """The nightly backup of db-01 saturates its disk I/O; the application tier waits on it."""
    for i, stamp in enumerate(stamps):
        # the warning sign (I/O creeping up before the backup proper) ends with the backup
        end = (_at(23, 3, 30), _at(23, 3, 50))
        early = _window(stamp, (_at(23, 1, 30), _at(23, 1, 50)), end)
        backup = _window(stamp, (_at(23, 1, 50), _at(23, 2, 0)), end)
        db = series["db-01"]
        db["disk_io"][i] += (60 - db["disk_io"][i]) * early * (1 - backup) + (
            96 - db["disk_io"][i]
        ) * backup
        db["cpu"][i] += 12 * backup
        db["response_ms"][i] *= 1 + 10 * backup + 2 * early * (1 - backup)
        db["net_out"][i] += 400 * backup  # the backup stream leaves over the network
        follow = _window(stamp, (_at(23, 2, 0), _at(23, 2, 10)), (_at(23, 3, 30), _at(23, 3, 50)))
        for app in ("app-01", "app-02"):
            series[app]["response_ms"][i] *= 1 + 2.5 * follow


def _round(metric: str, values: list[float]) -> list[float]:
    if metric in {"cpu", "memory", "disk", "disk_io"}:
        return [round(min(100.0, max(0.0, value)), 1) for value in values]
    if metric == "packet_loss":
        return [round(max(0.0, value), 2) for value in values]
    return [round(max(0.0, value), 1) for value in values]


@lru_cache(maxsize=4)
def build_synthetic_fleet(seed: int, end: datetime = SYNTHETIC_END) -> Fleet:
    """The deterministic demo fleet; built once per (seed, end) per process."""
    rng = random.Random(seed)
    step = timedelta(minutes=INTERVAL_MINUTES)
    stamps = [end - step * (SYNTHETIC_POINTS - 1 - i) for i in range(SYNTHETIC_POINTS)]
    series = {
        sid: _SeriesBuilder(rng, stamps, profile).build() for sid, profile in _PROFILES.items()
    }
    for add in (_add_cpu_spike, _add_packet_loss, _add_memory_leak, _add_backup_io):
        add(series, stamps)
    servers = []
    for sid, profile in _PROFILES.items():
        metrics: dict[str, Any] = {m: _round(m, values) for m, values in series[sid].items()}
        metrics["up"] = [value > 0.5 for value in series[sid]["up"]]
        servers.append(
            Server(
                id=sid,
                name=f"{_NAMES[profile.role]} {sid[-2:]}",
                role=profile.role,
                datacenter=profile.datacenter,
                cpu_cores=profile.cores,
                memory_gb=profile.memory_gb,
                metrics=ServerMetrics(**metrics),
            )
        )
    return Fleet(
        source=f"synthetic:{seed}",
        interval_minutes=INTERVAL_MINUTES,
        timestamps=stamps,
        servers=servers,
    )


@dataclass(frozen=True)
class SyntheticFleetSource:
    """The demo fleet OpenManager VIBE runs on (cached per process)."""

    seed: int = 42
    end: datetime = SYNTHETIC_END

    def load(self) -> Fleet:
        return build_synthetic_fleet(self.seed, self.end)


def fleet_source_from_settings(fleet_source: str, seed: int) -> FleetSource:
    """``synthetic``, a JSON file path or an http(s) URL (``AISettings.fleet_source``)."""
    if fleet_source == "synthetic":
        return SyntheticFleetSource(seed=seed)
    return JsonFleetSource(fleet_source)
