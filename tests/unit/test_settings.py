"""The settings module on its own: each setting's bounds and the rules between settings, the
errors naming the variable, ``--check`` with secrets masked, and the README's table as the
code declares it. Nothing is started."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import (
    DEADLINE_MARGIN_S,
    AISettings,
    ConsoleSettings,
    DeploySettings,
    Settings,
    declared,
    main,
    markdown_table,
    readme_with_table,
)
from tests.support import REPO_ROOT

README = REPO_ROOT / "README.md"
REQUIRED = {"SUPABASE_URL": "http://127.0.0.1:54321", "SUPABASE_SERVICE_ROLE_KEY": "sk-1"}


def refusal(cls: type[Settings] | type[DeploySettings], **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        cls.from_env({**REQUIRED, **env})
    return caught.value


def test_the_readme_table_is_the_one_the_settings_declare() -> None:
    readme = README.read_text()

    assert readme_with_table(readme, markdown_table()) == readme, (
        "README's settings table is stale: python -m shared.settings --write-readme README.md"
    )


def test_every_setting_has_its_variable_and_meaning_once() -> None:
    names = [name for cls in (Settings, AISettings, DeploySettings) for _, name, _ in declared(cls)]
    console = {name for _, name, _ in declared(ConsoleSettings)}

    assert len(names) == len(set(names))
    assert console & set(names) == {"SUPABASE_URL"}  # required by the API, optional here
    for cls in (Settings, AISettings, DeploySettings, ConsoleSettings):
        for _, name, info in declared(cls):
            assert info.description, name


def test_defaults_apply_when_unset_or_blank() -> None:
    settings = Settings.from_env({**REQUIRED, "LEASE_SECONDS": "  ", "FUNCTION_REGION": "eu-x"})

    assert settings.lease_seconds == Settings.model_fields["lease_seconds"].default
    assert settings.tasks_location == "eu-x"  # follows the region unless set
    assert settings.oidc_audience == settings.processor_url
    assert settings.allowed_origins == ("*",)


def test_values_are_converted_from_their_variables() -> None:
    settings = Settings.from_env(
        {
            **REQUIRED,
            "ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "ENABLE_JOB_QUEUE": "off",
            "PUBLIC_BASE_URL": "https://x.example/",
            "GOOGLE_API_KEY": "g-1",
            "AI_WRITER": "LOCAL",
            "SUPABASE_SERVICE_ROLE_KEY": "",
            "SUPABASE_SERVICE_KEY": "sk-2",
        }
    )

    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.enable_job_queue is False
    assert settings.public_base_url == "https://x.example"
    assert settings.ai.gemini_api_key == "g-1"
    assert settings.ai.writer == "local"
    assert settings.supabase_service_key == "sk-2"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_ATTEMPTS": "many"}, "MAX_ATTEMPTS"),
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
        ({"TASK_DISPATCH_DEADLINE_S": "10"}, "TASK_DISPATCH_DEADLINE_S"),
        ({"ENABLE_JOB_QUEUE": "perhaps"}, "ENABLE_JOB_QUEUE"),
        ({"GEMINI_FAILURE_POLICY": "ignore"}, "GEMINI_FAILURE_POLICY"),
        ({"JOB_DEADLINE_S": "520"}, "JOB_DEADLINE_S"),
        ({"ROUTER_MEDIUM_SCORE": "7"}, "ROUTER_MEDIUM_SCORE"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(env: dict[str, str], named: str) -> None:
    error = refusal(Settings, **env)

    assert error.details == {"setting": named}
    assert f"setting {named} " in error.message


def test_a_missing_setting_is_named() -> None:
    with pytest.raises(ConfigError, match="missing setting SUPABASE_URL"):
        Settings.from_env({"SUPABASE_SERVICE_ROLE_KEY": "k"})


def test_the_job_deadline_may_reach_the_dispatch_deadline_less_the_margin() -> None:
    edge = 100 - DEADLINE_MARGIN_S
    env = {"TASK_DISPATCH_DEADLINE_S": "100"}

    settings = Settings.from_env({**REQUIRED, **env, "JOB_DEADLINE_S": str(edge)})
    error = refusal(Settings, **env, JOB_DEADLINE_S=str(edge + 0.5))

    assert settings.job_deadline_s == edge
    assert error.details == {"setting": "JOB_DEADLINE_S"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PROCESSOR_TIMEOUT_S": "300"}, "TASK_DISPATCH_DEADLINE_S"),
        ({"QUEUE_MAX_ATTEMPTS": "2"}, "QUEUE_MAX_ATTEMPTS"),
        ({"LEASE_SECONDS": "29"}, "LEASE_SECONDS"),
        ({"PROCESSOR_TIMEOUT_S": "4000"}, "PROCESSOR_TIMEOUT_S"),
        ({"SUPABASE_ANON_KEY": "sb_publishable_x"}, "SUPABASE_JWT_SECRET"),
    ],
)
def test_deploying_adds_the_rules_of_the_platform(env: dict[str, str], named: str) -> None:
    assert Settings.from_env({**REQUIRED, **env})  # the functions alone accept these

    assert refusal(DeploySettings, **env).details == {"setting": named}


def test_the_processor_timeout_defaults_to_the_dispatch_deadline() -> None:
    deploy = DeploySettings.from_env({**REQUIRED, "TASK_DISPATCH_DEADLINE_S": "600"})

    assert deploy.processor_timeout_s == 600
    assert deploy.app.dispatch_deadline_s == 600


def test_building_directly_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_WRITER", "gemini")
    monkeypatch.setenv("GEMINI_API_KEY", "from-the-environment")

    assert AISettings().writer == "auto"
    assert AISettings().gemini_api_key is None
    assert AISettings.from_env().gemini_api_key == "from-the-environment"


def test_check_prints_every_setting_and_masks_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    env = {**REQUIRED, "BFF_SHARED_SECRET": "bff-very-secret", "LEASE_SECONDS": "45"}

    assert main(["--check", "--deploy"], env) == 0

    out = capsys.readouterr().out
    assert "sk-1" not in out
    assert "bff-very-secret" not in out
    lines = {line.split()[0]: line.split(maxsplit=1)[1] for line in out.splitlines()}
    assert lines["BFF_SHARED_SECRET"] == "<set, masked>"
    assert lines["LEASE_SECONDS"] == "45"
    assert lines["MAX_ATTEMPTS"] == "3  (default)"


def test_check_fails_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"], {**REQUIRED, "POLL_INTERVAL_S": "0"}) == 2

    assert "setting POLL_INTERVAL_S " in capsys.readouterr().err


def test_shell_output_quotes_values_and_lists_only_given_non_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {**REQUIRED, "ALLOWED_ORIGINS": "https://a.example,it's"}

    assert main(["--shell"], env) == 0

    out = capsys.readouterr().out
    assert "SETTING_ALLOWED_ORIGINS='https://a.example,it'\"'\"'s'" in out
    assert "SETTINGS_GIVEN='SUPABASE_URL ALLOWED_ORIGINS'" in out
    assert "sk-1" not in out
