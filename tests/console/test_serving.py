"""The console function itself: its page, its settings and its assets (no browser)."""

from __future__ import annotations

import json
import re

import pytest

from shared.ai import analytics
from shared.ai.fleet import SyntheticFleetSource
from shared.console import serve
from shared.errors import ConfigError
from shared.settings import ConsoleSettings
from tests.support import REPO_ROOT, mint

STATIC = REPO_ROOT / "functions" / "ai-jobs-console" / "static"


def _client(settings: ConsoleSettings):  # type: ignore[no-untyped-def]
    import flask

    app = flask.Flask(__name__)

    @app.route("/", defaults={"path": ""}, methods=["GET", "HEAD", "POST"])
    @app.route("/<path:path>", methods=["GET", "HEAD", "POST"])
    def entry(path: str) -> flask.Response:
        return serve(flask.request, STATIC, settings)

    return app.test_client()


def test_the_page_carries_its_settings_and_a_policy_naming_what_it_talks_to() -> None:
    anon = mint("anon")
    settings = ConsoleSettings.from_env(
        {
            "PUBLIC_BASE_URL": "http://127.0.0.1:8080",
            "SUPABASE_URL": "http://127.0.0.1:54321",
            "SUPABASE_ANON_KEY": anon,
        }
    )
    response = _client(settings).get("/")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    island = re.search(r'<script type="application/json" id="console-config">(.*?)</script>', html)
    assert island is not None
    assert json.loads(island.group(1)) == {
        "functionsBaseUrl": "http://127.0.0.1:8080",
        "supabaseUrl": "http://127.0.0.1:54321",
        "supabaseAnonKey": anon,
    }
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce is not None and f'nonce="{nonce.group(1)}"' in html
    assert (
        "connect-src 'self' http://127.0.0.1:8080 http://127.0.0.1:54321 ws://127.0.0.1:54321"
        in (policy)
    )


def test_assets_revalidate_with_their_etag_and_nothing_outside_is_served() -> None:
    client = _client(ConsoleSettings())
    first = client.get("/app.js")
    assert first.status_code == 200
    assert first.headers["Content-Type"].startswith("text/javascript")
    again = client.get("/app.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert client.get("/../main.py").status_code == 404
    assert client.get("/nope.js").get_json()["error"]["code"] == "not_found"
    assert client.post("/").status_code == 405


@pytest.mark.parametrize("key", [mint("service_role"), "sb_secret_0123456789abcdef"])
def test_a_secret_key_is_refused_for_the_public_page(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ConsoleSettings.from_env(
            {"SUPABASE_URL": "http://127.0.0.1:54321", "SUPABASE_ANON_KEY": key}
        )
    assert caught.value.details == {"setting": "SUPABASE_ANON_KEY"}


def test_an_anon_key_without_its_supabase_url_names_the_missing_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        ConsoleSettings.from_env({"SUPABASE_ANON_KEY": "sb_publishable_x"})
    assert caught.value.details == {"setting": "SUPABASE_URL"}


def test_every_incident_and_trend_has_a_chart_series_around_its_window() -> None:
    fleet = SyntheticFleetSource(seed=42).load()
    facts = analytics.analyse(fleet)

    series = {s.id: s for s in analytics.chart_series(fleet, facts)}

    for incident in facts.incidents:
        chart = series[incident.id]
        assert (chart.server_id, chart.metric) == (
            incident.root_cause.server_id,
            incident.root_cause.metric,
        )
        assert chart.highlight_start is not None and chart.start < chart.highlight_start
        assert chart.baseline is not None and chart.threshold is not None
        assert max(v for v in chart.values if v is not None) >= chart.threshold
    for trend in facts.trends:
        chart = series[f"trend-{trend.server_id}-{trend.metric}"]
        assert chart.start == trend.since
        assert chart.slope_per_hour == trend.slope_per_hour
        assert chart.threshold == trend.warning
