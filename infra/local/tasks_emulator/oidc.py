"""OIDC tokens as Cloud Tasks attaches them, and the certificate endpoint that verifies them.

Cloud Tasks signs an ID token for the task's service account with Google's keys; receivers
check it against `https://www.googleapis.com/oauth2/v1/certs`. The emulator does the same with
an RSA key made at start: `OidcSigner` mints RS256 tokens with Google's claims and a `kid`
header, and `CertsServer` publishes the matching X.509 certificate in the v1 certs format
(`{"<kid>": "-----BEGIN CERTIFICATE-----..."}`), so `google.oauth2.id_token.verify_token(...,
certs_url=...)` verifies emulator tokens exactly as it verifies Google's.

A dispatch does not sign a token of its own: `OidcSigner.token` hands out the one last minted
for the same account and audience until it is within `REFRESH_MARGIN_S` of expiring, as
Google's auth libraries cache ID tokens (google-auth refreshes a credential 3 min 45 s before
its expiry, `google.auth._helpers.REFRESH_THRESHOLD`). An RS256 signature costs about a
millisecond of CPU; a cached token, nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

GOOGLE_ISSUER = "https://accounts.google.com"
CERTS_PATH = "/oauth2/v1/certs"
TOKEN_LIFETIME_S = 3600
#: A cached token is replaced when it has less than this left (google-auth's threshold).
REFRESH_MARGIN_S = 225
#: Distinct (account, audience) pairs remembered; past this the cache starts over.
_MAX_CACHED_TOKENS = 1024
_CERT_LIFETIME = dt.timedelta(days=2)
#: how long `CertsServer.stop` waits between connections that wake the serving loop
_STOP_POKE_S = 0.05


def _subject_id(email: str) -> str:
    """A stable 21-digit numeric id per account, shaped like Google's `sub` for accounts."""
    digest = int.from_bytes(hashlib.sha256(email.encode()).digest()[:16], "big")
    return f"1{digest % 10**20:020d}"


class OidcSigner:
    """Holds the emulator's signing key and its self-signed certificate."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tasks-emulator.local")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + _CERT_LIFETIME)
            .sign(self._key, hashes.SHA256())
        )
        # Google's key ids are hex digests; the certificate's fingerprint is one too.
        self.kid = certificate.fingerprint(hashes.SHA1()).hex()
        self._certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        self._tokens: dict[tuple[str, str], tuple[str, int]] = {}  #: -> (token, its exp)
        self._tokens_lock = threading.Lock()

    def certs_document(self) -> bytes:
        """The body of the v1 certs endpoint: key id → PEM certificate."""
        return json.dumps({self.kid: self._certificate_pem}).encode()

    def token(self, *, service_account_email: str, audience: str, now: float | None = None) -> str:
        """The token a dispatch carries: the cached one for this account and audience while it
        has more than `REFRESH_MARGIN_S` left, else a new one (then cached)."""
        at = time.time() if now is None else now
        key = (service_account_email, audience)
        with self._tokens_lock:
            cached = self._tokens.get(key)
            if cached is not None and at < cached[1] - REFRESH_MARGIN_S:
                return cached[0]
        issued_at = int(at)
        token = self.mint(service_account_email=service_account_email, audience=audience, now=at)
        with self._tokens_lock:
            if len(self._tokens) >= _MAX_CACHED_TOKENS:
                self._tokens.clear()
            self._tokens[key] = (token, issued_at + TOKEN_LIFETIME_S)
        return token

    def mint(self, *, service_account_email: str, audience: str, now: float | None = None) -> str:
        """An ID token with the claims Google puts in a service account's OIDC token."""
        issued_at = int(time.time() if now is None else now)
        subject = _subject_id(service_account_email)
        claims: dict[str, Any] = {
            "aud": audience,
            "azp": subject,
            "email": service_account_email,
            "email_verified": True,
            "exp": issued_at + TOKEN_LIFETIME_S,
            "iat": issued_at,
            "iss": GOOGLE_ISSUER,
            "sub": subject,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})


class _CertsHandler(BaseHTTPRequestHandler):
    server: _CertsHTTPServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != CERTS_PATH:
            self.send_error(404)
            return
        body = self.server.document
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "public, max-age=3600")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Certificate fetches are routine; the emulator logs dispatches only.
        return


class _CertsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], document: bytes) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _CertsHandler)
        self.document = document


class CertsServer:
    """Serves `OidcSigner.certs_document()` at `http://HOST:PORT/oauth2/v1/certs`."""

    def __init__(self, signer: OidcSigner, host: str) -> None:
        self._httpd = _CertsHTTPServer((host, 0), signer.certs_document())
        # No poll interval: the loop sleeps until a connection comes (it woke ten times a
        # second for nothing, about half a millisecond of CPU a second); `stop` wakes it.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": None},
            name="tasks-emulator-certs",
            daemon=True,
        )
        port = self._httpd.server_address[1]
        self._address = (host, port)
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{port}{CERTS_PATH}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            # shutdown() asks the loop to end and waits for it; the loop sees the request
            # only when a connection wakes it, so connect until it has ended (one made before
            # the request is served as any other, and the loop sleeps again).
            stopper = threading.Thread(
                target=self._httpd.shutdown, name="tasks-emulator-certs-stop"
            )
            stopper.start()
            while self._thread.is_alive():
                with contextlib.suppress(OSError), socket.create_connection(self._address, 1):
                    pass
                self._thread.join(_STOP_POKE_S)
            stopper.join()
        self._httpd.server_close()
