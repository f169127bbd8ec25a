"""Case 15 with the Python client: the socket drops (the server restarts), the client
reconnects and rejoins by itself, and later changes arrive."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.realtime.listen import listen, until
from tests.support import LocalSupabase


# realtime-py 2.34.1 reads ConnectionClosed.code and .reason on its reconnect path, deprecated in
# websockets 15; under filterwarnings=error that would kill the client's own reconnect task.
@pytest.mark.filterwarnings("ignore:ConnectionClosed.* is deprecated:DeprecationWarning")
def test_after_the_socket_drops_the_python_client_rejoins_and_receives_later_changes(
    supabase_server: LocalSupabase,
) -> None:
    user = str(uuid.uuid4())

    async def scenario() -> tuple[list[str], str]:
        listener = await listen(
            supabase_server,
            "reconnect",
            [("INSERT", "ai_jobs", None)],
            as_user=user,
            # back-off 0.2 s doubling: 8 attempts span ~25 s, a restart on a loaded machine
            max_retries=8,
        )
        await asyncio.to_thread(supabase_server.restart)

        def subscribed() -> int:
            return sum(s["message"] == "Subscribed to PostgreSQL" for s in listener.systems)

        await until(lambda: subscribed() == 2, timeout_s=60)
        job_id = supabase_server.new_job(user)
        await until(lambda: len(listener.payloads()) == 1)
        await listener.close()
        return [str(p["data"]["record"]["id"]) for p in listener.payloads()], job_id

    received, created = asyncio.run(scenario())

    assert received == [created]
