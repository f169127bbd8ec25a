"""Google's certificates are fetched once per their Cache-Control lifetime, not per token.

Real HTTP: the Cloud Tasks emulator's certificate server (``Cache-Control: public,
max-age=3600``, as Google's endpoint sends), google-auth's requests transport and
``id_token.verify_token`` as the processor calls them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import google.auth.transport.requests
import pytest
from google.oauth2 import id_token

from infra.local.tasks_emulator.oidc import OidcSigner
from shared.certs import REFETCH_COOLDOWN_S, CachingRequest, max_age
from tests.support import google_certs

AUDIENCE = "https://asia-northeast1-p.cloudfunctions.net/ai-jobs-process"
INVOKER = "invoker@p.iam.gserviceaccount.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def certs() -> Iterator[tuple[OidcSigner, str]]:
    with google_certs() as signed:
        yield signed


def _verify(transport: Any, token: str, url: str) -> Any:
    return id_token.verify_token(token, transport, AUDIENCE, url)


def test_many_tokens_cost_one_fetch_until_the_answer_is_stale(
    certs: tuple[OidcSigner, str],
) -> None:
    signer, url = certs
    clock = Clock()
    transport = CachingRequest(google.auth.transport.requests.Request(), clock)
    for _ in range(20):
        token = signer.mint(service_account_email=INVOKER, audience=AUDIENCE)
        assert _verify(transport, token, url)["email"] == INVOKER
    assert transport.fetches == 1
    clock.now += 3599
    _verify(transport, signer.mint(service_account_email=INVOKER, audience=AUDIENCE), url)
    assert transport.fetches == 1
    clock.now += 2  # past max-age=3600
    _verify(transport, signer.mint(service_account_email=INVOKER, audience=AUDIENCE), url)
    assert transport.fetches == 2


def test_an_unknown_key_id_is_refused_and_forces_at_most_one_fetch_per_cooldown(
    certs: tuple[OidcSigner, str],
) -> None:
    signer, url = certs
    clock = Clock()
    transport = CachingRequest(google.auth.transport.requests.Request(), clock)
    _verify(transport, signer.mint(service_account_email=INVOKER, audience=AUDIENCE), url)
    stranger = OidcSigner().mint(service_account_email=INVOKER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="Certificate for key id"):
        _verify(transport, stranger, url)
    assert transport.forget() is True  # the caller looks once more at a fresh document
    assert transport.forget() is False  # ... but not again within the cooldown
    with pytest.raises(ValueError, match="Certificate for key id"):
        _verify(transport, stranger, url)
    assert transport.fetches == 2
    clock.now += REFETCH_COOLDOWN_S
    assert transport.forget() is True


def test_a_certificate_endpoint_that_never_answers_times_out() -> None:
    # google-auth's _fetch_certs passes no timeout; without one this waited forever
    import socket

    import google.auth.exceptions

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts (the kernel does), never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/oauth2/v1/certs"
        transport = CachingRequest(google.auth.transport.requests.Request(), fetch_timeout_s=0.3)
        token = OidcSigner().mint(service_account_email=INVOKER, audience=AUDIENCE)
        with pytest.raises(google.auth.exceptions.TransportError):
            _verify(transport, token, url)


def test_an_answer_that_aged_in_a_cache_on_the_way_is_kept_only_for_what_is_left() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Aged(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"{}"
            self.send_response(200)
            self.send_header("Cache-Control", "public, max-age=100")
            self.send_header("Age", "90")  # a proxy held it for 90 s already
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Aged)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/certs"
        clock = Clock()
        transport = CachingRequest(google.auth.transport.requests.Request(), clock)
        transport(url)
        clock.now += 9
        transport(url)
        assert transport.fetches == 1
        clock.now += 2  # 90 + 11 s old: stale
        transport(url)
        assert transport.fetches == 2
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=19845, must-revalidate, no-transform", 19845),
        ("max-age=0", 0),
        ("no-store, max-age=60", 0),
        ("no-cache", 0),
        (None, 0),
        ("private", 0),
    ],
)
def test_max_age_reads_cache_control_as_google_sends_it(header: str | None, seconds: int) -> None:
    assert max_age(header) == seconds
