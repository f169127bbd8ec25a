"""Serving the web console: its page with the settings injected, and its built assets.

The assets are built from ``console/`` (npm packages, esbuild) into
``functions/ai-jobs-console/static/`` and committed, so the deployed function needs no Node
and the page needs no CDN. ``/`` answers ``index.html`` with the public configuration as a
JSON island and a fresh CSP nonce for its one inline loader; any other path is a file of the
static folder (ETag and revalidation, so a new deploy is picked up at once). Everything the
page talks to is named in its Content-Security-Policy.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import flask

from shared import errors
from shared.http import error_response
from shared.settings import ConsoleSettings

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".map": "application/json",
}
CONFIG_PLACEHOLDER = "<!--CONSOLE_CONFIG-->"
NONCE_PLACEHOLDER = "__CSP_NONCE__"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@lru_cache(maxsize=64)
def _asset(path: Path) -> Asset:
    body = path.read_bytes()
    content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    return Asset(
        body=body,
        content_type=content_type or "application/octet-stream",
        etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
    )


def page_config(settings: ConsoleSettings) -> dict[str, str | None]:
    """What the page reads from its JSON island (camelCase, public values only)."""
    return {
        "functionsBaseUrl": settings.functions_base_url,
        "supabaseUrl": settings.supabase_url,
        "supabaseAnonKey": settings.supabase_anon_key,
    }


def content_security_policy(settings: ConsoleSettings, nonce: str) -> str:
    connect = ["'self'"]
    if settings.functions_base_url:
        connect.append(settings.functions_base_url)
    if settings.supabase_url:
        ws = "ws" + settings.supabase_url.removeprefix("http")  # http→ws, https→wss
        connect += [settings.supabase_url, ws]
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' 'nonce-{nonce}'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {' '.join(connect)}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ]
    )


def _index(static_dir: Path, settings: ConsoleSettings) -> flask.Response:
    nonce = secrets.token_urlsafe(16)
    # "</" cannot end the JSON island early: escape it as JSON allows
    config = json.dumps(page_config(settings), ensure_ascii=False).replace("</", "<\\/")
    island = f'<script type="application/json" id="console-config">{config}</script>'
    html = _asset(static_dir / "index.html").body.decode()
    html = html.replace(CONFIG_PLACEHOLDER, island).replace(NONCE_PLACEHOLDER, nonce)
    response = flask.Response(html, status=200, mimetype="text/html")
    response.headers.update(
        {
            "Cache-Control": "no-store",
            "Content-Security-Policy": content_security_policy(settings, nonce),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
    )
    return response


def _static(static_dir: Path, name: str, request: flask.Request) -> flask.Response:
    path = (static_dir / name).resolve()
    if not path.is_relative_to(static_dir.resolve()) or not path.is_file():
        return error_response(errors.NotFound("no such file", details={"path": name[:200]}))
    asset = _asset(path)
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",  # revalidate: the ETag makes it a 304
        "X-Content-Type-Options": "nosniff",
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return flask.Response(status=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = flask.Response(body, status=200, content_type=asset.content_type)
    response.headers.update(headers)
    response.headers["Content-Length"] = str(len(asset.body))
    return response


def serve(request: flask.Request, static_dir: Path, settings: ConsoleSettings) -> flask.Response:
    """The console's one handler: GET/HEAD of the page or one of its files."""
    if request.method not in {"GET", "HEAD"}:
        response = error_response(
            errors.MethodNotAllowed(
                f"method {request.method} is not allowed", details={"allowed": ["GET", "HEAD"]}
            )
        )
        response.headers["Allow"] = "GET, HEAD"
        return response
    name = request.path.strip("/")
    if name in {"", "index.html"}:
        return _index(static_dir, settings)
    return _static(static_dir, name, request)
