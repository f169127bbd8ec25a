"""Google's signing certificates, fetched once per their ``Cache-Control`` lifetime.

``google.oauth2.id_token.verify_token`` fetches the certificates on every call: its docstring
says "By default, this will re-fetch certificates for each verification. Because Google's
public keys are only changed infrequently (on the order of once per day), you may wish to take
advantage of caching to reduce latency" (google-auth, ``google/oauth2/id_token.py``). With
``PROCESSOR_VERIFY_OIDC`` on, that was an HTTPS request to Google before every claim.

``CachingRequest`` is the ``google.auth.transport.Request`` handed to ``verify_token``: a GET
answered 200 with ``Cache-Control: max-age=N`` (Google's certs endpoint sends public,
max-age of several hours) is kept for N seconds and answered from memory; anything else goes
to the wrapped transport as before. ``forget`` drops the kept answers so a token signed with a
key the kept document lacks (a key Google started using after the fetch) is checked against a
fresh document — at most once per ``REFETCH_COOLDOWN_S``, so made-up key ids cannot make
every request a fetch.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import google.auth.transport

#: the least time between two fetches forced by an unknown key id
REFETCH_COOLDOWN_S = 30.0
#: a fetch's timeout when google-auth gives none (``_fetch_certs`` passes none; requests'
#: transport then waited 120 s): a stalled endpoint is a 503 the task retries, not a
#: processor request held until its dispatch deadline
FETCH_TIMEOUT_S = 10.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
_NO_STORE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\b", re.IGNORECASE)


def max_age(cache_control: str | None) -> int:
    """Seconds an answer may be reused by its ``Cache-Control`` header (0: not at all)."""
    if not cache_control or _NO_STORE.search(cache_control):
        return 0
    found = _MAX_AGE.search(cache_control)
    return int(found.group(1)) if found else 0


def _age(header: str | None) -> int:
    """The ``Age`` header's seconds (RFC 9111 5.1), 0 when absent or malformed."""
    return int(header) if header and header.strip().isdigit() else 0


class CachingRequest(google.auth.transport.Request):
    """A ``google.auth.transport.Request`` that keeps cacheable GET answers (thread-safe)."""

    def __init__(
        self, inner: Any, clock: Any = time.monotonic, fetch_timeout_s: float = FETCH_TIMEOUT_S
    ) -> None:
        self._inner = inner
        self._clock = clock
        self._fetch_timeout_s = fetch_timeout_s
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, Any]] = {}
        self._forced_at = -REFETCH_COOLDOWN_S  # the clock may start near 0 (tests)
        self.fetches = 0  # answers that came from the network (tests and the bench read it)

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        if timeout is None:
            timeout = self._fetch_timeout_s
        if method != "GET" or body is not None:
            return self._inner(url, method=method, body=body, headers=headers, timeout=timeout)
        now = self._clock()
        with self._lock:
            kept = self._kept.get(url)
            if kept is not None and kept[0] > now:
                return kept[1]
        response = self._inner(url, method="GET", headers=headers, timeout=timeout, **kwargs)
        self.fetches += 1
        lifetime = max_age(response.headers.get("Cache-Control")) if response.status == 200 else 0
        lifetime -= _age(response.headers.get("Age"))  # what a cache on the way already used
        if lifetime > 0:
            _ = response.data  # read once now, so every later caller gets the same bytes
            with self._lock:
                self._kept[url] = (now + lifetime, response)
        return response

    def forget(self) -> bool:
        """Drop every kept answer, so the next check fetches afresh; False (nothing dropped)
        within the cooldown. A process verifies against one certificates URL, so forgetting
        all of it is forgetting that one."""
        now = self._clock()
        with self._lock:
            if now - self._forced_at < REFETCH_COOLDOWN_S:
                return False
            self._forced_at = now
            dropped, self._kept = bool(self._kept), {}
            return dropped
