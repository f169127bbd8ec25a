"""Settings built from the environment: each one declared once, here.

A setting is one field: its environment variable, default, bounds and meaning are written in
one ``setting(...)`` call, and the rules that tie settings together (the job's deadline inside
the dispatch deadline, the queue's attempts against the job's) are checked in one validator
per class. Everything else reads from here: ``Settings.from_env()`` for the functions (a bad
value fails the cold start with a ``ConfigError`` naming the variable), ``deploy.sh`` through
``python -m shared.settings --check --deploy``, and the README's table, which is
``python -m shared.settings --markdown`` (a test keeps the two equal).

The AI work only needs ``AISettings`` (so ``python -m shared.ai`` runs without Supabase or
Cloud Tasks). Building a class directly (``AISettings(writer="local")``) takes the keywords
and the defaults only; only ``from_env`` reads an environment.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.errors import ConfigError
from shared.functions import PROCESS, REAP

DEFAULT_REGION = "asia-northeast1"
#: The current GA Flash model (stable since 2026-09-02; gemini-2.5-flash is shut down and
#: gemini-3.7-flash is deprecated): https://ai.google.dev/gemini-api/docs/models and
#: https://ai.google.dev/gemini-api/docs/deprecations
DEFAULT_GEMINI_MODEL = "gemini-3.8-flash"
#: Pinned, not the SDK's default (google-genai 3.x sends ``v1``): ``systemInstruction``,
#: ``responseJsonSchema`` and ``thinkingConfig`` are fields of the ``v1beta`` generateContent
#: request only (https://ai.google.dev/gemini-api/docs/api-versions; the ``v1`` protos of
#: google/ai/generativelanguage lack them). The fake Gemini answers only this version.
GEMINI_API_VERSION = "v1beta"
#: The pipeline ends this long before the dispatch deadline, so failing the job cleanly (one
#: store call) fits in before Cloud Tasks gives up on the request.
DEADLINE_MARGIN_S = 30.0
#: The longest local pause after one progress step (``LOCAL_STEP_DELAY_MS``): enough to watch
#: a step, small beside any deadline.
MAX_STEP_DELAY_MS = 5000

_SAME_AS = "same_as"
_SECRET = "secret"


def setting(
    env: str | tuple[str, ...],
    default: Any = ...,
    doc: str = "",
    *,
    same_as: str | None = None,
    secret: bool = False,
    **bounds: Any,
) -> Any:
    """One setting: its variable (the first name; any others are accepted too), its default
    (``...``: required; ``same_as``: another field's value), its bounds and its meaning."""
    names = (env,) if isinstance(env, str) else env
    alias = AliasChoices(*names) if len(names) > 1 else names[0]
    extra: JsonDict = {_SAME_AS: same_as, _SECRET: secret}
    if same_as is not None:
        return Field(
            default_factory=lambda data: _follow(data, same_as),
            validation_alias=alias,
            description=doc,
            json_schema_extra=extra,
            **bounds,
        )
    return Field(
        default, validation_alias=alias, description=doc, json_schema_extra=extra, **bounds
    )


class _Environment(EnvSettingsSource):
    """The environment a class is read from: ``os.environ`` or the mapping a test passes.
    A blank value counts as unset, as it always has here."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value.strip() for name, value in self._given.items() if value.strip()}


def _follow(data: Mapping[str, Any], path: str) -> Any:
    """The value at ``field`` or ``field.attribute`` of the fields validated so far."""
    head, _, rest = path.partition(".")
    value = data[head]
    return getattr(value, rest) if rest else value


def _refuse(name: str, message: str) -> ConfigError:
    return ConfigError(f"setting {name} {message}", details={"setting": name})


def _require(holds: bool, name: str, message: str) -> None:
    """A rule between settings: when it does not hold, refuse, naming the variable to fix."""
    if not holds:
        raise _refuse(name, message)


def _config_error(exc: ValidationError) -> ConfigError:
    """The first problem of a validation, naming its variable (never echoing a secret)."""
    first = exc.errors(include_url=False)[0]
    name = str(first["loc"][0]) if first["loc"] else "?"
    if first["type"] == "missing":
        return ConfigError(f"missing setting {name}", details={"setting": name})
    given = first.get("input")
    shown = f", got {given!r}" if isinstance(given, str | int | float) else ""
    return _refuse(name, f"is not valid: {first['msg'][0].lower()}{first['msg'][1:]}{shown}")


class _Declared(BaseSettings):
    """Base of the setting classes: frozen, read only through ``from_env``."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        str_strip_whitespace=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keywords only: from_env names the environment it reads, so a test's dict and the
        # process's environment never mix.
        return (init_settings,)

    @classmethod
    def _read(cls, env: Mapping[str, str] | None, **extra: Any) -> Self:
        values = _Environment(cls, os.environ if env is None else env)()
        try:
            return cls.model_validate({**values, **extra})
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        return cls._read(env)


def _lowercase(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class AISettings(_Declared):
    """What the AI work needs: the writer, Gemini, the fleet source and the router."""

    writer: Literal["auto", "gemini", "local"] = setting(
        "AI_WRITER", "auto", "`auto` (Gemini when a key is set), `gemini`, or `local`"
    )
    gemini_api_key: str | None = setting(
        ("GEMINI_API_KEY", "GOOGLE_API_KEY"), None, "Gemini key (also `GOOGLE_API_KEY`)",
        secret=True,
    )  # fmt: skip
    gemini_model: str = setting(
        "GEMINI_MODEL",
        DEFAULT_GEMINI_MODEL,
        "model (the current GA Flash; requests go to the pinned API version "
        f"`{GEMINI_API_VERSION}`, without `temperature`, as Gemini 3 asks)",
    )
    gemini_base_url: str | None = setting(
        "GEMINI_BASE_URL", None, "another endpoint (tests use a fake on loopback)"
    )
    gemini_timeout_s: float = setting(
        "GEMINI_TIMEOUT_S",
        60.0,
        "per-request timeout (also bounded by the job's deadline)",
        ge=1.0,
    )
    gemini_max_retries: int = setting(
        "GEMINI_MAX_RETRIES",
        3,
        "in-call retries of 5xx and per-minute 429s (honouring the server's retry hint). A "
        "daily or zero quota is not waited for: the job's next attempt is scheduled at the "
        "server's hint",
        ge=0,
    )
    #: Gemini 3 thinking level: prose from computed facts needs little reasoning, and "low"
    #: is the documented choice for latency (https://ai.google.dev/gemini-api/docs/gemini-3);
    #: thinking is billed as output. gemini-3.8-flash rejects "minimal".
    gemini_thinking_level: Literal["minimal", "low", "medium", "high"] = setting(
        "GEMINI_THINKING_LEVEL",
        "low",
        "`low`, `medium`, `high` (`minimal` for models that take it; Gemini 2.x models get the "
        "matching `thinkingBudget`)",
    )
    gemini_max_output_tokens: int = setting(
        "GEMINI_MAX_OUTPUT_TOKENS",
        8192,
        "cap on thinking plus answer (thinking counts against it and is billed as output)",
        ge=256,
    )
    gemini_failure_policy: Literal["fallback", "fail"] = setting(
        "GEMINI_FAILURE_POLICY",
        "fallback",
        "`fallback`: when the model cannot answer (refused, cut off at the token cap, model "
        "gone, zero quota) the job completes with the local narrative and `result.writerInfo` "
        "says why; `fail`: the job fails instead. A rejected request (bad key, 400/401/403) "
        "always fails",
    )
    fleet_source: str = setting(
        "FLEET_SOURCE",
        "synthetic",
        "`synthetic`, a JSON file path, or an http(s) URL (format below)",
    )
    fleet_seed: int = setting("FLEET_SEED", 42, "seed of the synthetic fleet", ge=0)
    router_medium_score: float = setting(
        "ROUTER_MEDIUM_SCORE", 3.0, "router score from which a query is medium", ge=0.0
    )
    router_complex_score: float = setting(
        "ROUTER_COMPLEX_SCORE", 6.0, "router score from which a query is complex", ge=0.0
    )
    local_step_delay_ms: int = setting(
        "LOCAL_STEP_DELAY_MS",
        0,
        "local demos only: a pause after each progress step so a person can watch a job move "
        "(`make demo` and `make stack` set 1500); `0` adds no wait and is the only value "
        "`deploy.sh` accepts",
        ge=0,
        le=MAX_STEP_DELAY_MS,
    )

    _lower_choices = field_validator(
        "writer", "gemini_thinking_level", "gemini_failure_policy", mode="before"
    )(_lowercase)

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> Self:
        _require(
            self.router_medium_score <= self.router_complex_score,
            "ROUTER_MEDIUM_SCORE",
            f"({self.router_medium_score}) must be <= ROUTER_COMPLEX_SCORE "
            f"({self.router_complex_score})",
        )
        return self

    @property
    def use_gemini(self) -> bool:
        if self.writer == "local":
            return False
        if self.writer == "gemini" and not self.gemini_api_key:
            raise ConfigError(
                "AI_WRITER=gemini needs GEMINI_API_KEY", details={"setting": "GEMINI_API_KEY"}
            )
        return bool(self.gemini_api_key)


class Settings(_Declared):
    """Everything the functions read from the environment."""

    supabase_url: str = setting(
        "SUPABASE_URL", ..., "Supabase project URL (locally `http://127.0.0.1:54321`)"
    )
    supabase_service_key: str = setting(
        ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_KEY"),
        ...,
        "service-role key (also accepted as `SUPABASE_SERVICE_KEY`)",
        secret=True,
    )
    project_id: str = setting("GCP_PROJECT", "local-project", "project of the Cloud Tasks queue")
    region: str = setting("FUNCTION_REGION", DEFAULT_REGION, "region of the functions")
    tasks_location: str = setting(
        "TASKS_LOCATION", doc="location of the Cloud Tasks queue", same_as="region"
    )
    tasks_queue: str = setting(
        "TASKS_QUEUE", "ai-jobs", "the queue (one queue; priority is stored on the job)"
    )
    tasks_emulator_host: str | None = setting(
        "CLOUD_TASKS_EMULATOR_HOST", None, "`host:port` of the local emulator (insecure gRPC)"
    )
    processor_url: str = setting(
        "PROCESSOR_URL",
        PROCESS.url("http://127.0.0.1:8080"),
        "the processor's URL, target of every task",
    )
    tasks_invoker_sa: str | None = setting(
        "TASKS_INVOKER_SA",
        None,
        "service account in the tasks' OIDC token (and the one the processor accepts)",
    )
    processor_secret: str | None = setting(
        "PROCESSOR_SHARED_SECRET",
        None,
        "secret header each task carries; required by the private functions when set",
        secret=True,
    )
    verify_oidc: bool = setting(
        "PROCESSOR_VERIFY_OIDC", False, "verify the OIDC token on the private functions"
    )
    trust_private_callers: bool = setting(
        "PROCESSOR_TRUST_CALLERS",
        False,
        "`true`: the private functions run without a secret or OIDC check of their own (only "
        "where IAM alone guards them); otherwise one of the two is required at start",
    )
    retry_min_backoff_s: float = setting(
        "JOB_RETRY_MIN_BACKOFF_S",
        10.0,
        "delay of a job's first own retry when the error carries no hint (doubling per "
        "attempt, as the queue's backoff)",
        ge=0.0,
    )
    retry_max_backoff_s: float = setting(
        "JOB_RETRY_MAX_BACKOFF_S", 300.0, "cap on the delay of a job's own retry", ge=0.0
    )
    oidc_audience: str | None = setting(
        "PROCESSOR_OIDC_AUDIENCE", doc="audience of the tasks' OIDC token", same_as="processor_url"
    )
    oidc_certs_url: str | None = setting(
        "OIDC_CERTS_URL",
        None,
        "certificates for OIDC verification (unset: Google's; the emulator serves its own)",
    )
    reaper_url: str = setting(
        "REAPER_URL",
        REAP.url("http://127.0.0.1:8080"),
        "the reaper's URL (OIDC audience for Cloud Scheduler)",
    )
    # Cloud Tasks accepts an HTTP task's dispatch deadline between 15 s and 30 min
    # (https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks).
    dispatch_deadline_s: int = setting(
        "TASK_DISPATCH_DEADLINE_S",
        540,
        "the task's dispatch deadline (deploy.sh gives the processor this timeout)",
        ge=15,
        le=1800,
    )
    job_deadline_s: float = setting(
        "JOB_DEADLINE_S",
        480.0,
        f"the pipeline's own deadline, at most the dispatch deadline less {DEADLINE_MARGIN_S:g} s",
        ge=1.0,
    )
    lease_seconds: int = setting(
        "LEASE_SECONDS",
        120,
        "a worker's lease; a live worker renews it every third of it (heartbeat) and at each "
        "progress write, so a dead one is recovered soon after",
        ge=1,
    )
    max_attempts: int = setting("MAX_ATTEMPTS", 3, "attempts per job before it fails", ge=1)
    max_jobs_per_minute: int = setting(
        "MAX_JOBS_PER_MINUTE", 30, "per-user cap on new jobs per minute (429)", ge=1
    )
    max_active_jobs: int = setting(
        "MAX_ACTIVE_JOBS", 10, "per-user cap on unfinished jobs (429)", ge=1
    )
    retention_days: int = setting(
        "RETENTION_DAYS", 30, "finished jobs older than this are purged by the reaper", ge=1
    )
    reap_grace_s: int = setting(
        "REAP_GRACE_S",
        600,
        "a queued job whose task is this old past its schedule (or was never created, or "
        "failed to enqueue) is checked by the reaper, and dispatched again only if the task "
        "is gone",
        ge=0,
    )
    enable_job_queue: bool = setting(
        "ENABLE_JOB_QUEUE", True, "`false`: the seed's rollback — answer every query in the request"
    )
    enable_complexity_routing: bool = setting(
        "ENABLE_COMPLEXITY_ROUTING", True, "`false`: every query becomes a job"
    )
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = setting(
        "ALLOWED_ORIGINS", ("*",), "CORS origins, comma-separated"
    )
    user_id_header: str = setting(
        "USER_ID_HEADER", "X-User-Id", "header naming the user (from a trusted BFF)"
    )
    allow_anonymous: bool = setting(
        "ALLOW_ANONYMOUS", True, "callers without identity act as `anonymous`"
    )
    supabase_jwt_secret: str | None = setting(
        "SUPABASE_JWT_SECRET",
        None,
        "verify `Authorization: Bearer` Supabase JWTs signed HS256 (the legacy secret); `sub` "
        "is the user",
        secret=True,
    )
    supabase_jwt_jwks: bool = setting(
        "SUPABASE_JWT_JWKS",
        False,
        "verify ES256/RS256 Supabase JWTs with the project's signing keys "
        "(`<SUPABASE_URL>/auth/v1/.well-known/jwks.json`)",
    )
    supabase_jwks_ttl_s: int = setting(
        "SUPABASE_JWKS_TTL_S",
        600,
        "how long the signing keys are cached (Supabase Auth serves them `max-age=600`); an "
        "unknown key id refetches them at most every 30 s",
        ge=1,
    )
    bff_secret: str | None = setting(
        "BFF_SHARED_SECRET",
        None,
        "the secret a trusted BFF sends in `X-BFF-Secret` to name the user with `X-User-Id`",
        secret=True,
    )
    max_body_bytes: int = setting("MAX_BODY_BYTES", 16_384, "larger bodies get 413", ge=256)
    public_base_url: str = setting(
        "PUBLIC_BASE_URL", "", "base of `pollUrl` / `Location` (empty: a relative `pollUrl`)"
    )
    poll_interval_s: int = setting("POLL_INTERVAL_S", 3, "suggested poll interval", ge=1)
    ai: AISettings = Field(default_factory=AISettings)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff_in_order(self) -> Self:
        _require(
            self.retry_min_backoff_s <= self.retry_max_backoff_s,
            "JOB_RETRY_MIN_BACKOFF_S",
            f"({self.retry_min_backoff_s:g}) must be <= JOB_RETRY_MAX_BACKOFF_S "
            f"({self.retry_max_backoff_s:g})",
        )
        return self

    @model_validator(mode="after")
    def _deadlines_nest(self) -> Self:
        # The pipeline must end (and fail the job cleanly) before Cloud Tasks gives up on the
        # request, or the task is retried while the job still looks alive.
        _require(
            self.job_deadline_s + DEADLINE_MARGIN_S <= self.dispatch_deadline_s,
            "JOB_DEADLINE_S",
            f"({self.job_deadline_s:g}) must be at most TASK_DISPATCH_DEADLINE_S "
            f"({self.dispatch_deadline_s}) less {DEADLINE_MARGIN_S:g} s",
        )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        return cls._read(env, ai=AISettings.from_env(env))


def _http_url(name: str, value: str | None) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        raise _refuse(name, "must be an http(s) URL")
    return value.rstrip("/") if value else value


def _jwt_role(token: str) -> str | None:
    """The ``role`` claim of a JWT, read without verifying it (None if not a JWT)."""
    import base64
    import binascii
    import json

    parts = token.split(".")
    if len(parts) != 3:  # header.payload.signature
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


class ConsoleSettings(_Declared):
    """What the web console (``ai-jobs-console``) hands the page: public values only.

    The console needs no service key, so it reads its own few variables rather than
    ``Settings`` (which requires one): ``SUPABASE_URL`` is optional here. An empty
    ``functions_base_url`` means the page's own origin: on ``cloudfunctions.net`` every
    function of a project shares it.
    """

    functions_base_url: str = setting(
        ("CONSOLE_FUNCTIONS_URL", "PUBLIC_BASE_URL"),
        "",
        "where the console's page calls the functions (else `PUBLIC_BASE_URL`, else the page's "
        "own origin)",
    )
    supabase_url: str | None = setting(
        "SUPABASE_URL", None, "the console's Supabase (unset: polling only)"
    )
    supabase_anon_key: str | None = setting(
        "SUPABASE_ANON_KEY",
        None,
        "the public anon key (unset: polling only); a `service_role` key is refused at start",
    )

    @field_validator("functions_base_url")
    @classmethod
    def _functions_url(cls, value: str) -> str:
        return _http_url("CONSOLE_FUNCTIONS_URL", value) or ""

    @field_validator("supabase_url")
    @classmethod
    def _supabase_url(cls, value: str | None) -> str | None:
        return _http_url("SUPABASE_URL", value)

    @model_validator(mode="after")
    def _public_key_only(self) -> Self:
        if self.supabase_anon_key and not self.supabase_url:
            raise ConfigError(
                "SUPABASE_ANON_KEY needs SUPABASE_URL", details={"setting": "SUPABASE_URL"}
            )
        key = self.supabase_anon_key
        if key and (_jwt_role(key) == "service_role" or key.startswith("sb_secret_")):
            # the page is public: a secret key here would hand every visitor the database
            # (Supabase's new-style secret keys start sb_secret_, publishable ones sb_publishable_)
            raise _refuse(
                "SUPABASE_ANON_KEY", "holds a secret key; give the console the anon/publishable key"
            )
        return self


class DeploySettings(_Declared):
    """What ``deploy.sh`` decides beside the functions' own settings, checked against them."""

    app: Settings
    console: ConsoleSettings
    processor_timeout_s: int = setting(
        "PROCESSOR_TIMEOUT_S",
        doc="the processor's timeout (Cloud Functions gen2 HTTP functions: at most 3600 s)",
        same_as="app.dispatch_deadline_s",
        ge=1,
        le=3600,
    )
    queue_max_attempts: int = setting(
        "QUEUE_MAX_ATTEMPTS", 5, "deliveries of one task before Cloud Tasks drops it", ge=1
    )

    @model_validator(mode="after")
    def _fits_the_functions(self) -> Self:
        from shared.store import CLIENT_TIMEOUT_S

        app = self.app
        _require(
            app.dispatch_deadline_s <= self.processor_timeout_s,
            "TASK_DISPATCH_DEADLINE_S",
            f"({app.dispatch_deadline_s}) must be at most PROCESSOR_TIMEOUT_S "
            f"({self.processor_timeout_s}): the platform would end the request first",
        )
        # The job's own attempt counter decides when a job has failed for good (it answers
        # 2xx then); the queue must allow at least that many deliveries.
        _require(
            self.queue_max_attempts >= app.max_attempts,
            "QUEUE_MAX_ATTEMPTS",
            f"({self.queue_max_attempts}) must be >= MAX_ATTEMPTS ({app.max_attempts})",
        )
        # The console signs visitors in and sends their tokens: an API that cannot verify
        # them would refuse every signed-in visitor (401, reason "unverifiable").
        _require(
            not self.console.supabase_anon_key
            or bool(app.supabase_jwt_secret or app.supabase_jwt_jwks),
            "SUPABASE_JWT_SECRET",
            "(or SUPABASE_JWT_JWKS=true) is needed when the console gets SUPABASE_ANON_KEY: the "
            "functions must verify the visitors' tokens",
        )
        _require(
            app.ai.local_step_delay_ms == 0,
            "LOCAL_STEP_DELAY_MS",
            f"({app.ai.local_step_delay_ms}) must be 0 when deployed: it only paces local demos",
        )
        # A renewal runs every third of the lease and may take a whole store call: the lease
        # must outlast both, or a slow database hands a live job to a second worker.
        floor = math.ceil(CLIENT_TIMEOUT_S * 3 / 2)
        _require(
            app.lease_seconds >= floor,
            "LEASE_SECONDS",
            f"({app.lease_seconds}) must be >= {floor} when deployed (renewed every third "
            f"of it, each renewal may take {CLIENT_TIMEOUT_S:g} s)",
        )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        return cls._read(env, app=Settings.from_env(env), console=ConsoleSettings.from_env(env))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (functions call this at import: fail fast)."""
    return Settings.from_env()


@lru_cache(maxsize=1)
def get_console_settings() -> ConsoleSettings:
    """The console's settings, read once (its main.py calls this at import: fail fast)."""
    return ConsoleSettings.from_env()


# --- the one description, as text ----------------------------------------------------------

SettingsClass = type[_Declared]
_DOCUMENTED: tuple[SettingsClass, ...] = (Settings, AISettings)
#: The settings objects held by another (``DeploySettings.app``, ``Settings.ai``).
_NESTED: dict[str, SettingsClass] = {"app": Settings, "ai": AISettings, "console": ConsoleSettings}
README_BEGIN = "<!-- settings table: generated by `python -m shared.settings --markdown` -->"
README_END = "<!-- end of settings table -->"


def env_names(info: FieldInfo) -> tuple[str, ...]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (str(alias),) if alias else ()


def _extra(info: FieldInfo, key: str) -> Any:
    extra = info.json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None


def declared(cls: SettingsClass) -> Iterator[tuple[str, str, FieldInfo]]:
    """(field name, variable, field) of every setting a class reads from the environment."""
    for field_name, info in cls.model_fields.items():
        names = env_names(info)
        if names:
            yield field_name, names[0], info


def _variable_at(cls: SettingsClass, path: str) -> str:
    head, _, rest = path.partition(".")
    if rest:
        return _variable_at(_NESTED[head], rest)
    return env_names(cls.model_fields[head])[0]


def default_text(cls: SettingsClass, info: FieldInfo) -> str:
    same_as = _extra(info, _SAME_AS)
    if same_as is not None:
        return f"`{_variable_at(cls, same_as)}`"
    if info.is_required():
        return "**required**"
    default = info.default
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple):
        return f"`{','.join(default)}`"
    if default == "":
        return "empty"
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for key, symbol in (("ge", "≥"), ("le", "≤")):
            value = getattr(item, key, None)
            if value is not None:
                parts.append(f"{symbol} {value:g}")
    return f" ({', '.join(parts)})" if parts else ""


def markdown_table(classes: tuple[SettingsClass, ...] = _DOCUMENTED) -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    shown: set[str] = set()
    for cls in classes:
        for _, name, info in declared(cls):
            if name in shown:
                continue
            shown.add(name)
            meaning = f"{info.description}{_bounds(info)}".replace("|", "\\|")
            rows.append(f"| `{name}` | {default_text(cls, info)} | {meaning} |")
    return "\n".join(rows)


def readme_with_table(readme: str, table: str) -> str:
    """The README with its settings table replaced by ``table`` (between the markers)."""
    pattern = re.compile(re.escape(README_BEGIN) + r"\n.*?\n" + re.escape(README_END), re.S)
    if not pattern.search(readme):
        raise ConfigError("the README has no settings table markers")
    return pattern.sub(lambda _: f"{README_BEGIN}\n{table}\n{README_END}", readme)


def _shown(value: object, secret: bool) -> str:
    if secret:
        return "<set, masked>" if value else "<unset>"
    if value is None:
        return "<unset>"
    return _text(value)


def _text(value: object) -> str:
    """A value as its variable would spell it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


Row = tuple[str, object, bool, bool]


def resolved(instance: _Declared, env: Mapping[str, str]) -> Iterator[Row]:
    """(variable, value, secret, given in ``env``) of every setting of an instance and of the
    settings objects it holds."""
    for field_name, name, info in declared(type(instance)):
        secret = bool(_extra(info, _SECRET))
        given = any(env.get(alias, "").strip() for alias in env_names(info))
        yield name, getattr(instance, field_name), secret, given
    for _, value in instance:
        if isinstance(value, _Declared):
            yield from resolved(value, env)


def unique(rows: Iterable[Row]) -> list[Row]:
    """One row per variable, from the first class declaring it (the console reads
    ``SUPABASE_URL`` too, as an optional setting)."""
    first: dict[str, Row] = {}
    for row in rows:
        first.setdefault(row[0], row)
    return list(first.values())


def _shell(rows: list[Row]) -> str:
    """Assignments deploy.sh evaluates: ``SETTING_<variable>`` for every non-secret value, and
    SETTINGS_GIVEN, the non-secret settings the environment sets (deploy.sh writes those into
    the functions' environment; the rest keep the defaults declared here)."""
    lines = [
        f"SETTING_{name}={shlex.quote(_text(value))}"
        for name, value, secret, _ in rows
        if not secret
    ]
    given = " ".join(name for name, _, secret, was_given in rows if was_given and not secret)
    lines.append(f"SETTINGS_GIVEN={shlex.quote(given)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.settings", description="Check or describe the settings."
    )
    parser.add_argument("--check", action="store_true", help="validate; print the settings")
    parser.add_argument("--deploy", action="store_true", help="also deploy.sh's own settings")
    parser.add_argument("--shell", action="store_true", help="print shell assignments instead")
    parser.add_argument("--markdown", action="store_true", help="print the README's table")
    parser.add_argument("--write-readme", metavar="PATH", help="rewrite the README's table")
    args = parser.parse_args(argv)
    environment = os.environ if env is None else env
    if args.markdown:
        print(
            markdown_table((DeploySettings, *_DOCUMENTED, ConsoleSettings))
            if args.deploy
            else markdown_table()
        )
    if args.write_readme:
        path = Path(args.write_readme)
        path.write_text(readme_with_table(path.read_text(), markdown_table()))
    if not (args.check or args.shell):
        return 0
    builder: Callable[[Mapping[str, str]], _Declared] = (
        DeploySettings.from_env if args.deploy else Settings.from_env
    )
    try:
        rows = unique(resolved(builder(environment), environment))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.shell:
        print(_shell(rows))
    else:
        width = max(len(name) for name, *_ in rows)
        for name, value, secret, given in rows:
            print(f"{name:<{width}}  {_shown(value, secret)}{'' if given else '  (default)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
