"""Every Markdown sentence that states an order, a cause or a role is checked against the facts.

Reports (English and Korean), analyses and optimisation answers are rendered for the synthetic
fleet, the held-out fleet (also with reversed ids) and a fleet whose root is undetermined. Each
sentence is run through the checkers below; a sentence with an order, cause or role word that
no checker recognises fails the test, so a new template cannot slip in unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest

from shared.ai import pipeline
from shared.ai.facts import FleetFacts, Incident
from shared.ai.fleet import Fleet, build_synthetic_fleet
from shared.ai.grounding import allowed_numbers, unsupported_numbers
from shared.ai.lang import Language
from shared.ai.results import AIResult
from shared.ai.texts import INCIDENT_KINDS, ROLES, hhmm, t, when
from shared.jobs import JobType
from shared.settings import AISettings
from tests.support import SEED_QUERY

from .fleets import Change, FleetPlan, Given, Spec, build, fleet_of, heldout_raw, reversed_heldout

_ID = r"[\w.-]+"
_TRIGGERS = {
    "en": re.compile(
        r"\b(first|then|before|after|later|earlier|in front of|behind|root cause|accounts? for|"
        r"caused|because|hit by|followed|runner-up|together)\b|→",
        re.IGNORECASE,
    ),
    "ko": re.compile(r"먼저|이어서|앞단|뒷단|근본 원인|설명합니다|영향|동시에|다음 후보|뒤따"),
}


def _tied_fleet() -> Fleet:
    plan = FleetPlan(
        servers=[Spec("web-1", "web"), Spec("app-1", "application"), Spec("app-2", "application")],
        changes=[
            Change("app-1", "cpu", 30.5, 8, level=97.0),
            Change("app-2", "cpu", 30.5, 8, level=97.0),
            Change("web-1", "responseMs", 31.8, 7, 4.5),
        ],
    )
    return fleet_of(build(plan))


FLEETS: dict[str, Callable[[], Fleet]] = {
    "synthetic": lambda: build_synthetic_fleet(42),
    "heldout": lambda: fleet_of(heldout_raw()),
    "heldout-reversed": reversed_heldout,
    "tied": _tied_fleet,
}


class Checker:
    """Checks one rendered answer's sentences against its facts."""

    def __init__(self, facts: FleetFacts, language: Language) -> None:
        self.facts = facts
        self.language = language
        self.roles = {row.server_id: row.role for row in facts.capacity}
        self.incident: Incident | None = None
        self.checked = 0
        role_names = "|".join(re.escape(t(ROLES, r, language)) for r in ROLES)
        self.role_claim = re.compile(rf"({_ID}(?:, {_ID})*) ?\(({role_names})(?:: [^)]*)?\)")
        self.role_of = {t(ROLES, r, language): r for r in ROLES}
        self.kind_of = {t(INCIDENT_KINDS, k, language): k for k in INCIDENT_KINDS}

    # ------------------------------------------------------------------ helpers

    def _inc(self) -> Incident:
        assert self.incident is not None, "a claim about an incident outside its section"
        return self.incident

    def _candidate(self, server: str) -> object:
        return next(c for c in self._inc().root_cause.candidates if c.server_id == server)

    def _ids(self, text: str) -> list[str]:
        return [s for s in re.findall(_ID, text) if s in self.roles]

    # ------------------------------------------------------------------ checkers

    def roles_claimed(self, sentence: str) -> bool:
        found = False
        for ids, role in self.role_claim.findall(sentence):
            for server in ids.split(", "):
                if server in self.roles:
                    assert self.roles[server] == self.role_of[role], (server, role, sentence)
                    found = True
        return found

    def order(self, sentence: str) -> bool:
        m = re.match(
            r"^(?:Order in which signals left their baseline|기준선을 벗어난 순서|"
            r"Left its baseline|기준선 이탈): (.*)\.$",
            sentence,
        )
        if not m:
            return False
        cause = self._inc().root_cause
        sep = ", then " if self.language == "en" else ", 이어서 "
        previous = None
        seen: list[str] = []
        for group in m.group(1).split(sep):
            at = re.search(r"(\d\d:\d\d)$", group)
            assert at, group
            members = [s for s in re.findall(rf"({_ID}) \(", group) if s in self.roles]
            onsets = [c.onset for c in cause.candidates if c.server_id in members]
            assert len(onsets) == len(members), group
            assert all(hhmm(o) == at.group(1) for o in onsets[:1]), (group, onsets)
            assert max(onsets) - min(onsets) < timedelta(minutes=1), group
            if previous is not None:
                assert min(onsets) - previous >= timedelta(minutes=1), ("order", sentence)
            previous = max(onsets)
            seen += members
        assert sorted(seen) == sorted(c.server_id for c in cause.candidates), sentence
        return True

    def cause(self, sentence: str) -> bool:
        m = re.match(
            rf"^({_ID}) ?\(([^)]*)\)(?: is the root cause: |이\(가\) 근본 원인입니다: )(.+)$",
            sentence,
        )
        if not m:
            return False
        cause = self._inc().root_cause
        assert cause.determined and cause.server_id == m.group(1), sentence
        assert self.roles[m.group(1)] == self.role_of[m.group(2)], sentence
        assert m.group(3).rstrip(".") == t(INCIDENT_KINDS, cause.kind, self.language), sentence
        return True

    def first(self, sentence: str) -> bool:
        m = re.match(
            r"^Its (.+) left its baseline first, ([\d.]+) minutes before the next server\.$",
            sentence,
        )
        m = m or re.match(
            r"^(.+)이\(가\) 가장 먼저, 다음 서버보다 ([\d.]+)분 앞서 기준선을 벗어났습니다\.$",
            sentence,
        )
        if not m:
            return False
        cause = self._inc().root_cause
        earliest = min(cause.candidates, key=lambda c: c.onset)
        root = cause.candidates[0]
        assert earliest.server_id == root.server_id or abs(earliest.onset - root.onset) < timedelta(
            minutes=1
        )
        assert float(m.group(2)) == cause.lead_minutes
        return True

    def moved_earlier(self, sentence: str) -> bool:
        m = re.match(
            rf"^({_ID}) moved earlier(?:, but through the topology ({_ID})'s trouble accounts "
            rf"for it|; ({_ID}) ranks first on strength and position)\.$",
            sentence,
        )
        if not m:
            return False
        cause = self._inc().root_cause
        root = cause.candidates[0]
        other = next(c for c in cause.candidates if c.server_id == m.group(1))
        assert other.onset < root.onset and root.server_id == (m.group(2) or m.group(3))
        if m.group(2):
            assert other.server_id in root.explains
        return True

    def undetermined(self, sentence: str) -> bool:
        m = re.match(
            r"^(?:Root cause undetermined: the evidence does not separate|"
            r"근본 원인 미확정: 근거가) (.+?)(?:을\(를\) 구분하지 못합니다)?\.$",
            sentence,
        )
        if not m:
            return False
        cause = self._inc().root_cause
        named = self._ids(m.group(1))
        assert not cause.determined and len(named) >= 2
        assert set(named) <= {c.server_id for c in cause.candidates}
        return True

    def in_front(self, sentence: str) -> bool:
        m = re.match(rf"^(.+) call ({_ID}) directly: they are in front of it\.$", sentence)
        m = m or re.match(rf"^(.+)은\(는\) ({_ID})을\(를\) 직접 호출하는 앞단입니다\.$", sentence)
        if not m:
            return False
        links = {(link.caller, link.callee) for link in self._inc().links}
        for caller in self._ids(m.group(1)):
            assert (caller, m.group(2)) in links, sentence
        return True

    def behind(self, sentence: str) -> bool:
        m = re.match(rf"^({_ID}) calls (.+): they are behind it\.$", sentence)
        m = m or re.match(rf"^({_ID})은\(는\) (.+)을\(를\) 호출합니다\(뒷단\)\.$", sentence)
        if not m:
            return False
        links = {(link.caller, link.callee) for link in self._inc().links}
        for callee in self._ids(m.group(2)):
            assert (m.group(1), callee) in links, sentence
        return True

    def accounts(self, sentence: str) -> bool:
        m = re.match(rf"^Through the topology, ({_ID})'s trouble accounts for (.+)\.$", sentence)
        m = m or re.match(rf"^토폴로지상 ({_ID})의 문제가 (.+)의 이상을 설명합니다\.$", sentence)
        if not m:
            return False
        cause = self._inc().root_cause
        assert cause.determined and cause.server_id == m.group(1)
        assert self._ids(m.group(2)) == cause.candidates[0].explains, sentence
        return True

    def confidence(self, sentence: str) -> bool:
        text = re.sub(r"^(Why this confidence|신뢰도 근거): ", "", sentence)
        cause = self._inc().root_cause if self.incident else None
        if m := re.match(
            rf"^({_ID}) scores ([\d.]+) above the runner-up ({_ID}) \(", text
        ) or re.match(rf"^({_ID})이\(가\) 다음 후보 ({_ID})보다 점수가 ([\d.]+) 높습니다", text):
            assert cause is not None
            root, a, b = m.group(1), m.group(2), m.group(3)
            margin, second = (a, b) if self.language == "en" else (b, a)
            assert cause.candidates[0].server_id == root and cause.candidates[1].server_id == second
            assert float(margin) == cause.margin and cause.determined
            return True
        if m := re.match(rf"^Only ({_ID}) was affected", text) or re.match(
            rf"^영향받은 서버가 ({_ID}) 하나뿐", text
        ):
            assert cause is not None and self._inc().servers == [m.group(1)]
            return True
        if m := re.match(r"^The top candidates' scores differ by only ([\d.]+)", text) or re.match(
            r"^상위 후보 간 점수 차가 ([\d.]+)에 불과", text
        ):
            assert cause is not None and not cause.determined and float(m.group(1)) == cause.margin
            return True
        return False

    def headline(self, sentence: str) -> bool:
        m = re.match(r"^### (\d+)\. \S+ (.*)$", sentence)
        if not m:
            return False
        self.incident = self.facts.incidents[int(m.group(1)) - 1]
        inc, text = self.incident, m.group(2)
        kind = t(INCIDENT_KINDS, inc.kind, self.language)
        others = [s for s in inc.servers if s != inc.root_cause.server_id]
        if "(root cause undetermined)" in text or "(근본 원인 미확정)" in text:
            assert not inc.root_cause.determined
        elif "→" in text:
            assert inc.root_cause.determined
            assert text.startswith(f"{inc.root_cause.server_id} {kind} → ")
            assert set(self._ids(text.split("→")[1])) == set(others)
        else:
            assert inc.root_cause.determined and not others
            assert text.startswith(f"{inc.root_cause.server_id} {kind} (")
        return True

    def fleet_wide(self, sentence: str) -> bool:
        m = re.match(r"^(?:- )?(?:Fleet-wide event|전체 공통 이벤트) (fw-\d+)", sentence)
        if not m:
            return False
        event = next(e for e in self.facts.fleet_wide if e.id == m.group(1))
        if self.language == "en":
            n = re.search(r"(rose|fell) on (\d+) servers", sentence)
            assert n and int(n.group(2)) == len(event.servers)
            assert (n.group(1) == "rose") == (event.direction > 0)
        return True

    def summary_list(self, sentence: str) -> bool:
        """``app-02 CPU spike(12-22 13:30)``: the incidents as the summary lists them, each at
        the time its headline shows (``Incident.onset``)."""
        kinds = "|".join(re.escape(k) for k in self.kind_of)
        claims = re.findall(rf"({_ID}) ({kinds})\((\d\d-\d\d \d\d:\d\d)\)", sentence)
        for root, kind, start in claims:
            assert any(
                i.root_cause.determined
                and i.root_cause.server_id == root
                and i.kind == self.kind_of[kind]
                and when(i.onset) == start
                for i in self.facts.incidents
            ), (root, kind, start)
        return bool(claims)

    def finding(self, sentence: str) -> bool:
        m = re.match(rf"^- \S+ \*\*({_ID})\*\* \([^)]*\): (.*)$", sentence)
        if not m:
            return False
        server, text = m.group(1), m.group(2)
        for root in re.findall(rf"hit by ({_ID})|({_ID}) 장애 영향", text):
            root_id = root[0] or root[1]
            assert any(
                i.root_cause.determined
                and i.root_cause.server_id == root_id
                and server in i.servers
                for i in self.facts.incidents
            ), sentence
        for inc_id in re.findall(r"part of (inc-\d+) \(root cause undetermined\)", text):
            inc = next(i for i in self.facts.incidents if i.id == inc_id)
            assert not inc.root_cause.determined and server in inc.servers
        return True

    def undetermined_action(self, sentence: str) -> bool:
        m = re.search(
            r"(?:root cause undetermined — check each candidate|"
            r"근본 원인 미확정 — 후보를 각각 점검): (.+?):",
            sentence,
        )
        if not m:
            return False
        named = set(m.group(1).split(" / "))
        assert any(
            not i.root_cause.determined and named <= {c.server_id for c in i.root_cause.candidates}
            for i in self.facts.incidents
        ), sentence
        return True

    def affected(self, sentence: str) -> bool:
        m = re.match(r"^\*\*(?:Affected servers|영향받은 서버)\*\*: (.*)$", sentence)
        if not m:
            return False
        assert set(self._ids(m.group(1))) == {s for i in self.facts.incidents for s in i.servers}
        return True

    # ------------------------------------------------------------------ driver

    CHECKS = (
        "affected",
        "headline",
        "order",
        "cause",
        "first",
        "moved_earlier",
        "undetermined",
        "in_front",
        "behind",
        "accounts",
        "confidence",
        "fleet_wide",
        "finding",
        "undetermined_action",
        "summary_list",
    )

    def sentence(self, sentence: str, *, claims_expected: bool) -> None:
        label = re.match(
            r"^\*\*(?:Root cause|근본 원인)\*\* \((?:confidence|신뢰도) (\d+)%\): ", sentence
        )
        if label:
            assert int(label.group(1)) == round(self._inc().root_cause.confidence * 100)
            sentence = sentence[label.end() :]
        matched = [name for name in self.CHECKS if getattr(self, name)(sentence)]
        role = self.roles_claimed(sentence)
        self.checked += bool(matched) + role
        if claims_expected and not matched and _TRIGGERS[self.language].search(sentence):
            # role mentions alone are checked; order and cause words need a checker
            raise AssertionError(f"unchecked order/cause claim: {sentence!r}")

    def timeline(self, rows: list[str]) -> None:
        stamps = [row.split(" | ")[0].strip("| ") for row in rows]
        assert stamps == sorted(stamps), "timeline out of order"


def _sentences(line: str) -> list[str]:
    if line.startswith(("### ", "- ")) and not line.startswith("- **"):
        head = [line] if line.startswith("### ") or re.match(r"^- \S+ \*\*", line) else []
        if head:
            return head
    parts = re.split(r"(?<=\.)\s+(?=[A-Z\w가-힣])", line.lstrip("- ").strip())
    return [p for p in parts if p]


def check_markdown(result: AIResult) -> int:
    checker = Checker(result.facts, result.language)
    section = ""
    rows: list[str] = []
    for line in result.markdown.splitlines():
        if line.startswith("## "):
            section = line
            continue
        if line.startswith("| ") and "---" not in line and line.strip("| "):
            if re.match(r"^\| \d\d-\d\d \d\d:\d\d \|", line):
                rows.append(line)
            continue
        in_actions = any(
            k in section for k in ("recommendations", "actions", "최적화 제안", "권장 조치")
        )
        for sentence in _sentences(line):
            checker.sentence(
                sentence, claims_expected=not in_actions and not line.startswith("  - ")
            )
    checker.timeline(rows)
    return checker.checked


def _answer(fleet: Fleet, job_type: JobType, query: str) -> AIResult:
    return pipeline.run(
        query, job_type, lambda p, m: True, settings=AISettings(writer="local"), fleet=Given(fleet)
    )


@pytest.mark.parametrize("fleet_name", list(FLEETS))
@pytest.mark.parametrize(
    ("job_type", "query"),
    [
        (JobType.REPORT, "Write an incident and optimization report"),
        (JobType.REPORT, SEED_QUERY),
        (JobType.ANALYSIS, "analyse every server"),
        (JobType.OPTIMIZATION, "서버 최적화 제안해줘"),
    ],
)
def test_every_order_cause_and_role_sentence_matches_the_facts(
    fleet_name: str, job_type: JobType, query: str
) -> None:
    result = _answer(FLEETS[fleet_name](), job_type, query)

    checked = check_markdown(result)

    # and every number shown is one of the facts (the grounding check, on every fleet)
    facts_only = allowed_numbers(result.facts.model_dump(mode="json", by_alias=True), query)
    # raw chart samples ("series", where results carry them) are neither facts nor text
    code_items = allowed_numbers(
        result.model_dump(mode="json", exclude={"markdown", "series"}), query
    )
    assert unsupported_numbers(result.markdown, code_items) == []
    built = result.model_dump(mode="json", exclude={"facts", "markdown", "query", "series"})
    assert unsupported_numbers(str(built), facts_only) == []

    if job_type == JobType.REPORT and result.facts.incidents:
        assert checked >= 3 * len(result.facts.incidents)


def test_the_checker_catches_a_wrong_order_a_wrong_cause_and_a_wrong_role() -> None:
    result = _answer(build_synthetic_fleet(42), JobType.REPORT, "incident report")
    text = result.markdown
    wrong = [
        text.replace(
            "db-01 (database) is the root cause", "app-01 (application server) is the root cause"
        ),
        text.replace("db-01 (database: disk I/O) at 01:35", "db-01 (database: disk I/O) at 02:35"),
        text.replace(
            "app-01, app-02 (application server) call db-01", "app-01, app-02 (cache) call db-01"
        ),
        text.replace(
            "accounts for app-01, app-02.",
            "accounts for app-01, app-02. The web servers in front of it slowed down first.",
        ),
    ]
    for markdown in wrong:
        assert markdown != text
        with pytest.raises(AssertionError):
            check_markdown(result.model_copy(update={"markdown": markdown}))
