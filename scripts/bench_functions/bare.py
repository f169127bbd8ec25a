"""The bare baseline: a functions-framework function that does nothing (cold start floor)."""

from __future__ import annotations

import flask
import functions_framework


@functions_framework.http
def hello(request: flask.Request) -> flask.Response:
    return flask.Response('{"ok":true}', status=200, mimetype="application/json")
