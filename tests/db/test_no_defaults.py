"""The SQL functions the store calls take no defaults, and the store passes every argument.

A default in SQL is a second copy of a setting (``claim_job``'s 600 s lease once disagreed
with ``LEASE_SECONDS``); this walks what ``shared/store.py`` calls instead of a hand-kept
list, so a new function or argument is checked as soon as the store uses it.
"""

from __future__ import annotations

import psycopg

from tests.support import store_calls


def test_every_function_the_store_calls_has_no_default_and_gets_every_argument(
    db_uri: str,
) -> None:
    calls = store_calls()
    with psycopg.connect(db_uri) as conn:
        rows = conn.execute(
            """
            select p.proname, p.pronargdefaults,
                   array(select name from unnest(p.proargnames, p.proargmodes) as a(name, mode)
                         where mode is null or mode in ('i', 'b'))
            from pg_proc p join pg_namespace n on n.oid = p.pronamespace
            where n.nspname = 'public' and p.proname = any(%s)
            """,
            (list(calls),),
        ).fetchall()

    found = {name: (defaults, set(arguments)) for name, defaults, arguments in rows}
    assert len(calls) >= 14
    assert set(found) == set(calls), "one SQL function per store call, none overloaded"
    for name, passed in calls.items():
        defaults, arguments = found[name]
        assert defaults == 0, f"{name} still has {defaults} default(s)"
        assert passed == arguments, f"{name}: the store passes {passed}, SQL takes {arguments}"
