"""Refresh-token rotation as GoTrue does it (``internal/tokens/service.go``,
``RefreshTokenGrant``), through supabase-py: a just-rotated token may be reused within the reuse
interval (``GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL``; Supabase sets 10 s), and a reuse
outside it revokes the whole family and answers 400 ``refresh_token_already_used``.

The "within" cases run on the default 10 s server; the "outside" cases on a server started with
a short interval, waiting just past it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from supabase import Client
from supabase_auth.errors import AuthApiError
from supabase_auth.types import Session

from infra.local.postgres import Postgres
from tests.support import LocalSupabase, start_local_supabase

SHORT_INTERVAL_S = 0.3

ClientFor = Callable[[LocalSupabase], Client]


@pytest.fixture(scope="module")
def short_reuse_server(
    pg: Postgres, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSupabase]:
    server = start_local_supabase(
        pg,
        template_db,
        tmp_path_factory.mktemp("supabase-short-reuse"),
        "--auth-refresh-token-reuse-interval",
        str(SHORT_INTERVAL_S),
    )
    yield server
    server.stop()


def signed_in(server: LocalSupabase, client_for: ClientFor) -> Session:
    session = client_for(server).auth.sign_in_anonymously().session
    assert session is not None
    return session


def refresh(server: LocalSupabase, client_for: ClientFor, token: str) -> Session:
    session = client_for(server).auth.refresh_session(token).session
    assert session is not None
    return session


def refused_code(server: LocalSupabase, client_for: ClientFor, token: str) -> str | None:
    with pytest.raises(AuthApiError) as refused:
        client_for(server).auth.refresh_session(token)
    return refused.value.code


def past_the_interval() -> None:
    time.sleep(SHORT_INTERVAL_S + 0.05)


def test_reusing_the_just_rotated_token_gives_back_the_active_one(
    supabase_server: LocalSupabase, client_for: ClientFor
) -> None:
    first = signed_in(supabase_server, client_for)
    second = refresh(supabase_server, client_for, first.refresh_token)

    # the client never stored `second` (a lost answer) and tries the old token again
    again = refresh(supabase_server, client_for, first.refresh_token)

    assert again.refresh_token == second.refresh_token, "no new branch: the active token back"
    assert again.access_token != first.access_token and again.user.id == first.user.id
    third = refresh(supabase_server, client_for, again.refresh_token)
    assert third.refresh_token not in {first.refresh_token, second.refresh_token}


def test_an_older_token_within_the_interval_gets_a_new_branch(
    supabase_server: LocalSupabase, client_for: ClientFor
) -> None:
    first = signed_in(supabase_server, client_for)
    second = refresh(supabase_server, client_for, first.refresh_token)
    third = refresh(supabase_server, client_for, second.refresh_token)

    # two tabs refreshing at once: the first token is no longer the active one's parent
    branch = refresh(supabase_server, client_for, first.refresh_token)

    assert branch.refresh_token not in {second.refresh_token, third.refresh_token}
    assert branch.user.id == first.user.id
    # both branches stay usable: GoTrue revokes nothing on an allowed reuse
    assert refresh(supabase_server, client_for, third.refresh_token).user.id == first.user.id
    assert refresh(supabase_server, client_for, branch.refresh_token).user.id == first.user.id


def test_the_active_token_survives_the_reuse_interval(
    short_reuse_server: LocalSupabase, client_for: ClientFor
) -> None:
    first = signed_in(short_reuse_server, client_for)
    second = refresh(short_reuse_server, client_for, first.refresh_token)

    past_the_interval()

    assert refresh(short_reuse_server, client_for, second.refresh_token).user.id == first.user.id


def test_reuse_past_the_interval_is_refused_and_revokes_the_whole_family(
    short_reuse_server: LocalSupabase, client_for: ClientFor
) -> None:
    first = signed_in(short_reuse_server, client_for)
    second = refresh(short_reuse_server, client_for, first.refresh_token)
    third = refresh(short_reuse_server, client_for, second.refresh_token)
    other = signed_in(short_reuse_server, client_for)  # another session of another visitor
    past_the_interval()

    assert refused_code(short_reuse_server, client_for, first.refresh_token) == (
        "refresh_token_already_used"
    )

    # the family's live token was revoked with it; once its own reuse window has passed (GoTrue
    # stamps the revocation time on every revoked row) it is refused too
    past_the_interval()
    assert refused_code(short_reuse_server, client_for, third.refresh_token) == (
        "refresh_token_already_used"
    )
    assert refresh(short_reuse_server, client_for, other.refresh_token).user.id == other.user.id


def test_an_unknown_refresh_token_is_not_found(
    supabase_server: LocalSupabase, client_for: ClientFor
) -> None:
    assert refused_code(supabase_server, client_for, "never-issued-token") == (
        "refresh_token_not_found"
    )
