"""The PostgREST-compatible gateway, through the real supabase client and raw HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import jwt as pyjwt
import psycopg
import pytest
from postgrest.exceptions import APIError
from supabase import Client

from infra.local.gateway import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    Call,
    GatewayHandle,
    Identity,
    ReturnKind,
    Routine,
    api_key,
    create_app,
    make_jwt,
    sqlstate_status,
    start_gateway,
)
from infra.local.gateway.app import Answer, Planned, answer, respond
from infra.local.gateway.asgi import as_sent
from infra.local.gateway.auth import JWT_ALLOWED_SKEW_SECONDS
from infra.local.keys import project_api_keys
from tests.gateway.wire import PostgresRelay
from tests.support import JWT_SECRET, mint, wait_until

#: a time no run of the suite reaches (year 2286)
NEVER_YET = 10_000_000_000


def rpc_data(client: Client, fn: str, args: dict[str, Any] | None = None) -> Any:
    """What a call answers, as a test reads it (postgrest-py types it as any JSON)."""
    return client.rpc(fn, args or {}).execute().data


def rpc_error(client: Client, fn: str, args: dict[str, object]) -> APIError:
    with pytest.raises(APIError) as caught:
        client.rpc(fn, args).execute()
    return caught.value


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- response shapes ---------------------------------------------------------------------------


def test_scalar_results_are_bare_json_values(service: Client) -> None:
    assert rpc_data(service, "add", {"a": 2, "b": 3}) == 5
    assert rpc_data(service, "shout", {"t": "hi"}) == "HI"
    assert rpc_data(service, "is_positive", {"n": 1}) is True
    assert rpc_data(service, "nothing") is None


def test_scalar_bodies_on_the_wire(http: httpx.Client, service_key: str) -> None:
    headers = {"apikey": service_key, "Authorization": f"Bearer {service_key}"}

    number = http.post("/rest/v1/rpc/add", json={"a": 2, "b": 3}, headers=headers)
    text = http.post("/rest/v1/rpc/shout", json={"t": "hi"}, headers=headers)
    null = http.post("/rest/v1/rpc/nothing", json={}, headers=headers)

    assert (number.status_code, number.text) == (200, "5")
    assert number.headers["content-type"] == "application/json; charset=utf-8"
    assert text.text == '"HI"'
    assert (null.status_code, null.text) == (200, "null")


def test_json_results_pass_through_unchanged(
    service: Client, http: httpx.Client, service_key: str
) -> None:
    doc = {"a": [1, 2, {"b": None}], "c": "ü"}

    assert rpc_data(service, "echo_doc", {"doc": doc}) == doc
    # json (not jsonb) keeps the caller's key order, as PostgREST does.
    raw = http.post(
        "/rest/v1/rpc/echo_json_text",
        content=b'{"doc": {"z": 1, "a": 2}}',
        headers={"Authorization": f"Bearer {service_key}"},
    )
    assert raw.text == '{"z": 1, "a": 2}'


#: Single results and the SQL that yields, in PostgREST's own expression, the same answer.
SINGLE_RESULTS: list[tuple[str, dict[str, Any], str]] = [
    ("add", {"a": 2, "b": 3}, "select public.add(2, 3) as x"),
    ("shout", {"t": "hé"}, "select public.shout('hé') as x"),
    ("is_positive", {"n": -1}, "select public.is_positive(-1) as x"),
    ("nothing", {}, "select public.nothing() as x"),
    ("echo_doc", {"doc": {"k": [1, None]}}, """select public.echo_doc('{"k": [1, null]}') as x"""),
    (
        "echo_json_text",
        {"doc": {"z": 1, "a": 2}},
        """select public.echo_json_text('{"z":1,"a":2}') as x""",
    ),
    ("spaced_json", {}, "select public.spaced_json() as x"),
    ("spaced_domain", {}, "select public.spaced_domain() as x"),
    (
        "stamp",
        {"at": "2026-05-06T07:08:09.5+09:00"},
        "select public.stamp('2026-05-06T07:08:09.5+09:00') as x",
    ),
    (
        "find_item",
        {"p_name": "nobody-has-this-name"},
        "select * from public.find_item('nobody-has-this-name') x",
    ),
    ("item_stats", {"p_prefix": "zz-none"}, "select * from public.item_stats('zz-none') x"),
    ("one_out", {"p_a": 4}, "select * from public.one_out(4) x"),
]


@pytest.mark.parametrize("case", SINGLE_RESULTS, ids=[fn for fn, _, _ in SINGLE_RESULTS])
def test_a_single_result_is_the_text_postgrest_builds_for_it(
    http: httpx.Client, service_key: str, gateway_db: str, case: tuple[str, dict[str, Any], str]
) -> None:
    fn, args, source = case
    # PostgREST (Statements.hs, asJsonSingleF): coalesce((json_agg(x)->0)::text, 'null'), of
    # the value for a scalar function, of the row for a composite one
    value = "x.x" if source.startswith("select public.") else "x"
    postgrest = f"select coalesce((json_agg({value})->0)::text, 'null') from ({source}) x"
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        row = conn.execute(postgrest).fetchone()

    response = http.post(
        f"/rest/v1/rpc/{fn}", json=args, headers={"Authorization": f"Bearer {service_key}"}
    )

    assert row is not None
    assert (response.status_code, response.text) == (200, row[0])


def test_single_composite_is_one_object(service: Client) -> None:
    name = unique("one")

    created = service.rpc("add_item", {"p_name": name, "p_qty": 2, "p_tags": ["x"]}).execute()
    found = service.rpc("find_item", {"p_name": name}).execute()

    assert isinstance(created.data, dict)
    assert created.data["name"] == name
    assert created.data["tags"] == ["x"]
    assert created.data["created_at"] == "2026-01-02T03:04:05.678+00:00"
    assert found.data == created.data
    uuid.UUID(created.data["id"])


def test_missing_composite_row_is_an_object_of_nulls_like_postgrest(service: Client) -> None:
    # PostgREST calls the function in FROM, where a NULL composite is one row of NULLs.
    found = service.rpc("find_item", {"p_name": unique("absent")}).execute()

    assert found.data == {"id": None, "name": None, "qty": None, "tags": None, "created_at": None}


def test_out_parameters_make_one_object(service: Client) -> None:
    prefix = unique("stats")
    for suffix in ("b", "a"):
        service.rpc("add_item", {"p_name": f"{prefix}-{suffix}", "p_qty": 1}).execute()

    stats = service.rpc("item_stats", {"p_prefix": prefix}).execute()

    assert stats.data == {"total": 2, "names": [f"{prefix}-a", f"{prefix}-b"]}


def test_a_single_out_parameter_is_an_object_like_postgrest(service: Client) -> None:
    # PostgREST v13 SchemaCache.hs: proargmodes && '{t,b,o}' makes the result composite.
    assert rpc_data(service, "one_out", {"p_a": 21}) == {"doubled": 42}


def test_a_one_column_table_is_an_array_of_objects_like_postgrest(service: Client) -> None:
    rows = rpc_data(service, "one_column_table", {"n": 2})

    assert rows == [{"k": 1}, {"k": 2}]


def test_sets_are_cut_at_db_max_rows_but_every_row_is_changed(
    service: Client, gateway_db: str
) -> None:
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        conn.execute("truncate public.marks")  # the tier's database serves both gateways
    numbers = rpc_data(service, "series", {"n": 1500})
    marked = rpc_data(service, "mark_many", {"n": 1200})

    # infra/supabase/config.toml's max_rows, Supabase's hosted default too
    assert DEFAULT_MAX_ROWS == 1000
    assert numbers == list(range(1, 1001))
    assert len(marked) == 1000
    # Supabase's db-max-rows cuts the answer, not the work: the caller never sees 200 rows.
    assert rpc_data(service, "count_marks") == 1200


def test_content_range_counts_the_rows_returned_like_postgrest(
    http: httpx.Client, service_key: str
) -> None:
    headers = {"Authorization": f"Bearer {service_key}"}

    def content_range(fn: str, args: dict[str, object]) -> str:
        response = http.post(f"/rest/v1/rpc/{fn}", json=args, headers=headers)
        return response.headers["content-range"]

    assert content_range("series", {"n": 3}) == "0-2/*"
    assert content_range("series", {"n": 0}) == "*/*"
    assert content_range("series", {"n": 1500}) == "0-999/*"
    assert content_range("add", {"a": 1, "b": 2}) == "0-0/*"
    assert content_range("bump", {"p_name": unique("absent")}) == "0-0/*"


def test_sets_are_arrays(service: Client) -> None:
    prefix = unique("set")
    for name, qty in (("b", 5), ("a", 1)):
        service.rpc("add_item", {"p_name": f"{prefix}-{name}", "p_qty": qty}).execute()

    rows = rpc_data(service, "list_items", {"p_prefix": prefix})
    filtered = rpc_data(service, "list_items", {"p_prefix": prefix, "p_min": 2})
    table = rpc_data(service, "item_table", {"p_prefix": prefix})
    empty = rpc_data(service, "item_table", {"p_prefix": unique("none")})
    numbers = rpc_data(service, "series", {"n": 3})

    assert [r["name"] for r in rows] == [f"{prefix}-a", f"{prefix}-b"]
    assert set(rows[0]) == {"id", "name", "qty", "tags", "created_at"}
    assert [r["qty"] for r in filtered] == [5]
    assert table == [{"name": f"{prefix}-a", "qty": 1}, {"name": f"{prefix}-b", "qty": 5}]
    assert empty == []
    assert numbers == [1, 2, 3]


def test_void_is_204_without_body(service: Client, http: httpx.Client, service_key: str) -> None:
    name = unique("void")
    service.rpc("add_item", {"p_name": name, "p_qty": 1}).execute()

    raw = http.post(
        "/rest/v1/rpc/bump",
        json={"p_name": name},
        headers={"Authorization": f"Bearer {service_key}"},
    )
    via_client = service.rpc("bump", {"p_name": name}).execute()

    assert (raw.status_code, raw.content) == (204, b"")
    assert "content-type" not in raw.headers
    assert via_client.data == []  # how postgrest-py reads an empty 204
    assert rpc_data(service, "find_item", {"p_name": name})["qty"] == 3


# --- arguments ---------------------------------------------------------------------------------


def test_arguments_are_cast_to_the_declared_types(service: Client) -> None:
    job_id = str(uuid.uuid4())

    result = (
        service.rpc(
            "describe",
            {
                "id": job_id,
                "n": 7,
                "label": "x",
                "doc": {"k": [1]},
                "at": "2026-03-04T05:06:07+09:00",
                "moods": ["happy", "sad"],
                "tags": ["a", "b,c"],
            },
        )
        .execute()
        .data
    )

    assert result == {
        "id": job_id,
        "n": 7,
        "label": "x",
        "doc": {"k": [1]},
        "epoch": 1772568367,
        "moods": ["happy", "sad"],
        "tags": ["a", "b,c"],
        "tagCount": 2,
        "types": ["uuid", "timestamp with time zone", "mood[]"],
    }


def test_null_arguments_and_defaults(service: Client) -> None:
    assert rpc_data(service, "with_default", {"a": 1}) == 11
    assert rpc_data(service, "with_default", {"a": 1, "b": 2}) == 3
    assert rpc_data(service, "with_default", {"a": 1, "b": None}) is None


def test_timestamps_round_trip_like_to_json(service: Client) -> None:
    stamp = rpc_data(service, "stamp", {"at": "2026-05-06T07:08:09.5Z"})

    assert isinstance(stamp, str)
    assert stamp.startswith("2026-")
    assert stamp[-6] in "+-"  # an offset, as Postgres's to_json writes it


def test_overloads_are_chosen_by_argument_names(service: Client) -> None:
    assert rpc_data(service, "pick", {"a": 1}) == "a"
    assert rpc_data(service, "pick", {"a": 1, "b": 2}) == "a,b"
    assert rpc_data(service, "pick", {"x": "s"}) == "x"


def test_ambiguous_overload_is_300_pgrst203(http: httpx.Client, service_key: str) -> None:
    response = http.post(
        "/rest/v1/rpc/twin", json={"a": 1}, headers={"Authorization": f"Bearer {service_key}"}
    )

    body = response.json()
    assert response.status_code == 300
    assert body["code"] == "PGRST203"
    assert body["message"].startswith("Could not choose the best candidate function between:")
    assert "public.twin(a => integer, b => integer)" in body["message"]


def test_single_unnamed_json_parameter_takes_the_whole_body(service: Client) -> None:
    assert rpc_data(service, "single_unnamed", {"k": 1}) == {"got": {"k": 1}}


def test_params_single_object_is_ignored_as_in_postgrest_v13(
    http: httpx.Client, service_key: str
) -> None:
    # v13 changelog #3757: the preference was removed; the keys name the arguments.
    response = http.post(
        "/rest/v1/rpc/echo_doc",
        json={"x": 1, "y": [2]},
        headers={"Authorization": f"Bearer {service_key}", "Prefer": "params=single-object"},
    )

    assert response.status_code == 404
    assert response.json()["code"] == "PGRST202"


def test_post_runs_stable_functions_read_only_like_postgrest(
    http: httpx.Client, service_key: str
) -> None:
    # PostgREST v13 Plan.hs (callReadPlan): POST of a STABLE or IMMUTABLE function → SQL.Read.
    response = http.post(
        "/rest/v1/rpc/stable_ticket", json={}, headers={"Authorization": f"Bearer {service_key}"}
    )

    assert response.status_code == 405
    assert response.json()["code"] == "25006"
    assert response.json()["message"] == "cannot execute nextval() in a read-only transaction"


def test_get_calls_stable_functions_read_only(http: httpx.Client, service_key: str) -> None:
    headers = {"Authorization": f"Bearer {service_key}"}

    ok = http.get("/rest/v1/rpc/add", params={"a": "2", "b": "40"}, headers=headers)
    written = http.get(
        "/rest/v1/rpc/add_item", params={"p_name": unique("get"), "p_qty": "1"}, headers=headers
    )

    assert (ok.status_code, ok.json()) == (200, 42)
    assert written.status_code == 405
    assert written.json()["code"] == "25006"


def test_a_function_replaced_after_its_first_call_answers_with_its_new_body(
    service: Client, gateway_db: str, gateway: GatewayHandle
) -> None:
    # The gateway runs each call as a statement prepared once per connection: Postgres must
    # plan it again for the new body, as PostgREST's prepared statements are.
    name = f"changing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        conn.execute(f"create function public.{name}(a int) returns int language sql as 'select a'")
        before = [rpc_data(service, name, {"a": 5}) for _ in range(8)]  # every connection
        conn.execute(
            f"create or replace function public.{name}(a int) returns int"
            " language sql as 'select a * 10'"
        )
        after = [rpc_data(service, name, {"a": 5}) for _ in range(8)]
        conn.execute(f"drop function public.{name}(int)")
        gone = rpc_error(service, name, {"a": 5})

    assert before == [5] * 8
    assert after == [50] * 8
    assert gone.code == "42883"  # as the statement parsed afresh said it


def test_a_call_made_again_after_a_schema_reload_is_the_same_call(
    service: Client, gateway: GatewayHandle
) -> None:
    # a reload names the statements anew; a connection drops its older ones
    first = rpc_data(service, "add", {"a": 1, "b": 2})
    gateway.app.reload()
    again = [rpc_data(service, "add", {"a": 2, "b": 3}) for _ in range(8)]

    assert first == 3
    assert again == [5] * 8


def test_a_statement_that_cannot_be_prepared_is_not_prepared_again_until_a_reload(
    gateway_db: str, service_key: str
) -> None:
    # The function is dropped after the schema cache was read: its PREPARE fails, the call runs
    # as text and reports 42883. Trying the PREPARE again on every call would double each
    # call's round trips until the next reload (PostgREST's cache forgets it only then too).
    name = f"vanishing_{uuid.uuid4().hex[:8]}"
    prepare = b'prepare "pgrst_'
    with psycopg.connect(gateway_db, autocommit=True) as conn, PostgresRelay(gateway_db) as relay:
        conn.execute(f"create function public.{name}(a int) returns int language sql as 'select a'")
        handle = start_gateway(relay.uri, JWT_SECRET, pool_min=1, pool_max=1)
        try:
            with httpx.Client(base_url=handle.url, headers={"apikey": service_key}) as http:
                handle.app.reload()  # the cache knows the function
                conn.execute(f"drop function public.{name}(int)")
                refused = [http.post(f"/rest/v1/rpc/{name}", json={"a": 1}) for _ in range(3)]
                prepared_while_gone = relay.count(prepare)
                conn.execute(
                    f"create function public.{name}(a int) returns int language sql as 'select a'"
                )
                handle.app.reload()
                answers = [http.post(f"/rest/v1/rpc/{name}", json={"a": 7}) for _ in range(3)]
                prepared_after_reload = relay.count(prepare)
        finally:
            handle.stop()

    assert [r.json()["code"] for r in refused] == ["42883"] * 3
    assert prepared_while_gone == 1
    assert [r.json() for r in answers] == [7] * 3
    assert prepared_after_reload == 2  # the reload's statement, once on the one connection


LARGE_BODY_CHARS = 80_000


@pytest.mark.parametrize(
    ("volatility", "hoisted", "mode"),
    [
        ("volatile", "", "read committed,off"),
        ("stable", "", "read committed,on"),
        ("volatile", " set default_transaction_isolation = 'serializable'", "serializable,off"),
    ],
    ids=["read-write", "read-only", "serializable"],
)
def test_a_large_body_runs_in_the_transaction_a_small_one_runs_in(
    service: Client, gateway_db: str, volatility: str, hoisted: str, mode: str
) -> None:
    # a body the size of a report's result (~80 kB), quoted into the one query as a small one
    # is, runs at the level and access mode PostgREST sets for the function
    name = f"mode_{uuid.uuid4().hex[:8]}"
    pad = "é" * LARGE_BODY_CHARS
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        conn.execute(
            f"create function public.{name}(pad text) returns text language sql {volatility}"
            f"{hoisted} as $$ select current_setting('transaction_isolation') || ','"
            " || current_setting('transaction_read_only') || ',' || length(pad) $$"
        )
        try:
            small = rpc_data(service, name, {"pad": "é"})
            large = rpc_data(service, name, {"pad": pad})
        finally:
            conn.execute(f"drop function public.{name}(text)")

    assert small == f"{mode},1"
    assert large == f"{mode},{LARGE_BODY_CHARS}"


# --- auth --------------------------------------------------------------------------------------


def test_claims_and_role_reach_sql(supabase_for: Callable[..., Client], anon_key: str) -> None:
    user_id = str(uuid.uuid4())
    user_token = mint("authenticated", sub=user_id)

    as_user = rpc_data(supabase_for(anon_key, user_token), "whoami")
    as_anon = rpc_data(supabase_for(anon_key), "whoami")

    assert as_user == {
        "sub": user_id,
        "role": "authenticated",
        "method": "POST",
        "path": "/rpc/whoami",
        "probe": None,
    }
    assert as_anon["role"] == "anon"
    assert as_anon["sub"] is None


def test_role_settings_apply_to_the_switched_role(
    supabase_for: Callable[..., Client], anon_key: str, gateway: GatewayHandle, gateway_db: str
) -> None:
    # PostgREST applies ALTER ROLE … SET of the roles authenticator may switch to.
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        conn.execute("alter role anon set statement_timeout = '1234ms'")
        try:
            gateway.app.reload()
            shown = supabase_for(anon_key).rpc("show_setting", {"p_name": "statement_timeout"})
            data = shown.execute().data
        finally:
            conn.execute("alter role anon set statement_timeout = '3s'")
            gateway.app.reload()

    assert data == "1234ms"


@pytest.mark.parametrize(
    ("role", "statement_timeout"),
    [("anon", "3s"), ("authenticated", "8s"), ("service_role", "8s")],
)
def test_api_roles_run_under_supabase_timeouts(
    http: httpx.Client, role: str, statement_timeout: str
) -> None:
    # authenticator's 8 s (statement and lock) hold for every role; anon's own 3 s wins for it.
    token = mint(role, sub=str(uuid.uuid4()))
    headers = {"Authorization": f"Bearer {token}"}

    def shown(name: str) -> object:
        return http.post("/rest/v1/rpc/show_setting", json={"p_name": name}, headers=headers).json()

    assert shown("statement_timeout") == statement_timeout
    assert shown("lock_timeout") == "8s"


def test_request_headers_reach_the_call_by_their_lower_case_names(
    http: httpx.Client, service_key: str
) -> None:
    # PostgREST v13 sets request.headers to every header under its lower-case name
    headers = {"Authorization": f"Bearer {service_key}", "X-Probe-Header": "seen"}

    shown = http.post(
        "/rest/v1/rpc/show_setting", json={"p_name": "request.headers"}, headers=headers
    ).json()
    document = json.loads(shown)

    assert document["x-probe-header"] == "seen"
    assert document["authorization"] == f"Bearer {service_key}"
    assert document["content-type"] == "application/json"
    assert int(document["content-length"]) > 0
    assert all(name == name.lower() for name in document)


def test_values_with_quotes_backslashes_and_placeholders_reach_sql_as_sent(
    http: httpx.Client, service_key: str
) -> None:
    # the settings' values and the body are quoted into the one query by the gateway itself
    # (rpc.call_query): each must arrive as it was sent, whatever it holds
    odd = "it's \\ a 'quote' \\' %(body)s %s $1 $$"
    headers = {"Authorization": f"Bearer {service_key}", "X-Odd": odd}

    shown = http.post(
        "/rest/v1/rpc/show_setting", json={"p_name": "request.headers"}, headers=headers
    ).json()
    shouted = http.post("/rest/v1/rpc/shout", json={"t": odd + " é"}, headers=headers).json()
    again = http.post("/rest/v1/rpc/shout", json={"t": odd + " é"}, headers=headers).json()

    assert json.loads(shown)["x-odd"] == odd
    assert shouted == again == (odd + " é").upper()


def test_function_settings_are_hoisted_to_the_transaction_like_postgrest(
    http: httpx.Client, service_key: str
) -> None:
    # PostgREST v13 db-hoisted-tx-settings: a function's own statement_timeout bounds its call
    # and its default_transaction_isolation starts the transaction.
    headers = {"Authorization": f"Bearer {service_key}"}

    napped = http.post("/rest/v1/rpc/hasty_nap", json={"seconds": 0.5}, headers=headers)
    isolation = http.post("/rest/v1/rpc/serial_isolation", json={}, headers=headers)

    assert (napped.status_code, napped.json()["code"]) == (500, "57014")
    assert isolation.json() == "serializable"


def test_a_statement_past_the_role_timeout_is_cancelled(http: httpx.Client, anon_key: str) -> None:
    response = http.post(
        "/rest/v1/rpc/nap",
        json={"seconds": 3.5},
        headers={"Authorization": f"Bearer {anon_key}"},
    )

    assert response.status_code == 500
    assert response.json()["code"] == "57014"
    assert response.json()["message"] == "canceling statement due to statement timeout"


def test_request_headers_are_visible_and_the_bearer_outranks_the_anon_apikey(
    http: httpx.Client, service_key: str
) -> None:
    # ``http`` sends the anon key as apikey: the service_role bearer decides the role
    response = http.post(
        "/rest/v1/rpc/whoami",
        json={},
        headers={"Authorization": f"Bearer {service_key}", "X-Probe": "p1"},
    )

    assert response.json()["probe"] == "p1"
    assert response.json()["role"] == "service_role"


def test_apikey_header_alone_authenticates(http: httpx.Client, service_key: str) -> None:
    response = http.post("/rest/v1/rpc/add", json={"a": 1, "b": 1}, headers={"apikey": service_key})

    assert (response.status_code, response.json()) == (200, 2)


def test_a_request_without_an_apikey_is_refused_before_postgrest(
    gateway: GatewayHandle, service_key: str
) -> None:
    # Supabase's API gateway: no key, 401, even with a valid bearer token (hosted answer).
    response = httpx.post(
        f"{gateway.url}/rest/v1/rpc/add",
        json={"a": 1, "b": 1},
        headers={"Authorization": f"Bearer {service_key}"},
    )

    assert response.status_code == 401
    assert response.json() == {
        "message": "No API key found in request",
        "hint": "No `apikey` request header or url param was found.",
    }
    assert "proxy-status" not in response.headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_rest_root_needs_the_key_too(
    gateway: GatewayHandle, anon_key: str, method: str
) -> None:
    # Kong's rest-v1 service puts key-auth on all of /rest/v1/ (supabase/supabase
    # docker/volumes/api/kong.yml), PostgREST's root (its OpenAPI document) included
    root = f"{gateway.url}/rest/v1/"

    refused = httpx.request(method, root)
    answered = httpx.request(method, root, headers={"apikey": anon_key})

    assert refused.status_code == 401
    if method == "GET":
        assert refused.json()["message"] == "No API key found in request"
    assert answered.status_code == 200


@pytest.mark.parametrize(
    "key",
    [
        make_jwt("another-secret-another-secret-another", "anon"),
        make_jwt(JWT_SECRET, "authenticated", sub=str(uuid.uuid4())),
        # signed with the project's secret, role anon, but not the project's anon key: Kong's
        # key-auth compares the key itself, it does not verify a JWT
        make_jwt(JWT_SECRET, "anon", expires_in=timedelta(days=1)),
        make_jwt(JWT_SECRET, "service_role", iat=int(time.time())),
        # asked for with nothing else given, a token is still fresh, not the project's key
        make_jwt(JWT_SECRET, "anon"),
        "sb_publishable_0123456789abcdef",
        "not-a-key",
    ],
    ids=[
        "forged",
        "a-user-token",
        "another-anon-jwt-of-this-secret",
        "another-service-jwt-of-this-secret",
        "a-fresh-anon-jwt",
        "a-new-style-key-this-project-lacks",
        "not-a-jwt",
    ],
)
def test_an_apikey_that_is_not_the_projects_is_401_invalid_api_key(
    gateway: GatewayHandle, service_key: str, key: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/rest/v1/rpc/add",
        json={"a": 1, "b": 1},
        headers={"apikey": key, "Authorization": f"Bearer {service_key}"},
    )

    assert response.status_code == 401
    assert response.json() == {
        "message": "Invalid API key",
        "hint": "Double check your Supabase `anon` or `service_role` API key.",
    }


def test_the_project_keys_are_the_supabase_cli_keys_of_its_secret() -> None:
    # `supabase status` with the CLI's default JWT secret (supabase/supabase kong.yml, the
    # anon consumer's key); the local stack uses that secret, so a key copied from the CLI works
    cli_anon_key = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJl"
        "eHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
    )

    assert JWT_SECRET == "super-secret-jwt-token-with-at-least-32-characters-long"
    assert api_key(JWT_SECRET, "anon") == cli_anon_key


@pytest.mark.parametrize("role", ["anon", "service_role"])
def test_make_jwt_mints_a_fresh_token_of_a_key_role_not_the_projects_key(role: str) -> None:
    token = make_jwt(JWT_SECRET, role)

    assert token not in project_api_keys(JWT_SECRET)
    claims = pyjwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert (claims["role"], claims["iss"]) == (role, "supabase-demo")
    assert claims["iat"] <= time.time() < claims["exp"]


def test_an_apikey_is_compared_whole_not_stripped(gateway: GatewayHandle, anon_key: str) -> None:
    response = httpx.post(
        f"{gateway.url}/rest/v1/rpc/add",
        params={"apikey": f" {anon_key}"},
        json={"a": 1, "b": 1},
    )

    assert response.status_code == 401
    assert response.json()["message"] == "Invalid API key"


def test_the_apikey_may_come_as_a_url_parameter(gateway: GatewayHandle, anon_key: str) -> None:
    response = httpx.post(
        f"{gateway.url}/rest/v1/rpc/add", params={"apikey": anon_key}, json={"a": 1, "b": 1}
    )

    assert (response.status_code, response.json()) == (200, 2)


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [
        (
            make_jwt("another-secret-another-secret-another", "service_role"),
            "PGRST301",
            "JWT cryptographic operation failed",
        ),
        # a bearer that is not a JWT (a new-style key) reaches PostgREST and fails there
        # (supabase/supabase-py issue 1228; Supabase's API keys guide)
        ("sb_secret_0123456789abcdef", "PGRST301", "Expected 3 parts in JWT; got 1"),
        (
            mint("service_role", exp=int(time.time()) - 120),
            "PGRST303",
            "JWT expired",
        ),
        (
            # far in the future: the case is built when pytest collects, and a loaded run can
            # reach it more than ten minutes later (it failed so once with "now + 600")
            mint("service_role", nbf=NEVER_YET),
            "PGRST303",
            "JWT not yet valid",
        ),
        (
            mint("service_role", iat=NEVER_YET),
            "PGRST303",
            "JWT issued at future",
        ),
        (
            mint("service_role", exp="tomorrow"),
            "PGRST303",
            "The JWT 'exp' claim must be a number",
        ),
        (
            mint("service_role", aud=5),
            "PGRST303",
            "The JWT 'aud' claim must be a string or an array of strings",
        ),
    ],
)
def test_bad_tokens_are_401_with_postgrest_v13_codes(
    http: httpx.Client, token: str, code: str, message: str
) -> None:
    # PostgREST v13 Error.hs: PGRST301 undecodable or unverifiable, PGRST303 invalid claims.
    response = http.post(
        "/rest/v1/rpc/add", json={"a": 1, "b": 1}, headers={"Authorization": f"Bearer {token}"}
    )

    body = response.json()
    assert response.status_code == 401
    assert (body["code"], body["message"]) == (code, message)
    assert response.headers["www-authenticate"] == (
        f'Bearer error="invalid_token", error_description="{message}"'
    )


def test_an_empty_bearer_token_is_401_pgrst301(http: httpx.Client, service_key: str) -> None:
    response = http.post(
        "/rest/v1/rpc/add",
        json={"a": 1, "b": 1},
        headers={"Authorization": "Bearer", "apikey": service_key},
    )

    assert response.status_code == 401
    assert response.json()["code"] == "PGRST301"
    assert response.json()["message"] == "Empty JWT is sent in Authorization header"


def test_a_token_within_the_allowed_skew_is_accepted(http: httpx.Client) -> None:
    token = mint("service_role", exp=int(time.time()) - 10)

    response = http.post(
        "/rest/v1/rpc/add", json={"a": 1, "b": 1}, headers={"Authorization": f"Bearer {token}"}
    )

    assert (response.status_code, response.json()) == (200, 2)


def test_a_token_accepted_before_its_exp_is_refused_after_it(http: httpx.Client) -> None:
    # The gateway keeps verified tokens (as PostgREST's JWT cache) only until exp + skew.
    expires = int(time.time()) - JWT_ALLOWED_SKEW_SECONDS + 4
    token = mint("service_role", exp=expires)
    headers = {"Authorization": f"Bearer {token}"}

    before = http.post("/rest/v1/rpc/add", json={"a": 1, "b": 1}, headers=headers)
    again = http.post("/rest/v1/rpc/add", json={"a": 1, "b": 2}, headers=headers)
    wait_until(lambda: int(time.time()) > expires + JWT_ALLOWED_SKEW_SECONDS, "the token to expire")
    after = http.post("/rest/v1/rpc/add", json={"a": 1, "b": 1}, headers=headers)

    assert (before.status_code, before.json(), again.json()) == (200, 2, 3)
    assert after.status_code == 401
    assert (after.json()["code"], after.json()["message"]) == ("PGRST303", "JWT expired")


def test_wrong_key_raises_api_error_in_the_client(supabase_for: Callable[..., Client]) -> None:
    forged = make_jwt("another-secret-another-secret-another", "service_role")

    error = rpc_error(supabase_for(forged), "add", {"a": 1, "b": 1})

    assert error.message == "Invalid API key"


@pytest.mark.parametrize(
    ("role", "status", "code", "message"),
    [
        # a role the authenticator cannot switch to is refused by the database
        ("postgres", 403, "42501", 'permission denied to set role "postgres"'),
        ("nobody_here", 401, "22023", 'role "nobody_here" does not exist'),
    ],
)
def test_a_role_the_token_cannot_become_is_refused_as_postgrest_does(
    http: httpx.Client, role: str, status: int, code: str, message: str
) -> None:
    token = mint(role)

    response = http.post(
        "/rest/v1/rpc/whoami", json={}, headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["message"] == message


def test_service_only_function_refuses_anon_401_and_users_403(
    supabase_for: Callable[..., Client], anon_key: str, service: Client
) -> None:
    user_token = mint("authenticated", sub=str(uuid.uuid4()))

    as_anon = rpc_error(supabase_for(anon_key), "admin_only", {})
    as_user = rpc_error(supabase_for(anon_key, user_token), "admin_only", {})

    assert as_anon.code == as_user.code == "42501"
    assert as_anon.message == "permission denied for function admin_only"
    assert rpc_data(service, "admin_only") == "secret"


def test_permission_statuses(http: httpx.Client, anon_key: str) -> None:
    user_token = mint("authenticated", sub=str(uuid.uuid4()))

    as_anon = http.post(
        "/rest/v1/rpc/admin_only",
        json={},
        headers={"apikey": anon_key, "Authorization": f"Bearer {anon_key}"},
    )
    as_user = http.post(
        "/rest/v1/rpc/admin_only",
        json={},
        headers={"apikey": anon_key, "Authorization": f"Bearer {user_token}"},
    )

    assert as_anon.status_code == 401
    assert as_user.status_code == 403


# --- errors ------------------------------------------------------------------------------------


def test_unknown_function_is_404_pgrst202(
    service: Client, http: httpx.Client, service_key: str
) -> None:
    error = rpc_error(service, "no_such_fn", {"b": 1, "a": 2})
    near = http.post(
        "/rest/v1/rpc/shouts", json={"t": "x"}, headers={"Authorization": f"Bearer {service_key}"}
    )
    no_args = http.post(
        "/rest/v1/rpc/no_such_fn", json={}, headers={"Authorization": f"Bearer {service_key}"}
    )

    assert error.code == "PGRST202"
    assert error.message == (
        "Could not find the function public.no_such_fn(a, b) in the schema cache"
    )
    assert error.details == (
        "Searched for the function public.no_such_fn with parameters a, b or "
        "with a single unnamed json/jsonb parameter, but no matches were "
        "found in the schema cache."
    )
    assert error.hint is None
    assert near.status_code == 404
    assert near.json()["hint"] == "Perhaps you meant to call the function public.shout"
    assert no_args.json()["message"] == (
        "Could not find the function public.no_such_fn without parameters in the schema cache"
    )


def test_wrong_argument_names_are_404(service: Client) -> None:
    error = rpc_error(service, "add", {"a": 1, "c": 2})

    assert error.code == "PGRST202"
    assert error.message == "Could not find the function public.add(a, c) in the schema cache"
    assert error.hint == "Perhaps you meant to call the function public.add(a, b)"


def test_new_functions_are_found_without_restart(service: Client, gateway_db: str) -> None:
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    assert rpc_error(service, name, {}).code == "PGRST202"
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        conn.execute(f"create function public.{name}() returns int language sql as 'select 1'")

    assert rpc_data(service, name, {}) == 1


def test_custom_ptxxx_status_keeps_message_details_hint(
    service: Client, http: httpx.Client, service_key: str
) -> None:
    error = rpc_error(service, "fail", {"kind": "conflict"})
    raw = http.post(
        "/rest/v1/rpc/fail",
        json={"kind": "conflict"},
        headers={"Authorization": f"Bearer {service_key}"},
    )

    assert (error.code, error.message, error.details, error.hint) == (
        "PT409",
        "job already finished",
        "status is completed",
        "poll the job instead",
    )
    assert raw.status_code == 409
    assert raw.json() == {
        "code": "PT409",
        "details": "status is completed",
        "hint": "poll the job instead",
        "message": "job already finished",
    }


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("teapot", 418, "PT418"),
        ("plain", 400, "P0001"),
        ("internal", 500, "XX000"),
        ("custom", 402, "X1"),
    ],
)
def test_raised_errors_map_to_statuses(
    http: httpx.Client, service_key: str, kind: str, status: int, code: str
) -> None:
    response = http.post(
        "/rest/v1/rpc/fail", json={"kind": kind}, headers={"Authorization": f"Bearer {service_key}"}
    )

    assert response.status_code == status
    assert response.json()["code"] == code


def test_custom_pgrst_error_sets_body_and_headers(http: httpx.Client, service_key: str) -> None:
    response = http.post(
        "/rest/v1/rpc/fail",
        json={"kind": "custom"},
        headers={"Authorization": f"Bearer {service_key}"},
    )

    assert response.json() == {"code": "X1", "details": "d", "hint": "h", "message": "custom body"}
    assert response.headers["x-powered-by"] == "tests"


def test_unique_violation_is_409_23505(
    service: Client, http: httpx.Client, service_key: str
) -> None:
    name = unique("dup")
    service.rpc("add_item", {"p_name": name, "p_qty": 1}).execute()

    error = rpc_error(service, "add_item", {"p_name": name, "p_qty": 1})
    raw = http.post(
        "/rest/v1/rpc/add_item",
        json={"p_name": name, "p_qty": 1},
        headers={"Authorization": f"Bearer {service_key}"},
    )

    assert error.code == "23505"
    assert error.message == 'duplicate key value violates unique constraint "items_name_key"'
    assert error.details == f"Key (name)=({name}) already exists."
    assert raw.status_code == 409


def test_check_violation_is_400_23514(http: httpx.Client, service_key: str) -> None:
    response = http.post(
        "/rest/v1/rpc/add_item",
        json={"p_name": unique("neg"), "p_qty": -1},
        headers={"Authorization": f"Bearer {service_key}"},
    )

    assert response.status_code == 400
    assert response.json()["code"] == "23514"


def test_invalid_uuid_is_400_22p02(service: Client, http: httpx.Client, service_key: str) -> None:
    args = {
        "id": "not-a-uuid",
        "n": 1,
        "label": "",
        "doc": {},
        "at": "2026-01-01T00:00:00Z",
        "moods": [],
        "tags": [],
    }

    error = rpc_error(service, "describe", args)
    raw = http.post(
        "/rest/v1/rpc/describe", json=args, headers={"Authorization": f"Bearer {service_key}"}
    )

    assert error.code == "22P02"
    assert error.message == 'invalid input syntax for type uuid: "not-a-uuid"'
    assert raw.status_code == 400


def test_changes_of_a_failed_call_are_rolled_back(service: Client) -> None:
    name = unique("rollback")
    service.rpc("add_item", {"p_name": name, "p_qty": 1}).execute()
    before = rpc_data(service, "count_items")

    rpc_error(service, "add_item", {"p_name": name, "p_qty": 1})

    assert rpc_data(service, "count_items") == before


def test_invalid_json_body_is_400_pgrst102(http: httpx.Client, service_key: str) -> None:
    response = http.post(
        "/rest/v1/rpc/add",
        content=b"{not json",
        headers={"Authorization": f"Bearer {service_key}", "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json() == {
        "code": "PGRST102",
        "details": None,
        "hint": None,
        "message": "Empty or invalid json",
    }


@pytest.mark.parametrize(
    "body",
    [
        # nested beyond the parser: a 400, not a 500
        b"[" * 50_000 + b"]" * 50_000,
        b'{"doc": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"doc": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
        # not strict JSON
        b'{"doc": NaN}',
        b'{"doc": -Infinity}',
        b'{"doc": "\xff"}',
        b"\xef\xbb\xbf{}",
    ],
    ids=[
        "deep-array",
        "deep-array-argument",
        "deep-object-argument",
        "nan",
        "infinity",
        "invalid-utf8",
        "bom",
    ],
)
def test_a_body_nested_beyond_the_parser_or_not_strict_json_is_400_pgrst102(
    http: httpx.Client, service_key: str, body: bytes
) -> None:
    response = http.post(
        "/rest/v1/rpc/echo_doc",
        content=body,
        headers={"Authorization": f"Bearer {service_key}", "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["code"] == "PGRST102"
    assert response.json()["message"] == "Empty or invalid json"


def test_the_body_text_reaches_postgres_unchanged(http: httpx.Client, service_key: str) -> None:
    headers = {"Authorization": f"Bearer {service_key}", "Content-Type": "application/json"}

    huge = http.post("/rest/v1/rpc/echo_doc", content=b'{"doc": {"n": 1e400}}', headers=headers)
    surrogate = http.post("/rest/v1/rpc/echo_doc", content=b'{"doc": "\\ud800"}', headers=headers)

    assert huge.status_code == 200
    assert huge.text == '{"n": 1' + "0" * 400 + "}"
    assert surrogate.status_code == 400
    assert surrogate.json()["code"].startswith("22")


def test_an_oversized_body_is_refused_before_it_is_read(
    http: httpx.Client, service_key: str
) -> None:
    headers = {"Authorization": f"Bearer {service_key}", "Content-Type": "application/json"}
    limit = DEFAULT_MAX_BODY_BYTES
    padding = b"x" * (limit - len(b'{"t": ""}'))

    at_limit = http.post(
        "/rest/v1/rpc/shout", content=b'{"t": "' + padding + b'"}', headers=headers
    )
    declared = http.post(
        "/rest/v1/rpc/shout", content=b'{"t": "' + padding + b'x"}', headers=headers
    )
    chunked = http.post(
        "/rest/v1/rpc/shout",
        content=iter([b'{"t": "', padding, b'x"}']),  # no Content-Length: chunked
        headers=headers,
    )

    assert at_limit.status_code == 200
    assert len(at_limit.json()) == len(padding)
    for refused in (declared, chunked):
        assert refused.status_code == 413
        assert refused.json()["code"] == "PGRST102"
    assert http.post("/rest/v1/rpc/add", json={"a": 1, "b": 1}, headers=headers).json() == 2


def test_unexposed_schema_is_406(http: httpx.Client, service_key: str) -> None:
    response = http.post(
        "/rest/v1/rpc/add",
        json={"a": 1, "b": 1},
        headers={"Authorization": f"Bearer {service_key}", "Content-Profile": "private"},
    )

    assert response.status_code == 406
    assert response.json()["code"] == "PGRST106"


def test_readiness_and_other_paths(http: httpx.Client) -> None:
    assert http.get("/rest/v1/").status_code == 200  # with the anon key
    assert http.get("/rest/v1/items").status_code == 404
    assert http.get("/nothing").json()["code"] == "PGRST125"


@pytest.mark.parametrize(
    ("sqlstate", "role", "status"),
    [
        ("08006", "service_role", 503),
        ("23503", "service_role", 409),
        ("23505", "anon", 409),
        ("23502", "anon", 400),
        ("22P02", "anon", 400),
        ("25006", "anon", 405),
        ("40001", "anon", 500),
        ("42883", "anon", 404),
        ("42P01", "anon", 404),
        ("42501", "anon", 401),
        ("42501", "authenticated", 403),
        ("53300", "anon", 503),
        ("57014", "anon", 500),
        ("P0001", "anon", 400),
        ("P0002", "anon", 500),
        ("PT404", "anon", 404),
        ("XX000", "anon", 500),
        ("42703", "anon", 400),
    ],
)
def test_sqlstate_status_table(sqlstate: str, role: str, status: int) -> None:
    assert sqlstate_status(sqlstate, "", role=role) == status


@pytest.mark.parametrize(
    ("sqlstate", "message", "status"),
    [
        ("22023", 'role "nobody" does not exist', 401),
        ("22023", "invalid value for parameter", 400),
        ("21000", "UPDATE requires a WHERE clause", 400),
        ("21000", "more than one row returned by a subquery used as an expression", 500),
    ],
)
def test_statuses_that_depend_on_the_message(sqlstate: str, message: str, status: int) -> None:
    # PostgREST v13 Error.hs pgErrorStatus
    assert sqlstate_status(sqlstate, message, role="service_role") == status


# --- availability ------------------------------------------------------------------------------


def test_database_down_is_503_pgrst000(service_key: str) -> None:
    dead = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=1"
    with (
        start_gateway(dead, JWT_SECRET, pool_timeout=0.5) as down,
        httpx.Client(base_url=down.url) as http,
    ):
        response = http.post(
            "/rest/v1/rpc/add",
            json={"a": 1, "b": 1},
            headers={"apikey": service_key, "Authorization": f"Bearer {service_key}"},
        )

    assert response.status_code == 503
    assert response.json()["code"] == "PGRST000"
    assert response.json()["message"] == "Database connection error. Retrying the connection."


def test_recovers_after_its_connections_are_killed(service: Client, gateway_db: str) -> None:
    assert rpc_data(service, "add", {"a": 1, "b": 1}) == 2
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        killed = [
            pid
            for (pid,) in conn.execute(
                "select pid from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid()"
            )
        ]
        conn.execute("select pg_terminate_backend(pid) from unnest(%s::int[]) pid", (killed,))

        # pg_terminate_backend only signals: until a backend has exited, its socket may not
        # yet say so, and the next call could still be handed that connection
        def exited() -> bool:
            alive = "select count(*) from pg_stat_activity where pid = any(%s)"
            row = conn.execute(alive, (killed,)).fetchone()
            return row is not None and row[0] == 0

        wait_until(exited, "the terminated backends to exit")

    assert rpc_data(service, "add", {"a": 2, "b": 2}) == 4


def test_stop_closes_idle_keep_alive_connections(gateway_db: str, service_key: str) -> None:
    handle = start_gateway(gateway_db, JWT_SECRET)
    with httpx.Client(base_url=handle.url) as http:
        response = http.post(
            "/rest/v1/rpc/add",
            json={"a": 1, "b": 1},
            headers={"apikey": service_key},
        )
        started = time.perf_counter()
        handle.stop()

    assert response.json() == 2
    # without closing them, stop() would wait on the idle connection until the client left
    assert time.perf_counter() - started < 30


def test_wsgi_app_works_without_a_server(gateway_db: str, service_key: str) -> None:
    app = create_app(gateway_db, JWT_SECRET)
    try:
        client = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://gw")
        with client:
            response = client.post(
                "/rest/v1/rpc/add",
                json={"a": 3, "b": 4},
                headers={"apikey": service_key},
            )
    finally:
        app.close()

    assert response.json() == 7


def test_handle_reports_its_url(gateway: GatewayHandle) -> None:
    assert gateway.url == f"http://127.0.0.1:{gateway.port}"


@pytest.mark.parametrize("kind", list(ReturnKind))
@pytest.mark.parametrize(("text", "page_total"), [('{"a": "é ☃"}', 1), ("[]", 0), ("null", 0)])
def test_the_asgi_answer_is_what_a_wsgi_server_sends_for_the_response(
    kind: ReturnKind, text: str, page_total: int
) -> None:
    # RestApp sends answer()'s bytes for a call; the WSGI path sends respond()'s Response.
    routine = Routine("public", "f", (), kind, volatile=True)
    planned = Planned(
        Identity("anon", {"role": "anon"}),
        Call(routine, (), whole_body=False),
        settings=(),
        body_text="{}",
        isolation=None,
        read_only=False,
    )
    environ = {"REQUEST_METHOD": "POST", "SERVER_PROTOCOL": "HTTP/1.1"}

    made = answer(planned, text, page_total)
    made = made if isinstance(made, Answer) else as_sent(made, environ)

    assert made == as_sent(respond(planned, text, page_total), environ)
