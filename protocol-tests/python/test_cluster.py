"""aiocometd 0.4.5 (long-polling) through HAProxy in front of three Halley nodes on the Redis engine (issue 15):
every request of a session may land on any node. Run by the cluster stage: `run.sh -m cluster`."""
import asyncio

import pytest

import aiocometd_compat  # noqa: F401  (must precede the use of aiocometd on Python >= 3.10)
from aiocometd import Client, ConnectionType

QUIET = 0.6
pytestmark = pytest.mark.cluster


async def open_client(url):
    client = Client(url, connection_types=[ConnectionType.LONG_POLLING], connection_timeout=10)
    await asyncio.wait_for(client.open(), 10)
    return client


async def receive_all(client, count, timeout=15.0):
    messages = []
    async def collect():
        while len(messages) < count:
            messages.append(await client.receive())
    await asyncio.wait_for(collect(), timeout)
    try:
        extra = await asyncio.wait_for(client.receive(), QUIET)
    except asyncio.TimeoutError:
        return messages
    raise AssertionError(f"unexpected extra message: {extra!r}")


def test_aiocometd_clients_cross_messages_through_haproxy(start_cluster):
    cluster = start_cluster("python", "--timeout", "3000")

    async def scenario():
        # One client through HAProxy (its requests spread over the nodes), one pinned to the last node.
        a = await open_client(cluster["url"])
        b = await open_client(cluster["nodeUrls"][-1])
        try:
            await asyncio.wait_for(a.subscribe("/cluster/py/to-a"), 5)
            await asyncio.wait_for(b.subscribe("/cluster/py/to-b"), 5)
            for n in range(20):
                reply = await asyncio.wait_for(b.publish("/cluster/py/to-a", {"n": n}), 5)
                assert reply["successful"] is True, reply
                reply = await asyncio.wait_for(a.publish("/cluster/py/to-b", {"n": n}), 5)
                assert reply["successful"] is True, reply
            at_a = await receive_all(a, 20)
            at_b = await receive_all(b, 20)
            assert [m["data"]["n"] for m in at_a] == list(range(20)), at_a
            assert [m["data"]["n"] for m in at_b] == list(range(20)), at_b
            assert {m["channel"] for m in at_a} == {"/cluster/py/to-a"}
        finally:
            await asyncio.wait_for(a.close(), 10)
            await asyncio.wait_for(b.close(), 10)

    asyncio.run(asyncio.wait_for(scenario(), 60))
