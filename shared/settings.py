"""Settings built from the environment, in one place.

``Settings.from_env()`` reads every variable the functions use, converts it, and fails at
once with a ``ConfigError`` that names the missing or malformed variable. The AI work only
needs ``AISettings`` (so ``python -m shared.ai`` runs without Supabase or Cloud Tasks).
Every variable is documented in the README ("Configuration").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from shared.errors import ConfigError

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


class _Env:
    """Typed reads from an environment mapping; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str | None = None) -> str:
        value = self._env.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise ConfigError(f"missing setting {name}", details={"setting": name})
        return default

    def opt(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"setting {name} must be an integer, got {raw!r}", details={"setting": name}
            ) from None
        if value < minimum:
            raise ConfigError(f"setting {name} must be >= {minimum}", details={"setting": name})
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"setting {name} must be a number, got {raw!r}", details={"setting": name}
            ) from None
        if value < minimum:
            raise ConfigError(f"setting {name} must be >= {minimum}", details={"setting": name})
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(
            f"setting {name} must be true or false, got {raw!r}", details={"setting": name}
        )

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise ConfigError(
                f"setting {name} must be one of {', '.join(choices)}, got {value!r}",
                details={"setting": name},
            )
        return value

    def csv(self, name: str, default: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.text(name, default).split(",") if part.strip())


@dataclass(frozen=True)
class AISettings:
    """What the AI work needs: the writer, Gemini, the fleet source and the router."""

    writer: str = "auto"  # auto | gemini | local
    gemini_api_key: str | None = None
    gemini_model: str = DEFAULT_GEMINI_MODEL
    gemini_base_url: str | None = None
    gemini_timeout_s: float = 60.0
    gemini_max_retries: int = 3
    #: Gemini 3 thinking level: prose from computed facts needs little reasoning, and "low"
    #: is the documented choice for latency (https://ai.google.dev/gemini-api/docs/gemini-3);
    #: thinking is billed as output. gemini-3.8-flash rejects "minimal".
    gemini_thinking_level: str = "low"
    #: Caps thinking *and* answer together (thinking tokens count against it).
    gemini_max_output_tokens: int = 8192
    #: "fallback": a model that cannot answer leaves the local narrative; "fail": fail the job.
    gemini_failure_policy: str = "fallback"
    fleet_source: str = "synthetic"  # "synthetic", a JSON file path, or an http(s) URL
    fleet_seed: int = 42
    router_medium_score: float = 3.0
    router_complex_score: float = 6.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AISettings:
        e = _Env(os.environ if env is None else env)
        return cls(
            writer=e.choice("AI_WRITER", "auto", ("auto", "gemini", "local")),
            gemini_api_key=e.opt("GEMINI_API_KEY") or e.opt("GOOGLE_API_KEY"),
            gemini_model=e.text("GEMINI_MODEL", DEFAULT_GEMINI_MODEL),
            gemini_base_url=e.opt("GEMINI_BASE_URL"),
            gemini_timeout_s=e.number("GEMINI_TIMEOUT_S", 60.0, minimum=1.0),
            gemini_max_retries=e.integer("GEMINI_MAX_RETRIES", 3),
            gemini_thinking_level=e.choice(
                "GEMINI_THINKING_LEVEL", "low", ("minimal", "low", "medium", "high")
            ),
            gemini_max_output_tokens=e.integer("GEMINI_MAX_OUTPUT_TOKENS", 8192, minimum=256),
            gemini_failure_policy=e.choice(
                "GEMINI_FAILURE_POLICY", "fallback", ("fallback", "fail")
            ),
            fleet_source=e.text("FLEET_SOURCE", "synthetic"),
            fleet_seed=e.integer("FLEET_SEED", 42),
            router_medium_score=e.number("ROUTER_MEDIUM_SCORE", 3.0),
            router_complex_score=e.number("ROUTER_COMPLEX_SCORE", 6.0),
        )

    @property
    def use_gemini(self) -> bool:
        if self.writer == "local":
            return False
        if self.writer == "gemini" and not self.gemini_api_key:
            raise ConfigError(
                "AI_WRITER=gemini needs GEMINI_API_KEY", details={"setting": "GEMINI_API_KEY"}
            )
        return bool(self.gemini_api_key)


@dataclass(frozen=True)
class Settings:
    """Everything the functions read from the environment."""

    supabase_url: str
    supabase_service_key: str
    project_id: str = "local-project"
    region: str = DEFAULT_REGION
    tasks_location: str = DEFAULT_REGION
    tasks_queue: str = "ai-jobs"
    tasks_emulator_host: str | None = None
    processor_url: str = "http://127.0.0.1:8080/ai-jobs-process"
    tasks_invoker_sa: str | None = None
    processor_secret: str | None = None
    verify_oidc: bool = False
    #: PROCESSOR_TRUST_CALLERS: run the private functions with no caller check of their own
    #: (only when the platform alone guards them); without it they need a secret or OIDC.
    trust_private_callers: bool = False
    #: a job's own retry, when the error carries no hint: min * 2**(attempt-1), capped at max
    retry_min_backoff_s: float = 10.0
    retry_max_backoff_s: float = 300.0
    oidc_audience: str | None = None
    oidc_certs_url: str | None = None
    reaper_url: str = "http://127.0.0.1:8080/ai-jobs-reap"
    dispatch_deadline_s: int = 540
    job_deadline_s: float = 480.0
    lease_seconds: int = 120
    max_attempts: int = 3
    max_jobs_per_minute: int = 30
    max_active_jobs: int = 10
    retention_days: int = 30
    reap_grace_s: int = 600
    enable_job_queue: bool = True
    enable_complexity_routing: bool = True
    allowed_origins: tuple[str, ...] = ("*",)
    user_id_header: str = "X-User-Id"
    allow_anonymous: bool = True
    supabase_jwt_secret: str | None = None
    bff_secret: str | None = None
    max_body_bytes: int = 16_384
    public_base_url: str = ""
    poll_interval_s: int = 3
    ai: AISettings = field(default_factory=AISettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = _Env(os.environ if env is None else env)
        region = e.text("FUNCTION_REGION", DEFAULT_REGION)
        processor_url = e.text("PROCESSOR_URL", "http://127.0.0.1:8080/ai-jobs-process")
        return cls(
            supabase_url=e.text("SUPABASE_URL"),
            supabase_service_key=e.opt("SUPABASE_SERVICE_ROLE_KEY")
            or e.text("SUPABASE_SERVICE_KEY"),
            project_id=e.text("GCP_PROJECT", "local-project"),
            region=region,
            tasks_location=e.text("TASKS_LOCATION", region),
            tasks_queue=e.text("TASKS_QUEUE", "ai-jobs"),
            tasks_emulator_host=e.opt("CLOUD_TASKS_EMULATOR_HOST"),
            processor_url=processor_url,
            tasks_invoker_sa=e.opt("TASKS_INVOKER_SA"),
            processor_secret=e.opt("PROCESSOR_SHARED_SECRET"),
            verify_oidc=e.flag("PROCESSOR_VERIFY_OIDC", False),
            trust_private_callers=e.flag("PROCESSOR_TRUST_CALLERS", False),
            retry_min_backoff_s=e.number("JOB_RETRY_MIN_BACKOFF_S", 10.0),
            retry_max_backoff_s=e.number("JOB_RETRY_MAX_BACKOFF_S", 300.0),
            oidc_audience=e.opt("PROCESSOR_OIDC_AUDIENCE") or processor_url,
            oidc_certs_url=e.opt("OIDC_CERTS_URL"),
            reaper_url=e.text("REAPER_URL", "http://127.0.0.1:8080/ai-jobs-reap"),
            dispatch_deadline_s=e.integer("TASK_DISPATCH_DEADLINE_S", 540, minimum=15),
            job_deadline_s=e.number("JOB_DEADLINE_S", 480.0, minimum=1.0),
            lease_seconds=e.integer("LEASE_SECONDS", 120, minimum=1),
            max_attempts=e.integer("MAX_ATTEMPTS", 3, minimum=1),
            max_jobs_per_minute=e.integer("MAX_JOBS_PER_MINUTE", 30, minimum=1),
            max_active_jobs=e.integer("MAX_ACTIVE_JOBS", 10, minimum=1),
            retention_days=e.integer("RETENTION_DAYS", 30, minimum=1),
            reap_grace_s=e.integer("REAP_GRACE_S", 600),
            enable_job_queue=e.flag("ENABLE_JOB_QUEUE", True),
            enable_complexity_routing=e.flag("ENABLE_COMPLEXITY_ROUTING", True),
            allowed_origins=e.csv("ALLOWED_ORIGINS", "*"),
            user_id_header=e.text("USER_ID_HEADER", "X-User-Id"),
            allow_anonymous=e.flag("ALLOW_ANONYMOUS", True),
            supabase_jwt_secret=e.opt("SUPABASE_JWT_SECRET"),
            bff_secret=e.opt("BFF_SHARED_SECRET"),
            max_body_bytes=e.integer("MAX_BODY_BYTES", 16_384, minimum=256),
            public_base_url=e.text("PUBLIC_BASE_URL", "").rstrip("/"),
            poll_interval_s=e.integer("POLL_INTERVAL_S", 3, minimum=1),
            ai=AISettings.from_env(env),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (functions call this at import: fail fast)."""
    return Settings.from_env()


@dataclass(frozen=True)
class ConsoleSettings:
    """What the web console (``ai-jobs-console``) hands the page: public values only.

    The console needs no service key, so it reads its own few variables rather than
    ``Settings`` (which requires one). An empty ``functions_base_url`` means the page's own
    origin: on ``cloudfunctions.net`` every function of a project shares it.
    """

    functions_base_url: str = ""
    supabase_url: str | None = None
    supabase_anon_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsoleSettings:
        e = _Env(os.environ if env is None else env)
        base = e.text("CONSOLE_FUNCTIONS_URL", e.text("PUBLIC_BASE_URL", "")).rstrip("/")
        url = e.opt("SUPABASE_URL")
        key = e.opt("SUPABASE_ANON_KEY")
        for name, value in (("CONSOLE_FUNCTIONS_URL", base), ("SUPABASE_URL", url)):
            if value and not value.startswith(("http://", "https://")):
                raise ConfigError(
                    f"setting {name} must be an http(s) URL", details={"setting": name}
                )
        if key and not url:
            raise ConfigError(
                "SUPABASE_ANON_KEY needs SUPABASE_URL", details={"setting": "SUPABASE_URL"}
            )
        if key and _jwt_role(key) == "service_role":
            # the page is public: a service key here would hand every visitor the database
            raise ConfigError(
                "SUPABASE_ANON_KEY holds a service_role key; give the console the anon key",
                details={"setting": "SUPABASE_ANON_KEY"},
            )
        return cls(
            functions_base_url=base,
            supabase_url=url.rstrip("/") if url else None,
            supabase_anon_key=key,
        )


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


@lru_cache(maxsize=1)
def get_console_settings() -> ConsoleSettings:
    """The console's settings, read once (its main.py calls this at import: fail fast)."""
    return ConsoleSettings.from_env()
