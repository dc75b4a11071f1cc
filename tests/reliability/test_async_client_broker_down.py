"""AsyncClient when its broker goes away and comes back (a PRIVATE node, never the shared broker).

While the broker is down a request fails at its deadline with ``ConnectionLost`` (typed, no hang);
the client reconnects in the background, and once the node is back a request is answered.
"""

from __future__ import annotations

import asyncio

import pytest

from serq.client import ConnectionLost, ServiceError
from serq.settings import Settings

from helpers.broker import echo_worker

pytest.importorskip("aio_pika", reason="AsyncClient needs the async extra: pip install 'serq[async]'")

from serq.client.aio import AsyncClient  # noqa: E402 - after the skip above

pytestmark = [pytest.mark.slow]


def test_broker_down_is_connection_lost_then_the_client_reconnects(private_broker, prefix):
    settings = Settings(amqp_url=private_broker.url, prefix=prefix, reconnect_max_s=1.0, heartbeat=5)

    async def main():
        async with AsyncClient(settings=settings) as client:
            await asyncio.to_thread(private_broker.ctl, "stop_app")
            started = asyncio.get_running_loop().time()
            with pytest.raises(ConnectionLost) as lost:
                await client.classify(b"while down", timeout=3)
            waited = asyncio.get_running_loop().time() - started
            await asyncio.to_thread(private_broker.ctl, "start_app")
            await asyncio.to_thread(private_broker.ctl, "await_startup")
            async with echo_worker(private_broker.url, f"{prefix}.classify"):
                with pytest.raises(ServiceError) as answered:
                    await client.classify(b"back again", timeout=60)
            return lost.value, waited, answered.value

    lost, waited, answered = asyncio.run(main())
    assert lost.code == "connection_lost" and waited < 10
    assert answered.message == "back again"  # the echo of this request: the client is connected again
