// Recovery when the broker forgets every session (process restarted on the same port).
//
// How the clients behave (read from their sources in node_modules):
// - CometD JS 9 (cometd/Client.js): a failed /meta/connect (the connection dropped) is retried with
//   back-off; the new broker answers 402 with advice reconnect:"handshake"; the client then re-handshakes
//   by itself. Its #handshake() calls clearSubscriptions(), so subscriptions are NOT resent: CometD's
//   documented idiom is to subscribe from a /meta/handshake listener, which fires again (with
//   reestablish:true) on the automatic re-handshake. The test registers that listener once, before the
//   restart, and never calls subscribe() after it.
// - Faye 1.4.3 (faye/src/protocol/client.js): on reconnect:"handshake" it re-handshakes and re-sends
//   every subscription itself (`this.subscribe(this._channels.getKeys(), true)`).
import {describe, it, afterEach} from "node:test";
import assert from "node:assert/strict";
import {startBroker} from "../broker.mjs";
import {
    Inbox, cometdConnected, cometdHandshake, cometdPublish, cometdSubscribe, nonce, scenario, sleep,
    waitUntil, withTimeout,
} from "../helpers.mjs";

const QUIET_MS = 600;

describe("recovery after the broker forgets the session", () => {
    let broker;

    afterEach(async () => {
        if (broker) await broker.stop();
        broker = null;
    });

    for (const kill of [false, true]) {
        it(`CometD JS re-handshakes and re-subscribes by itself (${kill ? "SIGKILL" : "SIGTERM"} restart)`, async () => {
            broker = await startBroker(["--timeout", "2000"]);
            await scenario(broker, async pool => {
                const a = pool.cometd(broker.url, {name: "a"});
                const inbox = new Inbox("a /recover/cometd");
                const handshakes = [];
                const subscribeReplies = [];
                // Application code, registered once: subscribe on every successful handshake.
                a.cometd.addListener("/meta/handshake", reply => {
                    if (reply.successful) {
                        handshakes.push({clientId: reply.clientId, reestablish: reply.reestablish});
                        a.cometd.subscribe("/recover/cometd", inbox.push, r => subscribeReplies.push(r));
                    }
                });
                await cometdHandshake(a);
                await cometdConnected(a);
                await waitUntil(() => subscribeReplies.length === 1, 5000, "first subscribe reply");
                assert.equal(subscribeReplies[0].successful, true);
                const firstClientId = a.cometd.getClientId();

                const b = pool.cometd(broker.url, {name: "b"});
                await cometdHandshake(b);
                const m1 = {n: 1, id: nonce()};
                await cometdPublish(b, "/recover/cometd", m1);
                await inbox.waitFor(1);
                assert.deepEqual(inbox.data, [m1]);
                b.cometd.disconnect();

                // The broker forgets everything.
                await broker.restart({kill});

                // a notices (dropped connect, then 402 + handshake advice), re-handshakes and re-subscribes.
                await waitUntil(() => subscribeReplies.length === 2, 15000, "re-subscribe after the restart");
                assert.equal(subscribeReplies[1].successful, true, JSON.stringify(subscribeReplies[1]));
                assert.equal(handshakes.length, 2);
                assert.equal(handshakes[1].reestablish, true);
                assert.notEqual(handshakes[1].clientId, firstClientId, "a new session after the restart");
                await waitUntil(() => a.cometd.getStatus() === "connected", 5000, "a to be connected again");
                assert.equal(a.cometd.getTransport().type, "long-polling");
                // The recovery went through a 402 with handshake advice on a /meta/connect.
                const unknown = a.received.map(r => r.message)
                    .filter(m => m.channel === "/meta/connect" && m.successful === false);
                assert.ok(unknown.length >= 1, "the new broker answered the stale connect");
                assert.match(unknown[0].error || "", /^402:/);
                assert.equal(unknown[0].advice?.reconnect, "handshake");

                const c = pool.cometd(broker.url, {name: "c"});
                await cometdHandshake(c);
                const m2 = {n: 2, id: nonce()};
                await cometdPublish(c, "/recover/cometd", m2);
                await inbox.waitFor(2, 5000);
                await sleep(QUIET_MS);
                assert.deepEqual(inbox.data, [m1, m2]);
            });
        });
    }

    for (const kill of [false, true]) {
        it(`Faye re-handshakes and re-subscribes by itself (${kill ? "SIGKILL" : "SIGTERM"} restart)`, async () => {
            broker = await startBroker(["--timeout", "2000"]);
            await scenario(broker, async pool => {
                const f = pool.faye(broker.url);
                // Record what Faye receives (incoming extension) to see its automatic re-subscribe.
                const fayeReceived = [];
                f.addExtension({
                    incoming(message, callback) {
                        fayeReceived.push(JSON.parse(JSON.stringify(message)));
                        callback(message);
                    },
                });
                const inbox = new Inbox("faye /recover/faye");
                const subscription = f.subscribe("/recover/faye", data => inbox.push({data}));
                await withTimeout(Promise.resolve(subscription), 5000, "faye subscribe");

                const b = pool.cometd(broker.url, {name: "b"});
                await cometdHandshake(b);
                const m1 = {n: 1, id: nonce()};
                await cometdPublish(b, "/recover/faye", m1);
                await inbox.waitFor(1);
                assert.deepEqual(inbox.data, [m1]);
                const firstClientId = f._dispatcher.clientId;
                const seenBefore = fayeReceived.length;
                b.cometd.disconnect();

                await broker.restart({kill});

                // Faye gets 402 + handshake advice, re-handshakes, then re-subscribes on its own.
                const resubscribed = await waitUntil(() => fayeReceived.slice(seenBefore).find(m =>
                    m.channel === "/meta/subscribe" && m.successful === true &&
                    [].concat(m.subscription).includes("/recover/faye")), 15000, "faye to re-subscribe after the restart");
                assert.ok(resubscribed);
                const handshake = fayeReceived.slice(seenBefore).find(m => m.channel === "/meta/handshake" && m.successful);
                assert.ok(handshake, "faye re-handshook");
                assert.notEqual(handshake.clientId, firstClientId, "a new session after the restart");
                assert.equal(f._dispatcher.connectionType, "long-polling");

                const c = pool.cometd(broker.url, {name: "c"});
                await cometdHandshake(c);
                const m2 = {n: 2, id: nonce()};
                await cometdPublish(c, "/recover/faye", m2);
                await inbox.waitFor(2, 5000);
                await sleep(QUIET_MS);
                assert.deepEqual(inbox.data, [m1, m2]);
            });
        });
    }
});
