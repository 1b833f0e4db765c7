// CometD JS 9 (npm `cometd` + `cometd-nodejs-client`) against Halley, long-polling only.
import {describe, it, before, after} from "node:test";
import assert from "node:assert/strict";
import {startBroker} from "../broker.mjs";
import {
    Inbox, cometdConnected, cometdDisconnect, cometdHandshake, cometdPublish, cometdSubscribe,
    cometdUnsubscribe, newBrowser, nonce, postBayeux, rawDeliveries, scenario, sleep, waitUntil, withTimeout,
} from "../helpers.mjs";

// How long to keep listening after the expected messages, to catch duplicates.
const QUIET_MS = 600;

describe("CometD JS client over long-polling", () => {
    let broker;

    before(async () => {
        broker = await startBroker(["--timeout", "2000"]);
    });

    after(async () => {
        if (broker) await broker.stop();
    });

    // Handshakes and waits for the first successful connect.
    async function connected(pool, name) {
        const client = pool.cometd(broker.url, {name});
        await cometdHandshake(client);
        await cometdConnected(client);
        return client;
    }

    it("handshakes and connects over long-polling", async () => {
        await scenario(broker, async pool => {
            const a = pool.cometd(broker.url, {name: "a"});
            const reply = await cometdHandshake(a);
            assert.equal(reply.successful, true);
            assert.equal(typeof reply.clientId, "string");
            assert.match(reply.clientId, /^[0-9A-Za-z]{16,}$/, "clientId: long, alphanumeric");
            assert.equal(a.cometd.getClientId(), reply.clientId);
            assert.ok(Array.isArray(reply.supportedConnectionTypes), "supportedConnectionTypes is an array");
            assert.ok(reply.supportedConnectionTypes.includes("long-polling"), "server lists long-polling");
            // websocket is offered by default; this client has it unregistered and must settle on long-polling.
            assert.ok(reply.supportedConnectionTypes.includes("websocket"), "server lists websocket");
            // The transport the client negotiated and uses.
            assert.equal(a.cometd.getTransport().type, "long-polling");

            await cometdConnected(a);
            // (between a connect reply and the next connect the status is briefly "connecting")
            await waitUntil(() => a.cometd.getStatus() === "connected", 3000, "status connected");
            // Every /meta/connect the client sent so far went over long-polling.
            const connects = a.sent.map(s => s.message).filter(m => m.channel === "/meta/connect");
            assert.ok(connects.length >= 1);
            for (const m of connects) assert.equal(m.connectionType, "long-polling");
            // The handshake request never offered websocket either.
            const hs = a.sent.map(s => s.message).find(m => m.channel === "/meta/handshake");
            assert.ok(!hs.supportedConnectionTypes.includes("websocket"));
            // A successful first connect reply carries retry advice.
            const connectReply = a.received.map(r => r.message).find(m => m.channel === "/meta/connect");
            assert.equal(connectReply.successful, true);
            assert.equal(connectReply.advice?.reconnect, "retry");
        });
    });

    it("subscribes, publishes and receives its own message exactly once", async () => {
        await scenario(broker, async pool => {
            const a = await connected(pool, "a");
            const inbox = new Inbox("a");
            await cometdSubscribe(a, "/pubsub/self", inbox.push);
            const data = {text: "hello", n: 42, nested: {list: [1, "two", null, true]}, id: nonce()};
            const ack = await cometdPublish(a, "/pubsub/self", data);
            assert.equal(ack.successful, true);
            assert.equal(ack.channel, "/pubsub/self");
            assert.equal(ack.data, undefined, "a publish ack must not carry data");
            await inbox.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(inbox.data, [data]);
            assert.equal(inbox.messages[0].channel, "/pubsub/self");
            assert.equal(rawDeliveries(a, "/pubsub/self").length, 1, "exactly one copy on the wire");
        });
    });

    it("handles a batch() of subscribe + publish in one request", async () => {
        await scenario(broker, async pool => {
            const a = await connected(pool, "a");
            const inbox = new Inbox("a /batch/room");
            const replies = [];
            const data = {text: "batched", id: nonce()};
            const sentBefore = a.sent.length;
            a.cometd.batch(() => {
                a.cometd.subscribe("/batch/room", inbox.push, r => replies.push(r));
                a.cometd.publish("/batch/room", data, r => replies.push(r));
            });
            await waitUntil(() => replies.length === 2, 5000, "both replies of the batch");
            assert.deepEqual(replies.map(r => [r.channel, r.successful]),
                [["/meta/subscribe", true], ["/batch/room", true]]);
            // Sent in batch order (CometD JS puts a batch in one request).
            const batched = a.sent.slice(sentBefore).map(s => s.message).filter(m => m.channel !== "/meta/connect");
            assert.deepEqual(batched.map(m => m.channel), ["/meta/subscribe", "/batch/room"]);
            await inbox.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(inbox.data, [data]);
            assert.equal(rawDeliveries(a, "/batch/room").length, 1);
        });
    });

    it("delivers a publish to a second client, not to an unsubscribed one", async () => {
        await scenario(broker, async pool => {
            const a = await connected(pool, "a");
            const b = await connected(pool, "b");
            const c = await connected(pool, "c");
            const inboxA = new Inbox("a");
            await cometdSubscribe(a, "/pubsub/room", inboxA.push);
            const inboxC = new Inbox("c");
            await cometdSubscribe(c, "/pubsub/other", inboxC.push);

            const data = {text: "from b", id: nonce()};
            await cometdPublish(b, "/pubsub/room", data);
            await inboxA.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(inboxA.data, [data]);
            const delivered = rawDeliveries(a, "/pubsub/room");
            assert.equal(delivered.length, 1);
            assert.notEqual(delivered[0].clientId, b.cometd.getClientId(), "publisher clientId must not leak");
            assert.equal(delivered[0].successful, undefined, "a delivery has no successful field");
            assert.equal(delivered[0].advice, undefined, "a delivery carries no advice");
            assert.equal(inboxC.messages.length, 0);
            assert.equal(rawDeliveries(c, "/pubsub/room").length, 0);
            // b is not subscribed: it gets no copy of its own publish.
            assert.equal(rawDeliveries(b, "/pubsub/room").length, 0);
        });
    });

    it("matches /* and /** wildcards", async () => {
        await scenario(broker, async pool => {
            const pub = await connected(pool, "pub");
            const star = await connected(pool, "star");
            const deep = await connected(pool, "deep");
            const root = await connected(pool, "root");
            const inStar = new Inbox("/wild/*");
            const inDeep = new Inbox("/wild/**");
            const inRoot = new Inbox("/*");
            await cometdSubscribe(star, "/wild/*", inStar.push);
            await cometdSubscribe(deep, "/wild/**", inDeep.push);
            await cometdSubscribe(root, "/*", inRoot.push);

            const m1 = {n: 1, id: nonce()};
            const m2 = {n: 2, id: nonce()};
            const m3 = {n: 3, id: nonce()};
            await cometdPublish(pub, "/wild/a", m1);      // /wild/*, /wild/**
            await cometdPublish(pub, "/wild/a/b", m2);    // /wild/** only
            await cometdPublish(pub, "/wild", m3);        // /* only

            await inStar.waitFor(1);
            await inDeep.waitFor(2);
            await inRoot.waitFor(1);
            await sleep(QUIET_MS);

            assert.deepEqual(inStar.data, [m1], "/wild/* gets /wild/a only (not /wild/a/b, not /wild)");
            assert.deepEqual(inStar.messages.map(m => m.channel), ["/wild/a"]);
            assert.deepEqual(inDeep.data, [m1, m2], "/wild/** gets /wild/a and /wild/a/b (not /wild)");
            assert.deepEqual(inDeep.messages.map(m => m.channel), ["/wild/a", "/wild/a/b"]);
            assert.deepEqual(inRoot.data, [m3], "/* gets /wild only");
            assert.deepEqual(inRoot.messages.map(m => m.channel), ["/wild"]);
        });
    });

    it("sends one copy per publish even with overlapping subscriptions", async () => {
        await scenario(broker, async pool => {
            const a = await connected(pool, "a");
            const b = await connected(pool, "b");
            const exact = new Inbox("/dup/room");
            const star = new Inbox("/dup/*");
            const deep = new Inbox("/dup/**");
            await cometdSubscribe(a, "/dup/room", exact.push);
            await cometdSubscribe(a, "/dup/*", star.push);
            await cometdSubscribe(a, "/dup/**", deep.push);

            const data = {text: "once", id: nonce()};
            await cometdPublish(b, "/dup/room", data);
            await exact.waitFor(1);
            await star.waitFor(1);
            await deep.waitFor(1);
            await sleep(QUIET_MS);
            // The server sends one copy; the client fans it out to each matching listener once.
            assert.equal(rawDeliveries(a, "/dup/room").length, 1, "exactly one copy on the wire");
            assert.deepEqual(exact.data, [data]);
            assert.deepEqual(star.data, [data]);
            assert.deepEqual(deep.data, [data]);
        });
    });

    it("stops delivery after unsubscribe", async () => {
        await scenario(broker, async pool => {
            const a = await connected(pool, "a");
            const b = await connected(pool, "b");
            const inbox = new Inbox("/unsub/room");
            const barrier = new Inbox("/unsub/barrier");
            const subscription = await cometdSubscribe(a, "/unsub/room", inbox.push);
            await cometdSubscribe(a, "/unsub/barrier", barrier.push);

            const before = {n: "before", id: nonce()};
            await cometdPublish(b, "/unsub/room", before);
            await inbox.waitFor(1);
            assert.deepEqual(inbox.data, [before]);

            const reply = await cometdUnsubscribe(a, subscription);
            assert.equal(reply.successful, true);
            assert.equal(reply.subscription, "/unsub/room");

            const afterMsg = {n: "after", id: nonce()};
            await cometdPublish(b, "/unsub/room", afterMsg);
            // Per-session FIFO: once the barrier message arrives, the earlier publish would have too.
            const mark = {n: "barrier", id: nonce()};
            await cometdPublish(b, "/unsub/barrier", mark);
            await barrier.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(barrier.data, [mark]);
            assert.deepEqual(inbox.data, [before], "no delivery to the listener after unsubscribe");
            assert.deepEqual(rawDeliveries(a, "/unsub/room").map(m => m.data), [before],
                "the server must not send /unsub/room to a after the unsubscribe");
        });
    });

    it("disconnects cleanly", async () => {
        await scenario(broker, async pool => {
            const a = await connected(pool, "a");
            const b = await connected(pool, "b");
            const inbox = new Inbox("/bye/room");
            await cometdSubscribe(a, "/bye/room", inbox.push);
            const clientId = a.cometd.getClientId();
            const disconnectEvents = [];
            a.cometd.addListener("/meta/disconnect", m => disconnectEvents.push(m));

            // Make sure a /meta/connect of `a` is being held before disconnecting.
            const connectsBefore = a.sent.filter(s => s.message.channel === "/meta/connect").length;
            await waitUntil(() => a.sent.filter(s => s.message.channel === "/meta/connect").length > connectsBefore,
                5000, "a's next /meta/connect");
            await sleep(200);
            const lastConnect = a.sent.filter(s => s.message.channel === "/meta/connect").at(-1).message;

            const t0 = Date.now();
            const reply = await cometdDisconnect(a);
            assert.equal(reply.successful, true, `disconnect reply: ${JSON.stringify(reply)}`);
            assert.equal(a.cometd.getStatus(), "disconnected");
            assert.equal(a.cometd.isDisconnected(), true);
            assert.equal(disconnectEvents.length, 1);
            assert.equal(disconnectEvents[0].successful, true);

            // The held connect is released at once (not at the 2 s hold timeout) and tells the client to stop.
            const released = await waitUntil(() => a.received.map(r => r.message)
                .find(m => m.channel === "/meta/connect" && m.id === lastConnect.id), 1500,
            "the held /meta/connect to be released after the disconnect");
            assert.equal(released.advice?.reconnect, "none",
                `held connect released by a disconnect: ${JSON.stringify(released)}`);
            assert.ok(Date.now() - t0 < 1500);

            // The client sends nothing more.
            const sentCount = a.sent.length;
            await sleep(QUIET_MS);
            assert.equal(a.sent.length, sentCount, "no requests after disconnect");

            // The session is gone on the server.
            const raw = await postBayeux(broker.url + "/connect", [{
                id: "99", channel: "/meta/connect", clientId, connectionType: "long-polling",
            }]);
            assert.equal(raw.status, 200);
            assert.ok(Array.isArray(raw.body), `body: ${JSON.stringify(raw.body)}`);
            const connectReply = raw.body.find(m => m.channel === "/meta/connect");
            assert.equal(connectReply.successful, false);
            assert.equal(connectReply.id, "99");
            assert.match(connectReply.error, /^402:/);
            assert.equal(connectReply.advice?.reconnect, "handshake");

            // Publishing to its former channel reaches nobody and still succeeds.
            await cometdPublish(b, "/bye/room", {n: 1});
            await sleep(QUIET_MS);
            assert.equal(inbox.messages.length, 0);
        });
    });

    it("two clients sharing one browser cookie both receive (multiple-clients advice)", async () => {
        await scenario(broker, async pool => {
            // Same cookie jar = same browser (BAYEUX_BROWSER shared), like two tabs.
            const jar = newBrowser();
            const tab1 = pool.cometd(broker.url, {name: "tab1", browser: jar});
            const tab2 = pool.cometd(broker.url, {name: "tab2", browser: jar});
            await cometdHandshake(tab1);
            await cometdConnected(tab1);
            await cometdHandshake(tab2);
            await cometdConnected(tab2);
            assert.ok(Object.keys(jar.cookieStore).length > 0, "the broker set a BAYEUX_BROWSER cookie");
            const in1 = new Inbox("tab1");
            const in2 = new Inbox("tab2");
            await cometdSubscribe(tab1, "/tabs/room", in1.push);
            await cometdSubscribe(tab2, "/tabs/room", in2.push);
            // Let both connect loops run for a while: one tab holds the long poll, the other is told to poll.
            await sleep(2500);
            const advised = [...tab1.received, ...tab2.received].map(r => r.message)
                .filter(m => m.channel === "/meta/connect" && m.advice && m.advice["multiple-clients"] === true);
            assert.ok(advised.length >= 1, "one tab gets the multiple-clients advice");
            for (const m of advised) {
                assert.equal(m.successful, true);
                assert.equal(m.advice.reconnect, "retry");
                assert.ok(m.advice.interval > 0, JSON.stringify(m.advice));
            }
            const publisher = await connected(pool, "publisher");
            const data = {text: "to both tabs", id: nonce()};
            await cometdPublish(publisher, "/tabs/room", data);
            await in1.waitFor(1, 5000);
            await in2.waitFor(1, 5000);
            await sleep(QUIET_MS);
            assert.deepEqual(in1.data, [data]);
            assert.deepEqual(in2.data, [data]);
            // The polling tab sits in "connecting" between polls; neither tab failed or re-handshook.
            for (const tab of [tab1, tab2]) {
                assert.ok(["connected", "connecting"].includes(tab.cometd.getStatus()), tab.cometd.getStatus());
                const failed = tab.received.map(r => r.message).filter(m => m.channel.startsWith("/meta/") && m.successful === false);
                assert.deepEqual(failed, [], `${tab.name}: no failed meta replies`);
                assert.equal(tab.received.filter(r => r.message.channel === "/meta/handshake").length, 1);
            }
        });
    });

    it("answers remoteCall to /service/echo with the data, without broadcasting it", async () => {
        await scenario(broker, async pool => {
            const a = await connected(pool, "a");
            const spy = await connected(pool, "spy");
            const spied = new Inbox("spy /**");
            // CometD JS also notifies a local /** listener of the client's own /meta/* messages: skip those.
            await cometdSubscribe(spy, "/**", m => {
                if (!m.channel.startsWith("/meta/")) spied.push(m);
            });

            const call = (data) => withTimeout(new Promise(resolve => {
                a.cometd.remoteCall("echo", data, 5000, reply => resolve(reply));
            }), 7000, "remoteCall echo");

            const data = {question: "ping", n: 7, list: [1, 2, {x: null}], id: nonce()};
            const reply = await call(data);
            assert.equal(reply.successful, true, `remoteCall reply: ${JSON.stringify(reply)}`);
            assert.equal(reply.channel, "/service/echo");
            assert.deepEqual(reply.data, data);

            const reply2 = await call("just a string");
            assert.equal(reply2.successful, true, `remoteCall reply: ${JSON.stringify(reply2)}`);
            assert.equal(reply2.data, "just a string");

            // Barrier: a broadcast that the spy does receive, after which any echo broadcast would have arrived.
            const mark = {n: "barrier", id: nonce()};
            await cometdPublish(a, "/echo-barrier", mark);
            await spied.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(spied.messages.map(m => [m.channel, m.data]), [["/echo-barrier", mark]],
                "service messages are never broadcast");
            assert.equal(spy.received.filter(r => r.message.channel.startsWith("/service/")).length, 0);
        });
    });
});
