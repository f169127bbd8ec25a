"""ai-jobs-console: the web console for people (ask, watch a job live, read the report).

Deployed as a public Cloud Functions gen2 HTTP function with entry point ``console``; it serves
``static/`` (built from ``console/`` by ``make console``) with its settings injected. The work is
in ``shared/console.py`` (staged beside this file by deploy.sh).
"""

from pathlib import Path

import flask

from shared.console import serve
from shared.settings import get_console_settings

STATIC_DIR = Path(__file__).resolve().parent / "static"

get_console_settings()  # fail at cold start, naming any missing or malformed setting


def console(request: flask.Request) -> flask.Response:
    return serve(request, STATIC_DIR, get_console_settings())
