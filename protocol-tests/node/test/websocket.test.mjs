// Halley's websocket transport with the real clients (issue 14):
//  - CometD JS 9 forced onto WebSocket (long-polling and callback-polling unregistered; cometd-nodejs-client's
//    adapt() installs the `ws` package as window.WebSocket): handshake, subscribe, publish, wildcards, crossing
//    messages with a long-polling CometD client;
//  - the AckExtension through the fault-injecting proxy (../faultproxy.mjs, WebSocket frame mode) that loses
//    delivering frames in flight and kills the socket: every message exactly once, in order;
//  - CometD's ReloadExtension: the reloaded client's new socket starts with a /meta/connect for the existing
//    session; nothing lost or duplicated across the two sockets;
//  - recovery after 402::session_unknown (a broker restart) over WebSocket;
//  - Faye's Node client over WebSocket (its default), crossing messages with CometD clients on both transports.
import {describe, it, before, after} from "node:test";
import assert from "node:assert/strict";
import {AckExtension, CometD, ReloadExtension} from "cometd";
import faye from "faye";
import {startBroker} from "../broker.mjs";
import {startFaultProxy} from "../faultproxy.mjs";
import {
    Inbox, cometdConnected, cometdHandshake, cometdPublish, cometdSubscribe, nonce, rawDeliveries, scenario, sleep,
    waitUntil, withTimeout,
} from "../helpers.mjs";

const QUIET_MS = 600;
// Fast retries after a failed connect (CometD's default back-off grows by 1 s per failure).
const FAST_RETRY = {backoffIncrement: 50, maxBackoff: 500};

// Every WebSocket the clients of this file open, with the frames each one sent and received (parsed).
const sockets = [];
const BaseWebSocket = globalThis.window.WebSocket;
globalThis.window.WebSocket = class RecordedWebSocket extends BaseWebSocket {
    constructor(...args) {
        super(...args);
        this.rec = {url: String(args[0]), sent: [], received: []};
        sockets.push(this.rec);
        this.on("message", data => this.rec.received.push(JSON.parse(data.toString())));
    }

    send(data, ...rest) {
        this.rec.sent.push(JSON.parse(data));
        return super.send(data, ...rest);
    }
};

// The ReloadExtension keeps its state in window.sessionStorage, as a page would.
const storage = new Map();
globalThis.window.sessionStorage = {
    getItem: key => (storage.has(key) ? storage.get(key) : null),
    setItem: (key, value) => storage.set(key, String(value)),
    removeItem: key => storage.delete(key),
};

const socketsOf = clientId => sockets.filter(s => s.sent.flat().some(m => m.clientId === clientId));

describe("websocket with the real clients", () => {
    let broker;

    before(async () => {
        broker = await startBroker(["--timeout", "6000"]);
    });

    after(async () => {
        if (broker) await broker.stop();
    });

    it("CometD over WebSocket: handshake on the socket, subscribe, publish, wildcards, to and from long-polling",
        async () => {
            await scenario(broker, async pool => {
                const ws = pool.cometd(broker.url, {name: "ws", websocket: true});
                const hs = await cometdHandshake(ws);
                assert.equal(ws.cometd.getTransport().type, "websocket");
                assert.ok(hs.supportedConnectionTypes.includes("websocket"), JSON.stringify(hs));
                await cometdConnected(ws);
                const lp = pool.cometd(broker.url, {name: "lp"});
                await cometdHandshake(lp);
                assert.equal(lp.cometd.getTransport().type, "long-polling");

                const one = new Inbox("ws /w/*"), deep = new Inbox("ws /w/**"), fromWs = new Inbox("lp /w/lp");
                await cometdSubscribe(ws, "/w/*", one.push);
                await cometdSubscribe(ws, "/w/**", deep.push);
                await cometdSubscribe(lp, "/w/lp", fromWs.push);
                const a = {id: nonce("a")}, b = {id: nonce("b")}, c = {id: nonce("c")};
                await cometdPublish(lp, "/w/x", a); // long-polling -> websocket, both wildcards
                await cometdPublish(lp, "/w/x/y", b); // only /w/**
                await cometdPublish(ws, "/w/lp", c); // websocket -> long-polling (and back to itself)
                await deep.waitFor(3);
                await one.waitFor(2);
                await fromWs.waitFor(1);
                await sleep(QUIET_MS);
                assert.deepEqual(one.data, [a, c]);
                assert.deepEqual(deep.data, [a, b, c]);
                assert.deepEqual(fromWs.data, [c]);
                assert.equal(rawDeliveries(ws, "/w/x").length, 1, "one copy per message on the wire");

                const mine = socketsOf(ws.cometd.getClientId());
                assert.equal(mine.length, 1, "one socket");
                const [s] = mine;
                assert.equal(s.sent[0][0].channel, "/meta/handshake", "the handshake went over the socket");
                assert.ok(s.sent.every(Array.isArray) && s.received.every(Array.isArray), "one JSON array per frame");
                const connects = s.sent.flat().filter(m => m.channel === "/meta/connect");
                assert.ok(connects.length >= 2 && connects.every(m => m.connectionType === "websocket"));
                // Without the ack extension a delivery goes out in a frame of its own while the connect is held.
                const frame = s.received.find(f => f.some(m => m.channel === "/w/x"));
                assert.ok(frame.every(m => m.channel !== "/meta/connect"), JSON.stringify(frame));
            });
        });

    it("AckExtension over WebSocket through a proxy that cuts delivering frames: every message once, in order",
        async () => {
            const TOTAL = 120;
            const cutEvery = [1, 3, 4, 8, 12]; // the 3rd and 4th in a row: a redelivery lost again
            let armed = false, delivering = 0;
            const proxy = await startFaultProxy({
                targetPort: broker.port,
                onFrame({direction, deliveries}) {
                    if (!armed || direction !== "down" || deliveries.length === 0) return "pass";
                    delivering += 1;
                    return cutEvery.includes(delivering) ? "cut" : "pass";
                },
            });
            try {
                await scenario(broker, async pool => {
                    const sub = pool.cometd(proxy.urlFor(broker.url), {name: "ws-ack", websocket: true, config: FAST_RETRY});
                    sub.cometd.registerExtension("ack", new AckExtension());
                    const hs = await cometdHandshake(sub);
                    assert.equal(hs.ext?.ack, true, JSON.stringify(hs));
                    assert.equal(sub.cometd.getTransport().type, "websocket");
                    await cometdConnected(sub);
                    const inbox = new Inbox("ws-ack");
                    await cometdSubscribe(sub, "/wsack/ch", inbox.push);
                    const pub = pool.cometd(broker.url, {name: "publisher"});
                    await cometdHandshake(pub);

                    armed = true;
                    for (let n = 0; n < TOTAL; ++n) {
                        await cometdPublish(pub, "/wsack/ch", {n});
                        if (n % 10 === 9) await sleep(30);
                    }
                    await inbox.waitFor(TOTAL, 30000);
                    await sleep(QUIET_MS);
                    armed = false;
                    assert.deepEqual(inbox.data.map(d => d.n), [...Array(TOTAL).keys()], "every message once, in order");
                    assert.equal(proxy.counters.cutFrames, cutEvery.length, "every planned cut happened");
                    assert.ok(proxy.counters.upgrades >= cutEvery.length + 1, `${proxy.counters.upgrades} sockets`);
                    // Deliveries only ever travel with a numbered connect reply.
                    for (const f of proxy.frames.filter(f => f.direction === "down")) {
                        if (!f.messages.some(m => m.data !== undefined)) continue;
                        const reply = f.messages.find(m => m.channel === "/meta/connect" && m.successful !== undefined);
                        assert.ok(reply && Number.isInteger(reply.ext?.ack), JSON.stringify(f.messages));
                    }
                });
            } finally {
                await proxy.stop();
            }
        });

    it("ReloadExtension: the new socket's first frame is a /meta/connect for the session; nothing lost or twice",
        async () => {
            await scenario(broker, async pool => {
                const TOTAL = 60;
                const first = new CometD("before-reload");
                first.unregisterTransport("long-polling");
                first.unregisterTransport("callback-polling");
                first.registerExtension("reload", new ReloadExtension());
                first.configure({url: broker.url, logLevel: "warn"});
                const before = new Inbox("before reload");
                const hs = await withTimeout(new Promise(resolve => first.handshake(resolve)), 5000, "handshake");
                assert.equal(hs.successful, true, JSON.stringify(hs));
                const clientId = first.getClientId();
                await withTimeout(new Promise((resolve, reject) => first.subscribe("/reload/ch", before.push,
                    r => (r.successful ? resolve() : reject(new Error(JSON.stringify(r)))))), 5000, "subscribe");

                const pub = pool.cometd(broker.url, {name: "publisher"});
                await cometdHandshake(pub);
                const publishing = (async () => {
                    for (let n = 0; n < TOTAL; ++n) {
                        await cometdPublish(pub, "/reload/ch", {n});
                        await sleep(15);
                    }
                })();
                await before.waitFor(15, 10000);
                // The page unloads: state saved, the socket closed; no /meta/disconnect.
                first.reload();

                const second = new CometD("after-reload");
                second.unregisterTransport("long-polling");
                second.unregisterTransport("callback-polling");
                second.registerExtension("reload", new ReloadExtension());
                second.configure({url: broker.url, logLevel: "warn"});
                const after = new Inbox("after reload");
                second.addListener("/reload/ch", after.push);
                pool.cometds.push({name: "after-reload", cometd: second, sent: [], received: []});
                const replayed = await withTimeout(new Promise(resolve => second.handshake(resolve)), 5000,
                    "replayed handshake");
                assert.equal(replayed.ext?.reload, true, JSON.stringify(replayed));
                assert.equal(second.getClientId(), clientId);
                await publishing;
                await waitUntil(() => before.messages.length + after.messages.length >= TOTAL, 10000,
                    `${TOTAL} messages across the reload (${before.messages.length} + ${after.messages.length})`);
                await sleep(QUIET_MS);

                const got = [...before.data, ...after.data].map(d => d.n);
                assert.deepEqual(got, [...Array(TOTAL).keys()], `before ${JSON.stringify(before.data.map(d => d.n))}`);
                assert.ok(after.messages.length > 0, "the reloaded client got nothing");
                const mine = socketsOf(clientId);
                assert.equal(mine.length, 2, "a second socket");
                const firstFrame = mine[1].sent[0];
                assert.equal(firstFrame[0].channel, "/meta/connect", JSON.stringify(firstFrame));
                assert.equal(firstFrame[0].clientId, clientId);
            });
        });

    it("recovers over WebSocket after 402::session_unknown (the broker restarted)", async () => {
        await scenario(broker, async pool => {
            const c = pool.cometd(broker.url, {name: "ws-402", websocket: true, config: FAST_RETRY});
            const inbox = new Inbox("ws-402");
            const handshakes = [];
            // The CometD idiom: (re)subscribe on every successful handshake.
            c.cometd.addListener("/meta/handshake", m => {
                if (!m.successful) return;
                handshakes.push(m.clientId);
                c.cometd.subscribe("/recover/ch", inbox.push);
            });
            await cometdHandshake(c);
            await cometdConnected(c);
            const before = c.cometd.getClientId();
            await broker.restart();
            await waitUntil(() => handshakes.length >= 2, 15000, "a new handshake after the restart");
            const unknown = c.received.map(r => r.message)
                .filter(m => m.channel === "/meta/connect" && m.error === "402::session_unknown");
            assert.ok(unknown.length >= 1, "the old session was refused with 402::session_unknown");
            assert.notEqual(c.cometd.getClientId(), before);
            assert.equal(c.cometd.getTransport().type, "websocket");
            await waitUntil(() => c.received.filter(r => r.message.channel === "/meta/subscribe"
                && r.message.successful && r.message.subscription === "/recover/ch").length >= 2, 5000,
                "the resubscription");
            const pub = pool.cometd(broker.url, {name: "publisher"});
            await cometdHandshake(pub);
            const data = {id: nonce()};
            await cometdPublish(pub, "/recover/ch", data);
            await inbox.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(inbox.data, [data]);
        });
    });

    it("Faye's Node client over WebSocket crosses messages with CometD over WebSocket and long-polling", async () => {
        await scenario(broker, async pool => {
            const f = new faye.Client(broker.url, {timeout: 10, retry: 1});
            pool.fayes.push(f);
            const toFaye = new Inbox("faye");
            await withTimeout(Promise.resolve(f.subscribe("/fw/faye", data => toFaye.push({data}))), 5000,
                "faye subscribe");
            await waitUntil(() => f._dispatcher.connectionType === "websocket", 5000,
                `faye on websocket (is on ${f._dispatcher.connectionType})`);
            const ws = pool.cometd(broker.url, {name: "ws", websocket: true});
            const lp = pool.cometd(broker.url, {name: "lp"});
            await cometdHandshake(ws);
            await cometdHandshake(lp);
            const toWs = new Inbox("cometd ws"), toLp = new Inbox("cometd lp");
            await cometdSubscribe(ws, "/fw/cometd", toWs.push);
            await cometdSubscribe(lp, "/fw/cometd", toLp.push);

            const fromFaye = {id: nonce("faye")};
            await withTimeout(Promise.resolve(f.publish("/fw/cometd", fromFaye)), 5000, "faye publish");
            const fromWs = {id: nonce("ws")}, fromLp = {id: nonce("lp")};
            await cometdPublish(ws, "/fw/faye", fromWs);
            await cometdPublish(lp, "/fw/faye", fromLp);
            await toWs.waitFor(1);
            await toLp.waitFor(1);
            await toFaye.waitFor(2);
            await sleep(QUIET_MS);
            assert.deepEqual(toWs.data, [fromFaye]);
            assert.deepEqual(toLp.data, [fromFaye]);
            assert.deepEqual(toFaye.data, [fromWs, fromLp]);
            assert.equal(f._dispatcher.connectionType, "websocket");
        });
    });
});
