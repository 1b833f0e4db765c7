// The WebSocket transport, run with Node's WHATWG WebSocket (node --experimental-websocket, as run-tests.sh does):
//   - against Faye 1.4.3's NodeAdapter over WebSocket, crossing messages with Faye's own Node client;
//   - the watchdog, through a TCP proxy that stops passing frames on open sockets;
//   - against Halley over WebSocket (one socket, no HTTP), crossing messages with a long-polling client;
//   - the fallbacks: Halley started with `--transports long-polling,callback-polling` (which refuses upgrades),
//     a proxy that answers 101 and passes nothing
//     (cometd#603), and a server whose handshake reply does not offer websocket;
//   - sticky reconnect after a server restart, and a new session after 402::session_unknown.
import assert from "node:assert/strict";
import {createHash} from "node:crypto";
import {createRequire} from "node:module";
import net from "node:net";
import {after, afterEach, describe, test} from "node:test";
import {startFaye, startHalley, HOLD_MS} from "./lib/servers.mjs";
import {clientFactory, inbox, sleep, until, within} from "./lib/util.mjs";

const faye = createRequire(import.meta.url)("faye");

if (typeof WebSocket != "function") throw new Error("run with node --experimental-websocket (Node 20) or Node >= 22");

/** A WebSocket class that records every socket it opens and the frames each one sent and received. */
function recordingWebSocket() {
    const sockets = [];
    class Recorded extends WebSocket {
        constructor(url) {
            super(url);
            const rec = {url, sent: [], received: [], ws: this};
            sockets.push(rec);
            this.addEventListener("message", e => rec.received.push(JSON.parse(e.data)));
            this.rec = rec;
        }

        send(data) {
            this.rec.sent.push(JSON.parse(data));
            super.send(data);
        }
    }
    return {WebSocket: Recorded, sockets};
}

/** A fetch that must not be called: the session is meant to run over the socket only. */
function noFetch() {
    const calls = [];
    return {calls, fetch: async (url, init) => (calls.push(init?.body), fetch(url, init))};
}

/**
 * A TCP proxy on 127.0.0.1 in front of `port`. `freeze()` stops passing bytes on every connection open at that
 * moment while keeping it open (a network that silently drops traffic); later connections pass normally.
 * With `muteUpgrades`, a WebSocket upgrade is answered 101 by the proxy itself, which then passes nothing.
 */
async function tcpProxy(port, {muteUpgrades = false} = {}) {
    const live = new Set(), frozen = new Set();
    let upgrades = 0;
    const server = net.createServer(client => {
        client.on("error", () => {});
        client.once("data", first => {
            const head = first.toString("latin1");
            if (/^upgrade: *websocket/im.test(head)) upgrades++;
            if (muteUpgrades && /^upgrade: *websocket/im.test(head)) {
                const key = /^sec-websocket-key: *(\S+)/im.exec(head)?.[1] ?? "";
                const accept = createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
                client.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
                    `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
                frozen.add(client);
                client.on("data", () => {});
                return;
            }
            const up = net.connect(port, "127.0.0.1");
            up.on("error", () => {});
            const pair = [client, up];
            live.add(pair);
            up.write(first);
            client.pipe(up);
            up.pipe(client);
            const end = () => {
                live.delete(pair);
                client.destroy();
                up.destroy();
            };
            client.on("close", end);
            up.on("close", end);
        });
    });
    await new Promise(resolve => server.listen(0, "127.0.0.1", resolve));
    return {
        port: server.address().port,
        upgrades: () => upgrades,
        freeze() {
            for (const pair of live) {
                const [client, up] = pair;
                client.unpipe(up);
                up.unpipe(client);
                client.pause();
                up.pause();
                live.delete(pair);
                frozen.add(client).add(up);
            }
        },
        stop: () => new Promise(resolve => {
            for (const [client, up] of live) client.destroy(), up.destroy();
            frozen.forEach(s => s.destroy());
            server.close(() => resolve());
        }),
    };
}

/** Faye's Node client (WebSocket by default), disconnected in closeAll(). */
const fayeClients = [];
function fayeClient(url) {
    const c = new faye.Client(url, {timeout: HOLD_MS / 1000});
    fayeClients.push(c);
    return c;
}

const clients = clientFactory();
afterEach(async () => {
    await clients.closeAll();
    fayeClients.splice(0).forEach(c => c.disconnect());
});

describe("websocket against faye", () => {
    let server;
    after(async () => {
        await clients.closeAll();
        await server?.stop();
    });

    test("handshake as the first frame, one array per frame, deliveries in their own frames, crossing Faye's client",
        async () => {
            server ??= await startFaye();
            const rec = recordingWebSocket(), http = noFetch();
            const a = clients.make(server.url, {WebSocket: rec.WebSocket, fetch: http.fetch});
            const box = inbox();
            await within("subscribe", a.subscribe("/x/**", box.listener).ready);
            assert.equal(a.transport.name, "websocket");
            await until("connected", () => a.state === "connected");

            const f = fayeClient(server.url);
            const fromHalley = [];
            await within("faye subscribe", f.subscribe("/x/from-halley", m => fromHalley.push(m)));
            await within("faye publish", f.publish("/x/from-faye", {n: 1}));
            await until("delivery from faye's client", () => box.got.length >= 1);
            assert.deepEqual(box.got, [{channel: "/x/from-faye", data: {n: 1}}]);
            const ack = await within("publish", a.publish("/x/from-halley", {n: 2}));
            assert.equal(ack.successful, true);
            await until("faye's client got ours", () => fromHalley.length >= 1);
            assert.deepEqual(fromHalley, [{n: 2}]);

            assert.deepEqual(http.calls, [], "nothing went over HTTP");
            assert.equal(rec.sockets.length, 1, "one socket");
            const [s] = rec.sockets;
            assert.match(s.url, /^ws:\/\/127\.0\.0\.1:\d+\/bayeux$/);
            assert.equal(s.sent[0].length, 1);
            assert.equal(s.sent[0][0].channel, "/meta/handshake");
            assert.deepEqual(s.sent[0][0].supportedConnectionTypes, ["websocket", "long-polling"]);
            assert.ok(s.sent.every(Array.isArray) && s.received.every(Array.isArray), "one JSON array per frame");
            const connects = s.sent.flat().filter(m => m.channel === "/meta/connect");
            assert.ok(connects.every(m => m.connectionType === "websocket"));
            assert.ok(connects.every(m => m.clientId === a.clientId));
            // The delivery came in its own frame while a connect was held: no connect reply rides with it.
            const frame = s.received.find(f => f.some(m => m.channel === "/x/from-faye"));
            assert.ok(frame.every(m => m.channel !== "/meta/connect"), JSON.stringify(frame));
        });

    test("watchdog: a socket that passes nothing any more is closed after timeout + maxNetworkDelay; "
        + "the client reconnects on a new socket to the same session", async () => {
        server ??= await startFaye();
        const proxy = await tcpProxy(server.port);
        try {
            const rec = recordingWebSocket();
            const url = server.url.replace(`:${server.port}/`, `:${proxy.port}/`);
            const a = clients.make(url, {WebSocket: rec.WebSocket, maxNetworkDelay: 500});
            const errors = [];
            a.on("error", e => errors.push(e.message));
            const box = inbox();
            await within("subscribe", a.subscribe("/wd/x", box.listener).ready);
            await until("connected", () => a.state === "connected");
            await sleep(200); // a held connect in place
            const clientId = a.clientId;
            const frozenAt = Date.now();
            proxy.freeze();
            await until("a second socket", () => rec.sockets.length >= 2, HOLD_MS + 5000);
            const took = Date.now() - frozenAt;
            assert.ok(took >= 500, `closed after ${took} ms`);
            assert.ok(rec.sockets[0].ws.readyState >= WebSocket.CLOSING, "the old socket was closed by the client");
            assert.ok(errors.includes("websocket timeout"), errors.join());
            await until("connected again", () => a.state === "connected" && rec.sockets[1].received.length >= 1);
            const first = rec.sockets[1].sent[0];
            assert.deepEqual(first.map(m => [m.channel, m.clientId]), [["/meta/connect", clientId]],
                "the new socket's first frame is a connect for the same session");
            assert.equal(a.clientId, clientId);
            fayeClient(server.url).publish("/wd/x", "after");
            await until("delivery on the new socket", () => box.got.length >= 1);
            assert.deepEqual(box.got.map(g => g.data), ["after"]);
        } finally {
            await proxy.stop();
        }
    });

    test("sticky reconnect: after a restart the client retries WebSocket and handshakes again over it", async () => {
        server ??= await startFaye();
        const rec = recordingWebSocket();
        const a = clients.make(server.url, {WebSocket: rec.WebSocket});
        const box = inbox();
        await within("subscribe", a.subscribe("/st/x", box.listener).ready);
        await until("connected", () => a.state === "connected");
        const before = a.clientId;
        await server.restart(300);
        await until("a new session", () => a.state === "connected" && a.clientId && a.clientId !== before);
        assert.equal(a.transport.name, "websocket");
        assert.ok(rec.sockets.length >= 2);
        await within("publish", fayeClient(server.url).publish("/st/x", "restored"));
        await until("delivery after restart", () => box.got.length >= 1);
        assert.deepEqual(box.got.map(g => g.data), ["restored"]);
    });
});

describe("websocket: 402::session_unknown", () => {
    let server;
    let refuse = null; // "/meta/connect" or a publish channel: the next such message is answered 402
    after(() => server?.stop());

    for (const what of ["/meta/connect", "/s402/x"]) {
        test(`a 402 on ${what === "/meta/connect" ? "a connect" : "a publish"} starts a new session over the socket`,
            async () => {
                server ??= await startFaye({
                    extensions: [{
                        incoming(message, callback) {
                            if (message.channel === refuse) {
                                refuse = null;
                                message.error = "402::session_unknown";
                            }
                            callback(message);
                        },
                    }],
                });
                const rec = recordingWebSocket();
                const a = clients.make(server.url, {WebSocket: rec.WebSocket});
                const box = inbox();
                await within("subscribe", a.subscribe("/s402/**", box.listener).ready);
                await until("connected", () => a.state === "connected");
                const before = a.clientId;
                refuse = what;
                const publish = what === "/meta/connect" ? null : a.publish("/s402/x", "retried");
                await until("a new session", () => a.clientId && a.clientId !== before && a.state === "connected",
                    HOLD_MS + 5000);
                if (publish) assert.equal((await within("publish", publish)).successful, true);
                else await a.publish("/s402/x", "retried");
                await until("delivery in the new session", () => box.got.length >= 1);
                assert.deepEqual(box.got.map(g => g.data), ["retried"]);
                assert.equal(a.transport.name, "websocket");
                // The new session gets a new socket, so that the old one (alive in Faye) delivers nothing twice.
                assert.equal(rec.sockets.length, 2);
                assert.equal(rec.sockets[0].ws.readyState, WebSocket.CLOSED);
                assert.equal(rec.sockets[1].sent[0][0].channel, "/meta/handshake");
                await sleep(300);
                assert.equal(box.got.length, 1, "one copy");
            });
    }
});

describe("websocket against halley", () => {
    test("one socket and no HTTP: handshake as the first frame, acknowledged deliveries on connect replies, "
        + "crossing a long-polling client", async () => {
        const halley = await startHalley();
        try {
            const rec = recordingWebSocket(), http = noFetch();
            const a = clients.make(halley.url, {WebSocket: rec.WebSocket, fetch: http.fetch});
            const box = inbox();
            await within("subscribe", a.subscribe("/hw/**", box.listener).ready);
            assert.equal(a.transport.name, "websocket");
            await until("connected", () => a.state === "connected");

            const lp = clients.make(halley.url, {transports: ["long-polling"]});
            const fromWs = inbox();
            await within("long-polling subscribe", lp.subscribe("/hw/from-ws", fromWs.listener).ready);
            assert.equal(lp.transport.name, "long-polling");
            await within("long-polling publish", lp.publish("/hw/from-lp", {n: 1}));
            await until("delivery from the long-polling client", () => box.got.length >= 1);
            assert.deepEqual(box.got, [{channel: "/hw/from-lp", data: {n: 1}}]);
            const ack = await within("publish", a.publish("/hw/from-ws", {n: 2}));
            assert.equal(ack.successful, true);
            await until("the long-polling client got ours", () => fromWs.got.length >= 1);
            assert.deepEqual(fromWs.got, [{channel: "/hw/from-ws", data: {n: 2}}]);
            await sleep(200);
            assert.equal(box.got.length, 2, "our own publish came back once on /hw/**");

            assert.deepEqual(http.calls, [], "nothing went over HTTP");
            assert.equal(rec.sockets.length, 1, "one socket");
            const [s] = rec.sockets;
            assert.match(s.url, /^ws:\/\/127\.0\.0\.1:\d+\/cometd$/);
            assert.equal(s.sent[0][0].channel, "/meta/handshake");
            assert.ok(s.received[0][0].supportedConnectionTypes.includes("websocket"), JSON.stringify(s.received[0]));
            assert.ok(s.sent.every(Array.isArray) && s.received.every(Array.isArray), "one JSON array per frame");
            const connects = s.sent.flat().filter(m => m.channel === "/meta/connect");
            assert.ok(connects.length >= 2 && connects.every(m => m.connectionType === "websocket"));
            // halley-client asks for the ack extension and Halley grants it: the delivery rides on a numbered
            // connect reply, never in a frame of its own.
            assert.equal(s.received[0][0].ext?.ack, true, JSON.stringify(s.received[0]));
            const frame = s.received.find(f => f.some(m => m.channel === "/hw/from-lp"));
            const reply = frame.find(m => m.channel === "/meta/connect");
            assert.ok(reply && Number.isInteger(reply.ext?.ack), JSON.stringify(frame));
        } catch (e) {
            console.error(halley.output());
            throw e;
        } finally {
            await clients.closeAll();
            await halley.stop();
        }
    });
});

describe("websocket fallback to long-polling", () => {
    test("Halley refuses the upgrade: falls back at once, without back-off, and remembers it", async () => {
        const halley = await startHalley(["--transports", "long-polling,callback-polling"]);
        try {
            const rec = recordingWebSocket();
            const a = clients.make(halley.url, {WebSocket: rec.WebSocket, backoff: 5000, maxBackoff: 5000});
            const t0 = Date.now();
            const box = inbox();
            await within("subscribe", a.subscribe("/fb/x", box.listener).ready);
            assert.ok(Date.now() - t0 < 2500, `fell back in ${Date.now() - t0} ms`);
            assert.equal(a.transport.name, "long-polling");
            assert.equal(rec.sockets.length, 1);
            await a.publish("/fb/x", 1);
            await until("delivery", () => box.got.length >= 1);
            // A new session (server restart) does not try the socket again.
            const before = a.clientId;
            await halley.restart(200);
            await until("a new session", () => a.state === "connected" && a.clientId !== before, 15000);
            assert.equal(a.transport.name, "long-polling");
            assert.equal(rec.sockets.length, 1, "WebSocket is not retried");
        } finally {
            await clients.closeAll();
            await halley.stop();
        }
    });

    test("a proxy answers 101 and passes nothing (cometd#603): falls back after maxNetworkDelay", async () => {
        const server = await startFaye();
        const proxy = await tcpProxy(server.port, {muteUpgrades: true});
        try {
            const url = server.url.replace(`:${server.port}/`, `:${proxy.port}/`);
            const a = clients.make(url, {maxNetworkDelay: 1000});
            const box = inbox();
            await within("subscribe", a.subscribe("/mute/x", box.listener).ready);
            assert.equal(a.transport.name, "long-polling");
            assert.equal(proxy.upgrades(), 1);
            await within("publish", fayeClient(server.url).publish("/mute/x", "via long-polling"));
            await until("delivery", () => box.got.length >= 1);
            assert.deepEqual(box.got.map(g => g.data), ["via long-polling"]);
        } finally {
            await clients.closeAll();
            await proxy.stop();
            await server.stop();
        }
    });

    test("the handshake reply does not offer websocket: switches to long-polling and closes the socket", async () => {
        const server = await startFaye({
            extensions: [{
                outgoing(message, callback) {
                    if (message.channel === "/meta/handshake") message.supportedConnectionTypes = ["long-polling"];
                    callback(message);
                },
            }],
        });
        try {
            const rec = recordingWebSocket();
            const a = clients.make(server.url, {WebSocket: rec.WebSocket});
            const box = inbox();
            await within("subscribe", a.subscribe("/lp/x", box.listener).ready);
            assert.equal(a.transport.name, "long-polling");
            assert.equal(rec.sockets.length, 1);
            assert.deepEqual(rec.sockets[0].sent.flat().map(m => m.channel), ["/meta/handshake"]);
            await until("socket closed", () => rec.sockets[0].ws.readyState >= WebSocket.CLOSING);
            await a.publish("/lp/x", 7);
            await until("delivery", () => box.got.length >= 1);
            assert.equal(rec.sockets.length, 1);
        } finally {
            await clients.closeAll();
            await server.stop();
        }
    });
});
