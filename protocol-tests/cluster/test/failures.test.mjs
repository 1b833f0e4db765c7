// Failures of a three-node cluster on the Redis engine behind HAProxy (issue 15), each bounded in time and
// stopping what it started:
//  - SIGKILL of a node while subscribers' connects (long-polling) and sockets (WebSocket) are held on it, and right after it sent a batch that the
//    client has not acknowledged yet (received, and lost on the way): CometD AckExtension subscribers see every
//    acknowledged publish of a sequence-numbered publisher exactly once, in order;
//  - clients without the ack extension re-handshake after 402::session_unknown (or simply continue) and keep
//    receiving;
//  - Redis restarted mid-run (append-only file): publishes during the outage fail visibly (never acknowledged
//    and dropped), the publisher retries, subscribers see every acknowledged publish; /ready and /api/publish
//    answer 503 meanwhile;
//  - the nodes' pub/sub connections dropped by Redis (CLIENT KILL TYPE pubsub): every node resubscribes and no
//    acknowledged publish is lost for any node's subscribers;
//  - one node cut from Redis by iptables (its packets to Redis dropped): /ready turns 503 on it, and no
//    subscriber gets a message twice when it comes back.
// Each test reports its figures (published, delivered, lost, duplicated) as a diagnostic.
import {describe, it} from "node:test";
import assert from "node:assert/strict";
import {SELF_CHECK, canUseIptables, withCluster} from "../cluster.mjs";
import {
    Inbox, cometdConnected, cometdHandshake, cometdSubscribe, nonce, scenario, sequenceFigures, sequencePublisher,
    sleep, subscribeOnHandshake, trackedCometD, waitForSequence, waitUntil,
} from "../clients.mjs";

const MULTI = SELF_CHECK ? "self-check: one node, nothing to fail over to" : false;
const REDIS = SELF_CHECK ? "self-check: no Redis" : false;
// Fast retries after a failed request (CometD's default back-off grows by 1 s per failure).
const FAST_RETRY = {backoffIncrement: 50, maxBackoff: 500};

async function ackSubscribers(pool, url, channel, count, prefix = "ack", {websocket = false} = {}) {
    const subs = [];
    for (let i = 0; i < count; ++i) {
        const c = trackedCometD(pool, url, {name: `${prefix}${i}`, ack: true, websocket, config: FAST_RETRY});
        const inbox = new Inbox(c.name);
        await cometdHandshake(c);
        await cometdConnected(c);
        await cometdSubscribe(c, channel, m => inbox.push(m));
        subs.push({c, inbox});
    }
    return subs;
}

/** Sums the subscribers' figures, reports them, and returns them. */
function figures(t, label, publisher, subs) {
    const expected = new Map([[publisher.pub, publisher.acked]]);
    const per = subs.map(({c, inbox}) => ({name: c.name, ...sequenceFigures(inbox.data, expected)}));
    const total = {published: publisher.acked.size, attempts: publisher.attempts, failedPublishes: publisher.failures,
        subscribers: subs.length, delivered: 0, lost: 0, duplicated: 0, retried: 0, outOfOrder: 0};
    for (const f of per) {
        for (const k of ["lost", "duplicated", "retried", "outOfOrder"]) total[k] += f[k];
        total.delivered += f.received;
    }
    t.diagnostic(`FIGURES ${label}: ${JSON.stringify(total)}`);
    return {total, per};
}

function assertExactlyOnce({total, per}) {
    assert.deepEqual({lost: total.lost, duplicated: total.duplicated, outOfOrder: total.outOfOrder},
        {lost: 0, duplicated: 0, outOfOrder: 0}, JSON.stringify(per));
}

describe("a node is SIGKILLed mid-traffic", () => {
    it("with connects held on it: ack subscribers lose nothing and see no duplicate", {skip: MULTI}, async t => {
        await withCluster({name: "kill-held", args: ["--timeout", "4000"]}, async cluster => {
            await scenario(cluster, async pool => {
                const channel = `/cluster/kill/${nonce("h")}`;
                const subs = await ackSubscribers(pool, cluster.url, channel, 6);
                // WebSocket subscribers too: through HAProxy their sockets land on every node in turn.
                subs.push(...await ackSubscribers(pool, cluster.url, channel, 3, "ack-ws", {websocket: true}));
                // The publisher talks to n1 directly: it is never the node killed.
                const pubClient = trackedCometD(pool, cluster.nodeUrl(0), {name: "pub"});
                await cometdHandshake(pubClient);
                const acked = new Set();
                const first = sequencePublisher(pubClient, channel, {pub: "pub", total: 60, acked});
                await first.done;
                await sleep(1000); // every subscriber's connect is held now, two of them (round-robin) on n2
                const failuresBefore = subs.reduce((n, s) => n + s.c.failures, 0);
                await cluster.killNode(1);
                const second = sequencePublisher(pubClient, channel, {pub: "pub", from: 60, total: 140, acked});
                await second.done;
                const publisher = {pub: "pub", acked, attempts: first.attempts + second.attempts,
                    failures: first.failures + second.failures};
                for (const {inbox} of subs) await waitForSequence(inbox, "pub", acked, 20000);
                const failuresAfter = subs.reduce((n, s) => n + s.c.failures, 0);
                t.diagnostic(`requests of the subscribers cut by the kill: ${failuresAfter - failuresBefore}`);
                assert.ok(failuresAfter > failuresBefore, "no subscriber had a connect held on the killed node");
                assertExactlyOnce(figures(t, "kill with connects held", publisher, subs));
            });
        });
    });

    for (const lost of [false, true]) {
        it(`right after it sent a batch not yet acknowledged (the reply ${lost ? "lost on the way" : "received"}): ` +
            "nothing lost, nothing twice", {skip: MULTI}, async t => {
            await withCluster({name: lost ? "kill-batch-lost" : "kill-batch", args: ["--timeout", "3000"]},
                async cluster => {
                    await scenario(cluster, async pool => {
                        const channel = `/cluster/kill/${nonce("b")}`;
                        const subs = await ackSubscribers(pool, cluster.url, channel, 3);
                        const trigger = subs[0].c;
                        const kill = {armed: false, node: null, batch: null};
                        // The first delivering connect reply the trigger gets from n2 or n3 after arming: kill that
                        // node before the client can acknowledge the batch (its next connect carries the ack).
                        trigger.context.onResponse = (node, xhr) => {
                            if (!kill.armed || !node || node === "n1") return "pass";
                            let messages;
                            try {
                                messages = JSON.parse(xhr.responseText);
                            } catch {
                                return "pass";
                            }
                            const reply = messages.find(m => m.channel === "/meta/connect" && m.successful);
                            if (!reply || !messages.some(m => m.channel === channel)) return "pass";
                            kill.armed = false;
                            kill.node = node;
                            kill.batch = reply.ext?.ack;
                            kill.data = messages.filter(m => m.channel === channel).map(m => m.data.seq);
                            process.kill(cluster.nodes[cluster.indexOf(node)].pid, "SIGKILL");
                            return lost ? "drop" : "pass";
                        };
                        const pubClient = trackedCometD(pool, cluster.nodeUrl(0), {name: "pub"});
                        await cometdHandshake(pubClient);
                        const acked = new Set();
                        const warm = sequencePublisher(pubClient, channel, {pub: "pub", total: 30, acked});
                        await warm.done;
                        kill.armed = true;
                        const rest = sequencePublisher(pubClient, channel, {pub: "pub", from: 30, total: 170, acked});
                        await rest.done;
                        await waitUntil(() => kill.node, 5000, "the trigger's delivering reply from n2 or n3");
                        t.diagnostic(`killed ${kill.node} after it sent batch ${kill.batch} (seqs ${kill.data.join(",")})`);
                        const publisher = {pub: "pub", acked, attempts: warm.attempts + rest.attempts,
                            failures: warm.failures + rest.failures};
                        for (const {inbox} of subs) await waitForSequence(inbox, "pub", acked, 20000);
                        assertExactlyOnce(figures(t, `kill after an unacknowledged batch (${lost ? "lost" : "received"})`,
                            publisher, subs));
                    });
                });
        });
    }

    it("clients without the ack extension re-handshake (402) or continue, and keep receiving", {skip: MULTI},
        async t => {
            await withCluster({name: "kill-plain", args: ["--timeout", "3000"]}, async cluster => {
                await scenario(cluster, async pool => {
                    const channel = `/cluster/kill/${nonce("p")}`;
                    const plain = [];
                    for (let i = 0; i < 4; ++i) {
                        const c = trackedCometD(pool, cluster.url, {name: `plain${i}`, config: FAST_RETRY});
                        const inbox = new Inbox(c.name);
                        const state = subscribeOnHandshake(c, channel, m => inbox.push(m));
                        await cometdHandshake(c);
                        await waitUntil(() => state.subscribed === 1, 5000, `${c.name} subscribed`);
                        plain.push({c, inbox, state});
                    }
                    const f = pool.faye(cluster.url);
                    const fInbox = new Inbox("faye");
                    await Promise.resolve(f.subscribe(channel, data => fInbox.push({data})));

                    const pubClient = trackedCometD(pool, cluster.nodeUrl(0), {name: "pub"});
                    await cometdHandshake(pubClient);
                    const acked = new Set();
                    const before = sequencePublisher(pubClient, channel, {pub: "pub", total: 40, acked});
                    await before.done;
                    await sleep(500);
                    await cluster.killNode(1);
                    await cluster.killNode(2);
                    // Recovery: within a few seconds every client receives again (a marker published repeatedly).
                    const recovered = async (inbox, from) => inbox.data.some(d => d.pub === "marker" && d.seq >= from);
                    const deadline = Date.now() + 15000;
                    let marker = 0;
                    const all = [...plain.map(p => p.inbox), fInbox];
                    for (;;) {
                        await pubClient.cometd.publish(channel, {pub: "marker", seq: marker++});
                        await sleep(250);
                        const done = await Promise.all(all.map(inbox => recovered(inbox, 0)));
                        if (done.every(Boolean)) break;
                        assert.ok(Date.now() < deadline, `not every client receives again 15 s after the kill: ${
                            all.filter((_, i) => !done[i]).map(i => i.name)}`);
                    }
                    const handshook = plain.filter(p => p.state.handshakes > 1).map(p => p.c.name);
                    const unknown = plain.flatMap(p => p.c.received.map(r => r.message))
                        .filter(m => m.successful === false && /^402:/.test(m.error || ""));
                    t.diagnostic(`re-handshook after the kill: ${handshook.length}/${plain.length} CometD clients ` +
                        `(${unknown.length} 402 replies); the others continued their sessions`);
                    for (const m of unknown) assert.equal(m.advice?.reconnect, "handshake", JSON.stringify(m));
                    for (const p of plain) {
                        assert.ok(p.state.handshakes === 1 || p.state.subscribed === p.state.handshakes,
                            `${p.c.name} re-handshook but did not re-subscribe: ${JSON.stringify(p.state)}`);
                    }
                    figures(t, "kill, clients without ack (loss allowed, reported)", {pub: "pub", acked,
                        attempts: before.attempts, failures: before.failures}, plain);
                });
            });
        });
});

describe("Redis goes away", () => {
    it("restarted mid-run (append-only): failed publishes are told, retried, and every acknowledged one arrives",
        {skip: REDIS}, async t => {
            await withCluster({name: "redis-restart", appendonly: true, args: ["--timeout", "3000"]}, async cluster => {
                await scenario(cluster, async pool => {
                    const channel = `/cluster/redis/${nonce("r")}`;
                    const subs = await ackSubscribers(pool, cluster.url, channel, 3);
                    const pubClient = trackedCometD(pool, cluster.url, {name: "pub", config: FAST_RETRY});
                    await cometdHandshake(pubClient);
                    const publisher = sequencePublisher(pubClient, channel, {pub: "pub", pauseMs: 15, retryMs: 100,
                        ms: 3000});
                    await sleep(1000);
                    // Down for 3 s: probe what the nodes answer meanwhile.
                    const probes = {ready: [], api: []};
                    const restart = cluster.redis.restart({downMs: 3000});
                    await sleep(1500);
                    for (let i = 0; i < cluster.nodes.length; ++i) {
                        const ready = await fetch(`${cluster.nodeOrigin(i)}/ready`).then(r => r.status, e => e.message);
                        probes.ready.push(ready);
                        const api = await cluster.api("POST", "/api/publish", {channel: `${channel}-api`, data: {}},
                            {node: i});
                        probes.api.push(api.status);
                    }
                    await restart;
                    // Publishing goes on until the publisher has been acknowledged again for a while.
                    const failuresAtRestart = publisher.failures;
                    const ackedAtRestart = publisher.acked.size;
                    await waitUntil(() => publisher.acked.size >= ackedAtRestart + 100, 20000,
                        "100 acknowledged publishes after Redis came back");
                    await publisher.stop();
                    t.diagnostic(`during the outage: /ready ${probes.ready}, /api/publish ${probes.api}; ` +
                        `failed publish replies: ${JSON.stringify(publisher.failureReplies.slice(0, 2))}`);
                    for (const {inbox} of subs) await waitForSequence(inbox, "pub", publisher.acked, 20000);
                    const result = figures(t, "redis restart", {pub: "pub", ...publisher}, subs);
                    assert.ok(failuresAtRestart > 0, "no publish failed while Redis was down");
                    assert.ok(publisher.failureReplies.some(r => r.error === "503::server_unavailable"),
                        `no publish was answered 503::server_unavailable: ${JSON.stringify(publisher.failureReplies.slice(0, 3))}`);
                    assert.deepEqual(probes.ready, cluster.nodes.map(() => 503), "/ready while Redis is down");
                    assert.deepEqual(probes.api, cluster.nodes.map(() => 503), "/api/publish while Redis is down");
                    assertExactlyOnce(result);
                });
            });
        });

    it("the nodes' pub/sub connections are dropped (CLIENT KILL TYPE pubsub): they resubscribe, nothing is lost",
        {skip: REDIS}, async t => {
            await withCluster({name: "pubsub-kill", args: ["--timeout", "3000"]}, async cluster => {
                await scenario(cluster, async pool => {
                    const channel = `/cluster/pubsub/${nonce("k")}`;
                    // Subscribers pinned to every node, so that each node's pub/sub connection matters.
                    const subs = [];
                    for (let i = 0; i < cluster.nodes.length; ++i) {
                        subs.push(...await ackSubscribers(pool, cluster.nodeUrl(i), channel, 1, `ack-n${i + 1}-`));
                    }
                    const pubClient = trackedCometD(pool, cluster.nodeUrl(0), {name: "pub", config: FAST_RETRY});
                    await cometdHandshake(pubClient);
                    const publisher = sequencePublisher(pubClient, channel, {pub: "pub", pauseMs: 10, ms: 3000});
                    const killed = [];
                    for (let round = 0; round < 2; ++round) {
                        await sleep(700);
                        const out = await cluster.redis.cli("CLIENT", "KILL", "TYPE", "pubsub");
                        killed.push(Number(out.trim()));
                    }
                    const ackedAtLastKill = publisher.acked.size;
                    await waitUntil(() => publisher.acked.size >= ackedAtLastKill + 100, 20000,
                        "100 acknowledged publishes after the last kill");
                    await publisher.stop();
                    t.diagnostic(`pub/sub connections killed per round: ${killed.join(", ")}`);
                    // Every node resubscribed: the messages published after the kills reach every node's subscriber.
                    for (const {inbox} of subs) await waitForSequence(inbox, "pub", publisher.acked, 20000);
                    const result = figures(t, "pub/sub connections dropped", {pub: "pub", ...publisher}, subs);
                    assert.ok(killed.every(n => n >= 1), `no pub/sub connection to kill: ${killed}`);
                    assertExactlyOnce(result);
                });
            });
        });

    it("one node cut from Redis (iptables): /ready 503 there, and no double delivery when it is back",
        {skip: REDIS}, async t => {
            if (!canUseIptables()) {
                const why = "failures.test.mjs: cut-from-Redis test SKIPPED: iptables missing or not root";
                process.stderr.write(`\n!!!!!!!! ${why} !!!!!!!!\n`);
                assert.ok(!process.env.CI, `${why} (CI is set)`);
                t.skip(why);
                return;
            }
            await withCluster({name: "redis-cut", isolatedNode: 2, args: ["--timeout", "3000"]}, async cluster => {
                await scenario(cluster, async pool => {
                    const channel = `/cluster/cut/${nonce("c")}`;
                    const subs = await ackSubscribers(pool, cluster.url, channel, 3);
                    // One more subscriber pinned to the node that will be cut, with the ack extension.
                    subs.push(...await ackSubscribers(pool, cluster.nodeUrl(2), channel, 1, "on-n3-"));
                    const pubClient = trackedCometD(pool, cluster.nodeUrl(0), {name: "pub"});
                    await cometdHandshake(pubClient);
                    const publisher = sequencePublisher(pubClient, channel, {pub: "pub", pauseMs: 15});
                    await sleep(800);
                    const heal = await cluster.cutFromRedis();
                    const cutAt = Date.now();
                    let readyAfter = null;
                    try {
                        const deadline = Date.now() + 12000;
                        while (Date.now() < deadline) {
                            const status = await fetch(`${cluster.nodeOrigin(2)}/ready`,
                                {signal: AbortSignal.timeout(2000)}).then(r => r.status, () => "no answer");
                            if (status === 503) {
                                readyAfter = Date.now() - cutAt;
                                break;
                            }
                            await sleep(200);
                        }
                        await sleep(1000); // traffic goes on while n3 is cut
                    } finally {
                        await heal();
                    }
                    const healedAt = Date.now();
                    const ackedAtHeal = publisher.acked.size;
                    await waitUntil(() => publisher.acked.size >= ackedAtHeal + 100, 20000,
                        "100 acknowledged publishes after the heal");
                    await publisher.stop();
                    t.diagnostic(`n3's /ready turned 503 ${readyAfter} ms after the cut; healed after ${healedAt - cutAt} ms`);
                    for (const {inbox} of subs) await waitForSequence(inbox, "pub", publisher.acked, 25000, 1500);
                    const result = figures(t, "node cut from redis", {pub: "pub", ...publisher}, subs);
                    assert.notEqual(readyAfter, null, "n3's /ready still 200 12 s after it was cut from Redis");
                    assertExactlyOnce(result);
                });
            });
        });
});
