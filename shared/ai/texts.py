"""Fixed wording in Korean and English: names of metrics, incident kinds, events, severities.

Kept apart from the logic so both writers and the renderer say things the same way.
"""

from __future__ import annotations

from datetime import datetime

from shared.ai.lang import Language

_T = dict[str, tuple[str, str]]  # key -> (ko, en)

METRIC_NAMES: _T = {
    "cpu": ("CPU", "CPU"),
    "memory": ("메모리", "memory"),
    "disk": ("디스크 사용률", "disk usage"),
    "disk_io": ("디스크 I/O", "disk I/O"),
    "net_in": ("수신 트래픽", "inbound traffic"),
    "net_out": ("송신 트래픽", "outbound traffic"),
    "load": ("부하(load)", "load"),
    "response_ms": ("응답 시간", "response time"),
    "packet_loss": ("패킷 손실", "packet loss"),
    "up": ("가동 상태", "availability"),
}

INCIDENT_KINDS: _T = {
    "cpu_spike": ("CPU 급증", "CPU spike"),
    "cpu_saturation": ("CPU 포화", "CPU saturation"),
    "memory_leak": ("메모리 누수", "memory leak"),
    "memory_pressure": ("메모리 부족", "memory pressure"),
    "disk_io_saturation": ("디스크 I/O 포화", "disk I/O saturation"),
    "disk_space": ("디스크 공간 부족", "disk space running out"),
    "packet_loss": ("패킷 손실", "packet loss"),
    "server_down": ("서버 다운", "server down"),
    "slow_response": ("응답 지연", "slow responses"),
    "high_load": ("높은 부하", "high load"),
    "traffic_anomaly": ("트래픽 이상", "traffic anomaly"),
    "traffic_surge": ("트래픽 급증", "traffic surge"),
    "anomaly": ("이상 징후", "anomaly"),
}

#: Timeline events as the report shows them (``compose._timeline``): a signal leaving its
#: baseline (at its onset), a server down, the recovery. An extreme is worded by its sign
#: (``EXTREMES``), never here.
EVENTS: _T = {
    "left_baseline": ("기준선 이탈", "left its baseline"),
    "recovered": ("정상 회복", "recovered"),
    "down": ("응답 없음(다운)", "stopped answering (down)"),
}

#: Which way a change went, by its sign (+1 rose, -1 fell): the extreme an episode reached and
#: the way a fleet-wide signal moved. Every direction word of an answer comes from these two, so
#: a drop is never called a peak (``signed`` picks by the sign of the change).
EXTREMES: dict[int, tuple[str, str]] = {1: ("최고", "peaked at"), -1: ("최저", "fell to")}
SHIFTS: dict[int, tuple[str, str]] = {1: ("상승", "rose"), -1: ("하락", "fell")}

SEVERITIES: _T = {
    "normal": ("정상", "normal"),
    "warning": ("경고", "warning"),
    "critical": ("위험", "critical"),
    "down": ("다운", "down"),
}

ROLES: _T = {
    "web": ("웹", "web"),
    "application": ("애플리케이션 서버", "application server"),
    "database": ("데이터베이스", "database"),
    "cache": ("캐시", "cache"),
    "storage": ("스토리지", "storage"),
    "load_balancer": ("로드밸런서", "load balancer"),
}

RISKS: _T = {"low": ("낮음", "low"), "medium": ("보통", "medium"), "high": ("높음", "high")}

LABELS: _T = {
    "summary": ("요약", "Summary"),
    "findings": ("서버별 분석", "Findings per server"),
    "evidence": ("근거", "Evidence"),
    "incidents": ("장애 및 이상 징후", "Incidents"),
    "timeline": ("타임라인", "Timeline"),
    "time": ("시각", "Time"),
    "event": ("내용", "Event"),
    "root_cause": ("근본 원인", "Root cause"),
    "confidence": ("신뢰도", "confidence"),
    "why_confidence": ("신뢰도 근거", "Why this confidence"),
    "fleet_wide": ("전체 공통 이벤트", "Fleet-wide events"),
    "affected": ("영향받은 서버", "Affected servers"),
    "actions": ("권장 조치", "Recommended actions"),
    "recommendations": ("최적화 제안", "Optimisation recommendations"),
    "expected_effect": ("기대 효과", "Expected effect"),
    "risk": ("위험도", "Risk"),
    "forecasts": ("예측", "Forecasts"),
    "status": ("현재 상태", "Current status"),
    "window": ("분석 구간", "Window"),
    "none": ("없음", "none"),
    "ongoing": ("진행 중", "ongoing"),
    "facts_note": (
        "수치는 모두 수집된 메트릭에서 코드로 계산한 값입니다.",
        "Every figure is computed in code from the collected metrics.",
    ),
}


def t(table: _T, key: str, language: Language) -> str:
    ko, en = table.get(key, (key, key))
    return ko if language == "ko" else en


def signed(table: dict[int, tuple[str, str]], direction: int, language: Language) -> str:
    """The word of ``table`` for a change of this sign (0 counts as a rise, as the facts do)."""
    ko, en = table[1 if direction >= 0 else -1]
    return ko if language == "ko" else en


def num(value: float) -> str:
    """A number exactly as the facts hold it (no trailing .0)."""
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.0f}"


def when(stamp: datetime) -> str:
    """``MM-DD HH:MM`` in the fleet's own time zone."""
    return stamp.strftime("%m-%d %H:%M")


def hhmm(stamp: datetime) -> str:
    return stamp.strftime("%H:%M")


def value_with_unit(value: float, unit: str) -> str:
    return f"{num(value)}{unit}" if unit in {"%", ""} else f"{num(value)} {unit}"
