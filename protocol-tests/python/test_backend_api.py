"""A Python backend publishing through Halley's HTTP API (urllib, and the `halley publish` CLI) to real
CometD clients: the Node CometD JS subscriber peer and aiocometd."""
import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aiocometd_compat  # noqa: F401  (must precede the use of aiocometd on Python >= 3.10)
from aiocometd import Client, ConnectionType

API_KEY = "py-backend-key-0123456789"
# How long to keep listening after the expected messages, to catch duplicates.
QUIET = 0.6


def base_url(url):
    """http://127.0.0.1:PORT (the API lives at the root, the Bayeux endpoint under --path)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def api(url, method, path, body=None, key=API_KEY, timeout=5):
    """One HTTP API call -> (status, headers, parsed JSON body or raw text)."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(base_url(url) + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, error.headers, error.read()
    text = raw.decode("utf-8")
    try:
        return status, headers, json.loads(text)
    except ValueError:
        return status, headers, text


def next_message(process, timeout=5.0):
    """The next message the Node subscriber printed (one JSON line), within `timeout` seconds."""
    line = process.next_line(timeout)
    assert line is not None, f"{process.name}: no message within {timeout}s; output:\n{process.output()}"
    return json.loads(line)


def assert_no_more_lines(process, quiet=QUIET):
    line = process.next_line(quiet)
    assert line is None, f"{process.name}: unexpected extra message: {line}"


def stats(url):
    status, _, body = api(url, "GET", "/api/stats")
    assert status == 200, (status, body)
    return body


def assert_stats(url, **expected):
    actual = stats(url)
    assert {key: actual.get(key) for key in expected} == expected, f"stats: {actual}"


def test_http_api_publish_reaches_node_cometd_subscriber(start_broker, start_subscriber):
    url = start_broker("--timeout", "5000", "--api-key", API_KEY).url
    subscriber = start_subscriber(url, "/backend/news")
    # The subscriber's session and subscription; nothing published yet.
    assert_stats(url, sessions=1, subscriptions=1, published=0, delivered=0, dropped=0)

    # A single message (object in, object out), with ext.
    single = {"channel": "/backend/news",
              "data": {"headline": "héllo ✓ \u2028", "n": 1.5, "list": [None, False, "x"], "id": str(uuid.uuid4())},
              "ext": {"source": "python-backend", "trace": str(uuid.uuid4())}}
    status, headers, body = api(url, "POST", "/api/publish", single)
    assert status == 200, (status, body)
    assert headers.get_content_type() == "application/json"
    assert body == {"channel": "/backend/news", "queued": 1}
    message = next_message(subscriber)
    assert message["channel"] == "/backend/news"
    assert message["data"] == single["data"]
    assert message["ext"] == single["ext"]

    # An array (array in, array out, in order); one message goes to a channel nobody subscribes to.
    batch = [
        {"channel": "/backend/news", "data": "a plain string"},
        {"channel": "/backend/elsewhere", "data": {"unseen": True}},
        {"channel": "/backend/news", "data": [1, 2, {"three": 3}], "ext": {"seq": 3}},
    ]
    status, _, body = api(url, "POST", "/api/publish", batch)
    assert status == 200, (status, body)
    assert body == [{"channel": "/backend/news", "queued": 1},
                    {"channel": "/backend/elsewhere", "queued": 0},
                    {"channel": "/backend/news", "queued": 1}]
    first = next_message(subscriber)
    second = next_message(subscriber)
    assert (first["channel"], first["data"]) == ("/backend/news", "a plain string")
    assert first.get("ext") is None, f"no ext was published with this message: {first}"
    assert (second["channel"], second["data"], second["ext"]) == ("/backend/news", [1, 2, {"three": 3}], {"seq": 3})
    assert_no_more_lines(subscriber)

    # Wrong or missing key: 401 with a Bearer challenge, and nothing is published.
    for key in ("not-the-right-key-000", None):
        status, headers, body = api(url, "POST", "/api/publish",
                                    {"channel": "/backend/news", "data": "must not arrive"}, key=key)
        assert status == 401, (key, status, body)
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(headers)
    status, _, _ = api(url, "GET", "/api/stats", key="not-the-right-key-000")
    assert status == 401
    assert_no_more_lines(subscriber)

    # The stats reflect the one session and the 4 accepted publications, 3 of them delivered.
    assert_stats(url, sessions=1, subscriptions=1, published=4, delivered=3, dropped=0)


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def halley_publish(halley_bin, url, channel, stdin_text, ext=None, key=API_KEY, timeout=10):
    """Run `halley publish ... --data -` with `stdin_text` on stdin -> (exit code, stdout, stderr)."""
    argv = [halley_bin, "publish", "--url", base_url(url), "--key", key, "--channel", channel, "--data", "-"]
    if ext is not None:
        argv += ["--ext", json.dumps(ext)]
    process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin_text.encode("utf-8")), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"halley publish did not finish within {timeout}s") from None
    return process.returncode, out.decode("utf-8"), err.decode("utf-8")


def test_halley_publish_cli_reaches_aiocometd(start_broker, halley_bin):
    url = start_broker("--timeout", "5000", "--api-key", API_KEY).url

    async def scenario():
        client = Client(url, connection_types=[ConnectionType.LONG_POLLING], connection_timeout=10)
        await asyncio.wait_for(client.open(), 10)
        try:
            await asyncio.wait_for(client.subscribe("/cli/alerts"), 5)

            data = {"level": "warn", "text": "disk ✓ 90%", "values": [1, None, True], "id": str(uuid.uuid4())}
            ext = {"origin": "cron", "n": 7}
            code, out, err = await halley_publish(halley_bin, url, "/cli/alerts", json.dumps(data), ext=ext)
            assert code == 0, (code, out, err)
            assert json.loads(out) == {"channel": "/cli/alerts", "queued": 1}
            message = await asyncio.wait_for(client.receive(), 5)
            assert message["channel"] == "/cli/alerts"
            assert message["data"] == data
            assert message["ext"] == ext

            # A JSON string with an escaped newline, read from stdin (with a trailing newline), no ext.
            code, out, err = await halley_publish(halley_bin, url, "/cli/alerts", '"two\\nlines ✓"\n')
            assert code == 0, (code, out, err)
            assert json.loads(out) == {"channel": "/cli/alerts", "queued": 1}
            message = await asyncio.wait_for(client.receive(), 5)
            assert (message["channel"], message["data"]) == ("/cli/alerts", "two\nlines ✓")
            assert message.get("ext") is None, message

            # Failures: exit 1, a message on stderr, nothing on stdout, nothing published.
            failures = [
                ("wrong key", dict(channel="/cli/alerts", stdin_text='"nope"', key="wrong-key-0123456789")),
                ("invalid JSON", dict(channel="/cli/alerts", stdin_text="{not json")),
                ("wildcard channel", dict(channel="/cli/*", stdin_text='"nope"')),
            ]
            for what, kwargs in failures:
                code, out, err = await halley_publish(halley_bin, url, **kwargs)
                assert code == 1, (what, code, out, err)
                assert out == "", (what, out)
                assert err.strip() != "", what
            try:
                extra = await asyncio.wait_for(client.receive(), QUIET)
            except asyncio.TimeoutError:
                extra = None
            assert extra is None, f"unexpected extra message: {extra!r}"
        finally:
            await asyncio.wait_for(client.close(), 10)

    run(scenario())
    # 2 accepted publications, each delivered once to the one aiocometd session (closed now).
    assert_stats(url, published=2, delivered=2, dropped=0)
