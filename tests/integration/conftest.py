"""The store and the functions in-process, against the real gateway (``gateway``,
tests/conftest.py) and a real Postgres."""

from __future__ import annotations

# Re-exported only for tests/integration/test_functions.py, which still imports it from here
# (that file is being rewritten for the function manifest): its import moves to tests.support,
# and this conftest goes.
from tests.support import JWT_SECRET

__all__ = ["JWT_SECRET"]
