from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.ai.fleet import (
    SYNTHETIC_POINTS,
    Fleet,
    JsonFleetSource,
    Role,
    SyntheticFleetSource,
    build_synthetic_fleet,
)
from shared.errors import ConfigError


def test_synthetic_fleet_has_the_promised_shape() -> None:
    fleet = SyntheticFleetSource(seed=42).load()

    assert len(fleet.servers) == 15
    assert {s.role for s in fleet.servers} == set(Role)
    assert len({s.datacenter for s in fleet.servers}) == 2
    assert len(fleet.timestamps) == SYNTHETIC_POINTS
    assert (fleet.timestamps[1] - fleet.timestamps[0]).total_seconds() == 600
    assert all(len(s.metrics.cpu) == SYNTHETIC_POINTS for s in fleet.servers)


def test_synthetic_fleet_is_deterministic_per_seed() -> None:
    build_synthetic_fleet.cache_clear()
    first = build_synthetic_fleet(7).model_dump()
    build_synthetic_fleet.cache_clear()
    again = build_synthetic_fleet(7).model_dump()
    other = build_synthetic_fleet(8).model_dump()

    assert first == again
    assert first != other


def test_every_scripted_incident_ends_before_the_data_does() -> None:
    # The report says each incident recovered: the series must say so too (the backup's
    # warning-sign ramp once stayed up forever, so db-01 sat at 60 % disk I/O to the end).
    fleet = SyntheticFleetSource(seed=42).load()
    db = next(s for s in fleet.servers if s.id == "db-01")
    assert db.metrics.disk_io is not None
    last_hour = db.metrics.disk_io[-6:]
    first_hour = db.metrics.disk_io[:6]

    assert max(last_hour) < 30
    assert abs(sum(last_hour) / 6 - sum(first_hour) / 6) < 5


def test_json_source_reads_the_documented_format(tmp_path: Path) -> None:
    fleet = build_synthetic_fleet(42)
    data = fleet.model_dump(mode="json", by_alias=True, exclude={"source"})
    data["servers"][0]["metrics"]["cpu"][3] = None  # a missing sample
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    loaded = JsonFleetSource(str(path)).load()

    assert "diskIo" in data["servers"][0]["metrics"]
    assert loaded.servers[0].metrics.cpu[3] == fleet.servers[0].metrics.cpu[2]
    assert loaded.servers[1].metrics.memory == fleet.servers[1].metrics.memory
    assert loaded.timestamps == fleet.timestamps


def test_json_source_names_what_is_wrong(tmp_path: Path) -> None:
    data = build_synthetic_fleet(42).model_dump(mode="json", by_alias=True)
    data["servers"][0]["metrics"]["cpu"] = [1.0, 2.0]
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    with pytest.raises(ConfigError, match=r"cpu has 2 samples"):
        JsonFleetSource(str(path)).load()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        JsonFleetSource(str(tmp_path / "nope.json")).load()


def test_fleet_rejects_naive_timestamps() -> None:
    data = build_synthetic_fleet(42).model_dump(mode="json", by_alias=True)
    data["timestamps"] = [stamp[:19] for stamp in data["timestamps"]]
    with pytest.raises(ValueError, match="UTC offset"):
        Fleet.model_validate(data)
