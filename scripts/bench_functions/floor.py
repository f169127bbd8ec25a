"""The floor under the API functions: bare functions-framework functions, each doing the one
SQL statement a create or a get needs, with psycopg straight to Postgres (no gateway).

Served by the benchmark exactly as a project function is (``functions-framework`` under
gunicorn); ``BENCH_DATABASE_URL`` names the database (the benchmark creates the table).
"""

from __future__ import annotations

import json
import os
import uuid

import flask
import functions_framework
from psycopg_pool import ConnectionPool

_pool = ConnectionPool(os.environ["BENCH_DATABASE_URL"], min_size=1, max_size=16, open=True)


@functions_framework.http
def insert_row(request: flask.Request) -> flask.Response:
    body = request.get_json(silent=True) or {}
    with _pool.connection() as conn:
        row = conn.execute(
            "insert into bench_floor (id, body) values (%s, %s) returning id, created_at",
            (uuid.uuid4(), json.dumps(body)),
        ).fetchone()
    assert row is not None
    payload = {"id": str(row[0]), "createdAt": row[1].isoformat()}
    return flask.Response(json.dumps(payload), status=202, mimetype="application/json")


@functions_framework.http
def select_row(request: flask.Request) -> flask.Response:
    with _pool.connection() as conn:
        row = conn.execute(
            "select id, body, created_at from bench_floor where id = %s", (request.path[1:],)
        ).fetchone()
    if row is None:
        return flask.Response("{}", status=404, mimetype="application/json")
    payload = {"id": str(row[0]), "body": row[1], "createdAt": row[2].isoformat()}
    return flask.Response(json.dumps(payload), status=200, mimetype="application/json")
