"""aiocometd 0.4.5 (long-polling only) against Halley, alone and with the Node CometD echo peer."""
import asyncio
import time
import uuid

import pytest

import aiocometd_compat  # noqa: F401  (must precede the use of aiocometd on Python >= 3.10)
from aiocometd import Client, ConnectionType

# How long to keep listening after the expected messages, to catch duplicates.
QUIET = 0.6


def run(coro, timeout=30):
    """Run a coroutine to completion, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def new_client(url):
    return Client(url, connection_types=[ConnectionType.LONG_POLLING], connection_timeout=10)


async def receive(client, timeout=5.0):
    return await asyncio.wait_for(client.receive(), timeout)


async def assert_nothing_more(client, quiet=QUIET):
    try:
        extra = await asyncio.wait_for(client.receive(), quiet)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected extra message: {extra!r}")


async def open_client(url):
    client = new_client(url)
    await asyncio.wait_for(client.open(), 10)
    # aiocometd negotiated long-polling (the only type it was allowed to use).
    assert client._transport is not None  # pylint: disable=protected-access
    assert client._transport.connection_type == ConnectionType.LONG_POLLING  # pylint: disable=protected-access
    assert client.closed is False
    return client


async def close_client(client):
    await asyncio.wait_for(client.close(), 10)


def test_echo_through_node_cometd_peer(start_broker, start_echo_peer):
    url = start_broker("--timeout", "5000").url
    start_echo_peer(url)

    async def scenario():
        client = await open_client(url)
        try:
            await client.subscribe("/echo/out")
            payloads = [
                {"text": "ping", "n": 1, "nested": {"list": [1, "two", None, True]}, "id": str(uuid.uuid4())},
                "a plain string",
                [1, 2, 3],
            ]
            for data in payloads:
                reply = await asyncio.wait_for(client.publish("/echo/in", data), 5)
                assert reply["successful"] is True
                assert reply["channel"] == "/echo/in"
                assert "data" not in reply, f"publish ack must not carry data: {reply!r}"
                message = await receive(client)
                assert message["channel"] == "/echo/out", message
                assert message["data"] == data
            await assert_nothing_more(client)
        finally:
            await close_client(client)

    run(scenario())


def test_pubsub_round_trip_with_itself(start_broker):
    url = start_broker("--timeout", "5000").url

    async def scenario():
        client = await open_client(url)
        other = await open_client(url)
        try:
            await client.subscribe("/py/room")
            await other.subscribe("/py/*")
            data = {"text": "hello from python", "n": 3.5, "id": str(uuid.uuid4())}
            reply = await asyncio.wait_for(client.publish("/py/room", data), 5)
            assert reply["successful"] is True
            assert "data" not in reply, f"publish ack must not carry data: {reply!r}"

            mine = await receive(client)
            assert mine["channel"] == "/py/room"
            assert mine["data"] == data
            theirs = await receive(other)
            assert theirs["channel"] == "/py/room"
            assert theirs["data"] == data
            assert theirs.get("clientId") != client._transport.client_id, \
                "the publisher's clientId must not leak"  # pylint: disable=protected-access
            await assert_nothing_more(client)
            await assert_nothing_more(other, quiet=0.1)

            # After unsubscribing, the publisher no longer gets its own messages; the other client still does.
            await client.unsubscribe("/py/room")
            data2 = {"text": "second", "id": str(uuid.uuid4())}
            await asyncio.wait_for(client.publish("/py/room", data2), 5)
            theirs = await receive(other)
            assert theirs["data"] == data2
            await assert_nothing_more(client)
        finally:
            await close_client(client)
            await close_client(other)

    run(scenario())


def test_open_returns_promptly_with_long_hold_timeout(start_broker):
    # The first /meta/connect after a handshake must not be held (aiocometd blocks open() on it).
    url = start_broker("--timeout", "20000").url

    async def scenario():
        client = new_client(url)
        try:
            started = time.monotonic()
            try:
                await asyncio.wait_for(client.open(), 15)
            except asyncio.TimeoutError:
                raise AssertionError("open() did not return within 15 s: the first /meta/connect was held") from None
            elapsed = time.monotonic() - started
            assert elapsed < 3.0, f"open() took {elapsed:.2f}s: the first /meta/connect was held"
            assert client._transport.connection_type == ConnectionType.LONG_POLLING  # pylint: disable=protected-access
            # The session works: a publish on a subscribed channel comes back while connects are held.
            await client.subscribe("/py/prompt")
            await asyncio.sleep(0.5)  # let the next (held) /meta/connect reach the broker
            data = {"prompt": True, "id": str(uuid.uuid4())}
            await asyncio.wait_for(client.publish("/py/prompt", data), 5)
            message = await receive(client, timeout=5)
            assert message["data"] == data
            closing = time.monotonic()
            await close_client(client)
            assert time.monotonic() - closing < 5.0, "close() was not prompt"
        finally:
            if not client.closed:
                try:
                    await asyncio.wait_for(client.close(), 5)
                except Exception:  # pylint: disable=broad-except
                    pass

    run(scenario(), timeout=40)


@pytest.mark.parametrize("stop_signal", ["SIGTERM", "SIGKILL"])
def test_recovers_after_broker_restart(start_broker, stop_signal):
    # aiocometd re-handshakes on 402 + reconnect:"handshake" and re-sends its subscriptions in the batch of
    # its next /meta/connect ([connect, subscribe, ...], see aiocometd/transports/base.py _connect()).
    # SIGTERM = a graceful restart (the broker may answer held connects while shutting down),
    # SIGKILL = a crash (held connects just fail).
    broker = start_broker("--timeout", "2000")

    async def scenario():
        client = await open_client(broker.url)
        publisher = None
        try:
            await client.subscribe("/py/recover")
            first_client_id = client._transport.client_id  # pylint: disable=protected-access
            data1 = {"n": 1, "id": str(uuid.uuid4())}
            await asyncio.wait_for(client.publish("/py/recover", data1), 5)
            assert (await receive(client))["data"] == data1

            await asyncio.get_running_loop().run_in_executor(None, lambda: broker.restart(kill=stop_signal == "SIGKILL"))

            # Wait for the new session (re-handshake) and for the re-subscription to be in place:
            # publish from another client until a copy comes back (each publish at most once).
            publisher = await open_client(broker.url)
            deadline = time.monotonic() + 15
            got = None
            attempt = 0
            while got is None and time.monotonic() < deadline:
                attempt += 1
                await asyncio.wait_for(publisher.publish("/py/recover", {"n": 2, "attempt": attempt}), 5)
                try:
                    got = await receive(client, timeout=0.5)
                except asyncio.TimeoutError:
                    pass
            assert got is not None, "aiocometd did not recover its subscription after the broker restart"
            assert got["channel"] == "/py/recover"
            assert got["data"]["n"] == 2
            new_client_id = client._transport.client_id  # pylint: disable=protected-access
            assert new_client_id and new_client_id != first_client_id, "a new session after the restart"
            # Later publishes arrive exactly once each.
            data3 = {"n": 3, "id": str(uuid.uuid4())}
            await asyncio.wait_for(publisher.publish("/py/recover", data3), 5)
            while True:
                message = await receive(client)
                if message["data"] == data3:
                    break
                # only late copies of the recovery attempts may precede it, each at most once
                assert message["data"]["n"] == 2 and message["data"]["attempt"] > got["data"]["attempt"], message
            await assert_nothing_more(client)
        finally:
            await close_client(client)
            if publisher is not None:
                await close_client(publisher)

    run(scenario(), timeout=45)
