// Reliability with real CometD JS 9 extensions (BAYEUX.md 6.2, 6.3; EXT-ACK-*, EXT-TS-*):
//  - AckExtension through a fault-injecting TCP proxy (../faultproxy.mjs) that loses /meta/connect
//    responses carrying deliveries (the broker wrote them; the client gets half a body and a dead
//    connection) and drops /meta/connect requests before they reach the broker. The subscriber must
//    see every message exactly once, in order; the proxy's view of the wire is checked against the ack
//    protocol (batch numbers, redelivery first and in order, nothing acknowledged comes back, deliveries
//    only on connect responses, an old-batch ack is answered at once).
//  - The same faults without the AckExtension (loss allowed, only reported; the cuts are asserted).
//  - `--ack-extension false`: no `ext.ack` in the handshake reply; the client then never numbers batches.
//  - TimeSyncExtension: `tc` echoed, `ts` the receipt time, `p` covers the hold, offset sane.
import {describe, it, afterEach} from "node:test";
import assert from "node:assert/strict";
import {AckExtension, TimeSyncExtension} from "cometd";
import {startBroker} from "../broker.mjs";
import {startFaultProxy} from "../faultproxy.mjs";
import {
    Inbox, cometdConnected, cometdHandshake, cometdPublish, cometdSubscribe, rawDeliveries, scenario, sleep,
    waitUntil,
} from "../helpers.mjs";

const QUIET_MS = 600;
const TOTAL = 200; // messages published steadily during the fault phase
const HOLD_MS = 6000; // broker connect hold: long enough that a held redelivery would be noticed

// Fast retries after a failed connect (CometD's default back-off grows by 1 s per failure).
const FAST_RETRY = {backoffIncrement: 50, maxBackoff: 500};

const isMetaConnectReply = m => m.channel === "/meta/connect" && m.successful !== undefined;

// The fault schedule (only while `armed`): cut the 1st, 4th, 5th, 9th and 13th connect responses that carry
// deliveries (the 5th is normally the redelivery of the 4th: two losses in a row), drop every 7th connect
// request (4th, 11th, 18th) before it reaches the broker. `cutNext` cuts the next delivering response.
function faultPlan() {
    const plan = {
        armed: false,
        cutNext: false,
        deliveringResponses: 0,
        armedConnects: 0,
        cutAt: [], // {batch, data[]} of every cut connect response
        onRequest({isConnect}) {
            if (!plan.armed || !isConnect) return "pass";
            plan.armedConnects += 1;
            return plan.armedConnects % 7 === 4 && plan.armedConnects <= 18 ? "drop" : "pass";
        },
        onResponse({isConnect, response}) {
            if (!isConnect || response.deliveries.length === 0) return "pass";
            const reply = response.messages.find(isMetaConnectReply);
            const record = {batch: reply?.ext?.ack, data: response.deliveries.map(d => d.data)};
            if (plan.cutNext) {
                plan.cutNext = false;
                plan.cutAt.push(record);
                return "cut";
            }
            if (!plan.armed) return "pass";
            plan.deliveringResponses += 1;
            if ([1, 4, 5, 9, 13].includes(plan.deliveringResponses)) {
                plan.cutAt.push(record);
                return "cut";
            }
            return "pass";
        },
    };
    return plan;
}

// Runs the publisher/subscriber scenario; returns what the checks need.
async function faultScenario(pool, broker, proxy, plan, {ack, channel}) {
    const sub = pool.cometd(proxy.urlFor(broker.url), {name: ack ? "sub-ack" : "sub-plain", config: FAST_RETRY});
    if (ack) sub.cometd.registerExtension("ack", new AckExtension());
    const inbox = new Inbox(`${sub.name} ${channel}`);
    const hs = await cometdHandshake(sub);
    await cometdConnected(sub);
    await cometdSubscribe(sub, channel, inbox.push);

    const pub = pool.cometd(broker.url, {name: "publisher"}); // direct, no faults
    await cometdHandshake(pub);

    plan.armed = true;
    for (let n = 0; n < TOTAL; ++n) {
        await cometdPublish(pub, channel, {n});
        await sleep(8);
    }
    // Wait for the steady phase to be delivered (or, without ack, for the traffic to settle).
    if (ack) {
        await inbox.waitFor(TOTAL, 20000);
    } else {
        await sleep(1000); // whatever is going to arrive has arrived by then
    }
    plan.armed = false;

    // Tail: one more message whose (only) connect response is lost while nothing else is published, so
    // the client's next connect acknowledges an old batch with an otherwise empty queue (EXT-ACK-6).
    await sleep(300); // let the subscriber's connect be held again
    plan.cutNext = true;
    await cometdPublish(pub, channel, {n: TOTAL});
    await waitUntil(() => !plan.cutNext, 5000, "the tail delivery's connect response to be cut");
    const cutTime = Date.now();
    if (ack) await inbox.waitFor(TOTAL + 1, 3000);
    else await sleep(1500);
    const tailLatency = Date.now() - cutTime;
    await sleep(QUIET_MS);
    return {sub, inbox, hs, tailLatency};
}

describe("reliable delivery through a lossy connection", () => {
    let broker;
    let proxy;

    afterEach(async () => {
        if (proxy) await proxy.stop();
        if (broker) await broker.stop();
        proxy = null;
        broker = null;
    });

    it("AckExtension: every message exactly once and in order despite lost connect requests and responses",
        async t => {
            broker = await startBroker(["--timeout", String(HOLD_MS)]);
            const plan = faultPlan();
            proxy = await startFaultProxy({targetPort: broker.port, onRequest: plan.onRequest, onResponse: plan.onResponse});
            const channel = "/reliable/ack";
            await scenario(broker, async pool => {
                const {sub, inbox, hs, tailLatency} = await faultScenario(pool, broker, proxy, plan, {ack: true, channel});
                const c = proxy.counters;
                t.diagnostic(`proxy: ${JSON.stringify(c)}; cut batches ${JSON.stringify(plan.cutAt.map(x => x.batch))}; ` +
                    `tail redelivered ${tailLatency} ms after the cut`);

                // The faults really happened (the test is meaningful).
                assert.ok(c.cutConnectResponses >= 4, `connect responses cut: ${c.cutConnectResponses}`);
                assert.ok(c.cutDeliveries >= 4, `deliveries inside cut responses: ${c.cutDeliveries}`);
                assert.ok(c.droppedConnects >= 2, `connect requests dropped before the broker: ${c.droppedConnects}`);

                // EXT-ACK-1: negotiated.
                assert.equal(hs.ext?.ack, true, `handshake reply ext: ${JSON.stringify(hs.ext)}`);

                // The application saw 0..TOTAL exactly once each, in order; so did the client below its listeners.
                const expected = Array.from({length: TOTAL + 1}, (_, n) => n);
                assert.deepEqual(inbox.data.map(d => d.n), expected, "application deliveries");
                assert.deepEqual(rawDeliveries(sub, channel).map(m => m.data.n), expected, "deliveries the client received");

                // The wire as the proxy saw it (all of it belongs to the subscriber).
                const exchanges = proxy.exchanges.filter(e => e.status !== null).sort((a, b) => a.responseSeq - b.responseSeq);
                // EXT-ACK-3: deliveries only ride on /meta/connect responses.
                for (const e of exchanges.filter(x => !x.isConnect)) {
                    const deliveries = e.response.filter(m => m.data !== undefined && m.successful === undefined);
                    assert.deepEqual(deliveries, [], `deliveries on a non-connect response to ${JSON.stringify(e.messages)}`);
                }
                // EXT-ACK-2: batch numbers 1, 2, 3, ... on consecutive connect responses (lost ones included).
                const connects = exchanges.filter(e => e.isConnect).map(e => {
                    const reply = e.response.find(isMetaConnectReply);
                    const request = e.messages.find(m => m.channel === "/meta/connect");
                    return {
                        acked: request.ext?.ack, batch: reply?.ext?.ack, successful: reply?.successful, cut: e.cut,
                        deliveries: e.response.filter(m => m.data !== undefined && m.successful === undefined).map(m => m.data.n),
                        latency: e.responseAt - e.requestAt,
                    };
                });
                assert.ok(connects.length > 20, `${connects.length} connect exchanges`);
                for (const [i, x] of connects.entries()) {
                    assert.equal(x.successful, true, `connect response #${i + 1}: ${JSON.stringify(x)}`);
                    assert.equal(x.batch, i + 1, `connect response #${i + 1} batch number (${JSON.stringify(connects.slice(Math.max(0, i - 2), i + 1))})`);
                    assert.equal(typeof x.acked, "number", `connect request #${i + 1} carries ext.ack`);
                }
                // The first connect acknowledges 0; each later request acknowledges the last batch the client got.
                assert.equal(connects[0].acked, 0);
                // EXT-ACK-4/5: every response first re-sends, in order, the deliveries of the batches the request did not
                // acknowledge, then only messages never sent before.
                const sentSoFar = new Set();
                for (const [i, x] of connects.entries()) {
                    // (a lost redelivery re-sends the same messages again: keep each once, first order)
                    const unacked = [...new Set(connects.slice(0, i).filter(p => p.batch > x.acked).flatMap(p => p.deliveries))];
                    assert.deepEqual(x.deliveries.slice(0, unacked.length), unacked,
                        `connect response batch ${x.batch} (request acked ${x.acked}) must start with the unacknowledged ` +
                        `deliveries; got ${JSON.stringify(x.deliveries)}`);
                    for (const n of x.deliveries.slice(unacked.length)) {
                        assert.ok(!sentSoFar.has(n), `message ${n} re-sent in batch ${x.batch} although batch ${x.acked} was acknowledged`);
                    }
                    for (const n of x.deliveries) sentSoFar.add(n);
                }
                // Each cut response's messages really came again later (redelivery, not luck).
                for (const cut of plan.cutAt) {
                    const later = connects.filter(x => x.batch > cut.batch && !x.cut).flatMap(x => x.deliveries);
                    for (const d of cut.data) assert.ok(later.includes(d.n), `message ${d.n} of lost batch ${cut.batch} redelivered`);
                }
                // EXT-ACK-6: the tail's redelivery was not held for the connect timeout.
                assert.ok(tailLatency < HOLD_MS / 3, `redelivery after the lost tail response took ${tailLatency} ms (hold ${HOLD_MS})`);
                const tail = connects.findIndex(x => x.cut && x.deliveries.includes(TOTAL));
                assert.ok(tail >= 0 && tail + 1 < connects.length, "a connect response after the lost tail");
                const redelivery = connects[tail + 1];
                assert.equal(redelivery.acked, connects[tail].batch - 1, "the client acknowledged the batch before the lost one");
                assert.deepEqual(redelivery.deliveries, [TOTAL]);
                assert.ok(redelivery.latency < 1000, `the old-batch connect was answered after ${redelivery.latency} ms`);
            });
        });

    it("without the AckExtension the same faults are survivable but not loss-free (loss reported, cuts asserted)",
        async t => {
            broker = await startBroker(["--timeout", String(HOLD_MS)]);
            const plan = faultPlan();
            proxy = await startFaultProxy({targetPort: broker.port, onRequest: plan.onRequest, onResponse: plan.onResponse});
            const channel = "/reliable/plain";
            await scenario(broker, async pool => {
                const {inbox, hs} = await faultScenario(pool, broker, proxy, plan, {ack: false, channel});
                const c = proxy.counters;
                const got = inbox.data.map(d => d.n);
                const lost = Array.from({length: TOTAL + 1}, (_, n) => n).filter(n => !got.includes(n));
                t.diagnostic(`proxy: ${JSON.stringify(c)}; lost ${lost.length} message(s): ${JSON.stringify(lost)}`);
                assert.equal(hs.ext?.ack, undefined, "no ack negotiated when the client did not ask");
                assert.ok(c.cutConnectResponses >= 1, `connect responses cut: ${c.cutConnectResponses}`);
                assert.ok(c.cutDeliveries >= 1, `deliveries inside cut responses: ${c.cutDeliveries}`);
                // Whatever arrived arrived once and in order.
                for (let i = 1; i < got.length; ++i) assert.ok(got[i] > got[i - 1], `order/duplicates: ${JSON.stringify(got)}`);
            });
        });
});

describe("ack extension switched off (--ack-extension false)", () => {
    let broker;

    afterEach(async () => {
        if (broker) await broker.stop();
        broker = null;
    });

    it("EXT-ACK-1: no ext.ack in the handshake reply, so the client numbers nothing; delivery still works", async () => {
        broker = await startBroker(["--timeout", "2000", "--ack-extension", "false"]);
        await scenario(broker, async pool => {
            const sub = pool.cometd(broker.url, {name: "sub"});
            sub.cometd.registerExtension("ack", new AckExtension());
            const inbox = new Inbox("sub /ackoff");
            const hs = await cometdHandshake(sub);
            const hsRequest = sub.sent.map(s => s.message).find(m => m.channel === "/meta/handshake");
            assert.equal(hsRequest.ext?.ack, true, "the client asked for acks");
            assert.equal(hs.ext?.ack, undefined, `handshake reply ext: ${JSON.stringify(hs.ext)}`);
            await cometdConnected(sub);
            await cometdSubscribe(sub, "/ackoff", inbox.push);
            const pub = pool.cometd(broker.url, {name: "pub"});
            await cometdHandshake(pub);
            for (let n = 0; n < 5; ++n) await cometdPublish(pub, "/ackoff", {n});
            await inbox.waitFor(5);
            await sleep(QUIET_MS);
            assert.deepEqual(inbox.data, [0, 1, 2, 3, 4].map(n => ({n})));
            for (const m of sub.sent.map(s => s.message).filter(m => m.channel === "/meta/connect")) {
                assert.equal(m.ext?.ack, undefined, `connect request: ${JSON.stringify(m)}`);
            }
            for (const m of sub.received.map(r => r.message).filter(isMetaConnectReply)) {
                assert.equal(m.ext?.ack, undefined, `connect reply: ${JSON.stringify(m)}`);
            }
        });
    });
});

describe("timesync extension", () => {
    let broker;
    const HOLD = 1500;

    afterEach(async () => {
        if (broker) await broker.stop();
        broker = null;
    });

    it("EXT-TS-1/2/3: tc echoed, ts = receipt time, p covers the hold, offset within ±1000 ms", async () => {
        broker = await startBroker(["--timeout", String(HOLD)]);
        await scenario(broker, async pool => {
            const a = pool.cometd(broker.url, {name: "a"});
            const timesync = new TimeSyncExtension();
            a.cometd.registerExtension("timesync", timesync);
            const inbox = new Inbox("a /ts");
            await cometdHandshake(a);
            await cometdConnected(a);
            // EXT-TS-3: meta requests carrying timesync are processed normally (subscribe, publish, deliveries).
            await cometdSubscribe(a, "/ts", inbox.push);
            await cometdPublish(a, "/ts", {hello: "timesync"});
            await inbox.waitFor(1);
            // Let at least two connects be held for the full hold time (empty-queue replies).
            const heldReplies = () => pairs().filter(p => p.request.channel === "/meta/connect" && p.elapsed >= HOLD - 100);
            await waitUntil(() => heldReplies().length >= 2, HOLD * 2 + 4000, "two held connects to time out");
            assert.deepEqual(inbox.data, [{hello: "timesync"}]);

            function pairs() {
                const sent = a.sent.filter(s => s.message.channel.startsWith("/meta/"));
                const out = [];
                for (const s of sent) {
                    const r = a.received.find(x => x.message.id === s.message.id && x.message.channel === s.message.channel &&
                        x.message.successful !== undefined);
                    if (r) out.push({request: s.message, sentAt: s.at, reply: r.message, receivedAt: r.at, elapsed: r.at - s.at});
                }
                return out;
            }

            const all = pairs();
            const channels = new Set(all.map(p => p.request.channel));
            for (const ch of ["/meta/handshake", "/meta/connect", "/meta/subscribe"]) assert.ok(channels.has(ch), `${ch} answered`);
            for (const p of all) {
                const what = `${p.request.channel} id=${p.request.id}`;
                assert.equal(p.reply.successful, true, `${what}: ${JSON.stringify(p.reply)}`);
                const req = p.request.ext?.timesync;
                assert.ok(req && Number.isInteger(req.tc), `${what}: the client sent timesync ${JSON.stringify(p.request.ext)}`);
                const ts = p.reply.ext?.timesync;
                assert.ok(ts, `${what}: reply carries ext.timesync: ${JSON.stringify(p.reply)}`);
                assert.equal(ts.tc, req.tc, `${what}: tc echoed`);
                assert.ok(Number.isInteger(ts.ts), `${what}: ts integer ${JSON.stringify(ts)}`);
                assert.ok(Number.isInteger(ts.p) && ts.p >= 0, `${what}: p ${JSON.stringify(ts)}`);
                // Same machine, same clock: ts is the receipt time, between sending and the reply's arrival,
                // close to the sending time; p is the time the broker kept the request.
                assert.ok(ts.ts >= p.sentAt - 20 && ts.ts <= p.sentAt + 300, `${what}: ts ${ts.ts} vs sent at ${p.sentAt}`);
                assert.ok(ts.p <= p.elapsed + 20, `${what}: p ${ts.p} > elapsed ${p.elapsed}`);
                if (ts.a !== undefined) {
                    assert.equal(ts.a, req.tc + req.o + req.l - ts.ts, `${what}: a = tc + o + l - ts (${JSON.stringify({req, ts})})`);
                }
            }
            // EXT-TS-2: a held connect's p covers the hold.
            for (const p of heldReplies()) {
                const ts = p.reply.ext.timesync;
                assert.ok(ts.p >= HOLD - 100, `held connect (elapsed ${p.elapsed} ms): p=${ts.p}, expected >= ${HOLD - 100}`);
            }
            const offset = timesync.getTimeOffset();
            const lag = timesync.getNetworkLag();
            assert.ok(Number.isFinite(offset) && Math.abs(offset) <= 1000, `time offset ${offset}`);
            assert.ok(Number.isFinite(lag) && lag >= -50 && lag <= 1000, `network lag ${lag}`);
            assert.ok(Math.abs(timesync.getServerTime() - Date.now()) <= 1000);
        });
    });
});
