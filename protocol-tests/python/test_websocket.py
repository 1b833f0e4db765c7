"""aiocometd-ng 0.5.6 (the maintained aiocometd fork) over Halley's websocket transport (issue 14).

aiocometd-ng handshakes over HTTP (long-polling), then opens a socket whose first frame is a /meta/connect for
that session; its message ids restart at "0" on the socket. The peer is aiocometd 0.4.5 over long-polling.

aiocometd-ng still passes ``loop=`` to ``asyncio.wait_for`` in ``Client._wait_connection_timeout`` (client.py), so
on Python >= 3.10 its reconnect watchdog dies with a TypeError once a connection drops; these tests do not drop
connections, and the long-polling suite keeps aiocometd 0.4.5 with its shim (test_aiocometd.py).
"""
import asyncio
import uuid

import aiocometd_compat  # noqa: F401  (for the long-polling peer, aiocometd 0.4.5)
from aiocometd import Client as LongPollingClient, ConnectionType as LongPollingType
from aiocometd_ng import Client, ConnectionType
from aiocometd_ng.transports.websocket import WebSocketTransport

QUIET = 0.6

# Every payload aiocometd-ng sends on a socket, in order (recorded around its own send, which is unchanged).
SENT = []
_send = WebSocketTransport._send_socket_payload  # pylint: disable=protected-access


async def _recording_send(self, socket, payload):
    SENT.append(list(payload))
    return await _send(self, socket, payload)


WebSocketTransport._send_socket_payload = _recording_send  # pylint: disable=protected-access


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def receive(client, timeout=5.0):
    return await asyncio.wait_for(client.receive(), timeout)


async def assert_nothing_more(client, quiet=QUIET):
    try:
        extra = await asyncio.wait_for(client.receive(), quiet)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected extra message: {extra!r}")


def test_websocket_after_an_http_handshake_round_trips_with_a_long_polling_peer(start_broker):
    url = start_broker("--timeout", "5000").url

    async def scenario():
        SENT.clear()
        ws = Client(url, connection_types=[ConnectionType.WEBSOCKET], connection_timeout=10)
        lp = LongPollingClient(url, connection_types=[LongPollingType.LONG_POLLING], connection_timeout=10)
        await asyncio.wait_for(ws.open(), 10)
        await asyncio.wait_for(lp.open(), 10)
        try:
            transport = ws._transport  # pylint: disable=protected-access
            assert transport.connection_type == ConnectionType.WEBSOCKET
            assert lp._transport.connection_type == LongPollingType.LONG_POLLING  # pylint: disable=protected-access
            # The handshake went over HTTP: the socket's first frame is a /meta/connect of that session.
            assert SENT, "nothing was sent over a socket"
            first = SENT[0]
            assert [m["channel"] for m in first] == ["/meta/connect"], first
            assert first[0]["clientId"] == transport.client_id
            assert first[0]["connectionType"] == "websocket"

            await asyncio.wait_for(ws.subscribe("/py/ws/*"), 5)
            await asyncio.wait_for(lp.subscribe("/py/lp"), 5)
            to_ws = {"from": "long-polling", "id": str(uuid.uuid4())}
            await asyncio.wait_for(lp.publish("/py/ws/in", to_ws), 5)
            got = await receive(ws)
            assert (got["channel"], got["data"]) == ("/py/ws/in", to_ws)
            to_lp = {"from": "websocket", "text": "ünïcødé ☃", "id": str(uuid.uuid4())}
            await asyncio.wait_for(ws.publish("/py/lp", to_lp), 5)
            got = await receive(lp)
            assert (got["channel"], got["data"]) == ("/py/lp", to_lp)
            await assert_nothing_more(ws)
            await assert_nothing_more(lp, quiet=0.1)
            # Every later frame went over the same session, and the subscribe and publish went over the socket.
            channels = [m["channel"] for frame in SENT for m in frame]
            assert "/meta/subscribe" in channels and "/py/lp" in channels, channels
            assert all(m.get("clientId") == transport.client_id for frame in SENT for m in frame)
        finally:
            await asyncio.wait_for(ws.close(), 10)
            await asyncio.wait_for(lp.close(), 10)

    run(scenario())
