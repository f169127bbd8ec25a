"""The gateway quotes the values of a call's settings into its one query itself
(``rpc._setting_literal``: libpq's PQescapeLiteral, the repeating ones remembered): each
literal must be byte for byte what psycopg would have sent, read back as the value itself,
whatever the connection's encoding and ``standard_conforming_strings``, from memory or not.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import pq, sql

from infra.local.gateway import rpc

HOSTILE = [
    "it's",
    "\\",
    "\\'",
    "'\\",
    "\\\\'); select pg_sleep(5); --",
    "x'); drop table public.items; --",
    "$$ $1 %s %(body)s %%",
    "E'\\x41'",
    '"quoted" \\"',
    "ソ'",  # SJIS 0x83 0x5C: a backslash as the second byte
    "表\\'",  # SJIS 0x95 0x5C
    "é ü ß",
    "\u00a5'",  # the yen sign: 0x5C in SJIS
]
ENCODINGS = ["UTF8", "LATIN1", "SJIS", "EUC_JP", "BIG5", "GBK", "WIN1252"]


@pytest.mark.parametrize("conforming", ["on", "off"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_setting_literal_is_psycopgs_and_reads_back_as_the_value(
    gateway_db: str, encoding: str, conforming: str
) -> None:
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        conn.execute(f"set client_encoding to '{encoding}'")
        conn.execute(f"set standard_conforming_strings to {conforming}")
        conn.execute("set escape_string_warning to off")
        escaping = pq.Escaping(conn.pgconn)
        python_encoding = conn.info.encoding
        tried = 0
        for value in HOSTILE:
            try:
                value.encode(python_encoding)
            except UnicodeEncodeError:
                continue  # the gateway refuses such a value before it quotes anything
            tried += 1
            first = rpc._setting_literal(escaping, python_encoding, value)
            remembered = rpc._setting_literal(escaping, python_encoding, value)
            with psycopg.ClientCursor(conn) as cursor:
                cursor.execute(b"select " + remembered + b"::text")
                row = cursor.fetchone()

            assert first == remembered == sql.Literal(value).as_bytes(conn), (encoding, value)
            # what the encoding can hold of the value (SJIS reads the yen sign as a backslash)
            assert row == (value.encode(python_encoding).decode(python_encoding),)
        assert tried >= 5


def test_a_remembered_literal_is_not_reused_for_another_encoding(gateway_db: str) -> None:
    value = "é'"
    literals = []
    for encoding in ("UTF8", "LATIN1"):  # one process's gateways, two connections' encodings
        with psycopg.connect(gateway_db, autocommit=True) as conn:
            conn.execute(f"set client_encoding to '{encoding}'")
            escaping = pq.Escaping(conn.pgconn)
            literals.append(rpc._setting_literal(escaping, conn.info.encoding, value))

    assert literals == ["'é'''".encode(), "'é'''".encode("iso8859-1")]


def test_a_nul_in_a_setting_is_refused_not_cut_short(gateway_db: str) -> None:
    # libpq's escaping would stop at the NUL: "a" would be sent for "a\0b"
    with psycopg.connect(gateway_db, autocommit=True) as conn, pytest.raises(psycopg.DataError):
        rpc._setting_literal(pq.Escaping(conn.pgconn), conn.info.encoding, "a\x00b")
