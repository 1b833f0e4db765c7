// Real clients through HAProxy in front of three nodes on the Redis engine (issue 15): every request of a session
// may land on any node. CometD JS 9 over long-polling and WebSocket, Faye over both; crossing messages between
// clients on different nodes (through HAProxy, and pinned to one node each), exactly once and in order per
// publisher; wildcards with the per-session dedup; /api/publish on each node; /api/stats listing the nodes;
// /api/disconnect from another node than the one holding the session's connect.
import {describe, it, before, after} from "node:test";
import assert from "node:assert/strict";
import faye from "faye";
import {SELF_CHECK, startCluster} from "../cluster.mjs";
import {
    Inbox, cometdConnected, cometdHandshake, cometdPublish, cometdSubscribe, newFaye, nonce, rawDeliveries,
    scenario, sequenceFigures, sleep, sockets, trackedCometD, waitUntil, withTimeout,
} from "../clients.mjs";

const QUIET_MS = 600;
const MULTI = SELF_CHECK ? "self-check: one node" : false;

async function fayeSubscribe(client, channel, inbox) {
    const subscription = client.subscribe(channel, data => inbox.push({data}));
    await withTimeout(Promise.resolve(subscription), 5000, `faye subscribe ${channel}`);
    return subscription;
}

describe("real clients through HAProxy, three nodes", () => {
    let cluster;

    before(async () => {
        cluster = await startCluster({name: "clients", args: ["--timeout", "3000"]});
    });

    after(async () => {
        if (cluster) await cluster.stop();
    });

    it("HAProxy spreads consecutive requests over every node (no stickiness)", async () => {
        const seen = [];
        for (let i = 0; i < cluster.nodes.length * 2; ++i) {
            const response = await fetch(`${cluster.origin}/health`);
            assert.equal(response.status, 200);
            seen.push(response.headers.get("x-halley-node"));
        }
        assert.deepEqual(new Set(seen), new Set(cluster.nodes.map((_, i) => `n${i + 1}`)), seen.join(","));
    });

    it("CometD long-polling: three publishers and three subscribers, every message once, in order per publisher",
        async () => {
            await scenario(cluster, async pool => {
                const channel = `/cluster/lp/${nonce("c")}`;
                const subs = [];
                for (let i = 0; i < 3; ++i) {
                    const sub = trackedCometD(pool, cluster.url, {name: `sub${i}`});
                    const inbox = new Inbox(`sub${i}`);
                    await cometdHandshake(sub);
                    await cometdConnected(sub);
                    await cometdSubscribe(sub, channel, m => inbox.push(m));
                    subs.push({sub, inbox});
                }
                const pubs = [];
                for (let i = 0; i < 3; ++i) {
                    const pub = trackedCometD(pool, cluster.url, {name: `pub${i}`});
                    await cometdHandshake(pub);
                    pubs.push(pub);
                }
                const PER = 30;
                // Interleaved: each publisher's stream goes through every node.
                for (let seq = 0; seq < PER; ++seq) {
                    await Promise.all(pubs.map(p => cometdPublish(p, channel, {pub: p.name, seq})));
                }
                const expected = new Map(pubs.map(p => [p.name, new Set(Array.from({length: PER}, (_, s) => s))]));
                for (const {inbox} of subs) await inbox.waitFor(PER * pubs.length, 15000);
                await sleep(QUIET_MS);
                for (const {sub, inbox} of subs) {
                    const figures = sequenceFigures(inbox.data, expected);
                    assert.deepEqual(figures, {received: PER * pubs.length, lost: 0, duplicated: 0, retried: 0, outOfOrder: 0},
                        `${sub.name}: ${JSON.stringify(figures)}`);
                    if (!SELF_CHECK) {
                        assert.ok(new Set(sub.nodes).size > 1, `${sub.name}'s requests all went to ${sub.nodes}`);
                    }
                }
            });
        });

    it("CometD clients pinned to different nodes (no HAProxy) see each other's messages", {skip: MULTI}, async () => {
        await scenario(cluster, async pool => {
            const channel = `/cluster/pinned/${nonce("c")}`;
            const clients = [];
            for (let i = 0; i < cluster.nodes.length; ++i) {
                const c = trackedCometD(pool, cluster.nodeUrl(i), {name: `on-n${i + 1}`});
                const inbox = new Inbox(c.name);
                await cometdHandshake(c);
                await cometdConnected(c);
                await cometdSubscribe(c, channel, m => inbox.push(m));
                clients.push({c, inbox});
            }
            for (const {c} of clients) await cometdPublish(c, channel, {pub: c.name, seq: 0});
            for (const {inbox} of clients) await inbox.waitFor(clients.length, 10000);
            await sleep(QUIET_MS);
            for (const {c, inbox} of clients) {
                assert.deepEqual(inbox.data.map(d => d.pub).sort(), clients.map(x => x.c.name).sort(), c.name);
            }
        });
    });

    it("CometD over WebSocket: sockets on different nodes and a long-polling client cross messages", async () => {
        await scenario(cluster, async pool => {
            const channel = `/cluster/ws/${nonce("c")}`;
            const before = sockets.length;
            const clients = [];
            for (let i = 0; i < 3; ++i) {
                const c = trackedCometD(pool, cluster.url, {name: `ws${i}`, websocket: true});
                const inbox = new Inbox(c.name);
                await cometdHandshake(c);
                await cometdConnected(c);
                assert.equal(c.cometd.getTransport().type, "websocket");
                await cometdSubscribe(c, channel, m => inbox.push(m));
                clients.push({c, inbox});
            }
            const lp = trackedCometD(pool, cluster.url, {name: "lp"});
            const lpInbox = new Inbox("lp");
            await cometdHandshake(lp);
            await cometdConnected(lp);
            await cometdSubscribe(lp, channel, m => lpInbox.push(m));
            clients.push({c: lp, inbox: lpInbox});

            const nodes = sockets.slice(before).map(s => s.node);
            if (!SELF_CHECK) {
                assert.equal(new Set(nodes).size, 3, `the three sockets landed on ${nodes.join(",")}`);
            }
            const PER = 10;
            for (let seq = 0; seq < PER; ++seq) {
                await Promise.all(clients.map(({c}) => cometdPublish(c, channel, {pub: c.name, seq})));
            }
            const expected = new Map(clients.map(({c}) => [c.name, new Set(Array.from({length: PER}, (_, s) => s))]));
            for (const {inbox} of clients) await inbox.waitFor(PER * clients.length, 15000);
            await sleep(QUIET_MS);
            for (const {c, inbox} of clients) {
                assert.deepEqual(sequenceFigures(inbox.data, expected),
                    {received: PER * clients.length, lost: 0, duplicated: 0, retried: 0, outOfOrder: 0}, c.name);
            }
        });
    });

    it("Faye over long-polling and over WebSocket crosses messages with CometD", async () => {
        await scenario(cluster, async pool => {
            const channel = `/cluster/faye/${nonce("c")}`;
            const lpFaye = pool.faye(cluster.url);
            const wsFaye = new faye.Client(cluster.url, {timeout: 10, retry: 1});
            pool.fayes.push(wsFaye);
            const lpInbox = new Inbox("faye-lp");
            const wsInbox = new Inbox("faye-ws");
            await fayeSubscribe(lpFaye, channel, lpInbox);
            await fayeSubscribe(wsFaye, channel, wsInbox);
            assert.equal(lpFaye._dispatcher.connectionType, "long-polling");
            const c = trackedCometD(pool, cluster.url, {name: "cometd"});
            const cInbox = new Inbox("cometd");
            await cometdHandshake(c);
            await cometdConnected(c);
            await cometdSubscribe(c, channel, m => cInbox.push(m));

            const PER = 10;
            for (let seq = 0; seq < PER; ++seq) {
                await withTimeout(Promise.resolve(lpFaye.publish(channel, {pub: "faye-lp", seq})), 5000, "faye publish");
                await withTimeout(Promise.resolve(wsFaye.publish(channel, {pub: "faye-ws", seq})), 5000, "faye publish");
                await cometdPublish(c, channel, {pub: "cometd", seq});
            }
            assert.equal(wsFaye._dispatcher.connectionType, "websocket", "the second Faye client is on WebSocket");
            const expected = new Map(["faye-lp", "faye-ws", "cometd"].map(p =>
                [p, new Set(Array.from({length: PER}, (_, s) => s))]));
            for (const inbox of [lpInbox, wsInbox, cInbox]) await inbox.waitFor(3 * PER, 15000);
            await sleep(QUIET_MS);
            for (const inbox of [lpInbox, wsInbox, cInbox]) {
                assert.deepEqual(sequenceFigures(inbox.data, expected),
                    {received: 3 * PER, lost: 0, duplicated: 0, retried: 0, outOfOrder: 0}, inbox.name);
            }
        });
    });

    it("wildcards across nodes, with one delivery per session for overlapping subscriptions", async () => {
        await scenario(cluster, async pool => {
            const base = `/cluster/wild/${nonce("w")}`;
            const sub = trackedCometD(pool, cluster.nodeUrl(0), {name: "wild-sub"});
            await cometdHandshake(sub);
            await cometdConnected(sub);
            const one = new Inbox("/*");
            const all = new Inbox("/**");
            await cometdSubscribe(sub, `${base}/*`, m => one.push(m));
            await cometdSubscribe(sub, `${base}/**`, m => all.push(m));
            const last = cluster.nodes.length - 1;
            const pub = trackedCometD(pool, cluster.nodeUrl(last), {name: "wild-pub"});
            await cometdHandshake(pub);
            await cometdPublish(pub, `${base}/a`, {n: 1});
            await cometdPublish(pub, `${base}/a/b`, {n: 2});
            await cometdPublish(pub, `${base}-other/a`, {n: 3});
            await all.waitFor(2, 10000);
            await one.waitFor(1, 10000);
            await sleep(QUIET_MS);
            assert.deepEqual(one.data, [{n: 1}]);
            assert.deepEqual(all.data, [{n: 1}, {n: 2}]);
            // One raw delivery per message for the session, however many of its subscriptions match.
            assert.equal(rawDeliveries(sub, `${base}/a`).length, 1);
            assert.equal(rawDeliveries(sub, `${base}/a/b`).length, 1);
        });
    });

    it("/api/publish on each node reaches subscribers on every node", async () => {
        await scenario(cluster, async pool => {
            const channel = `/cluster/api/${nonce("a")}`;
            const subs = [];
            for (let i = 0; i < cluster.nodes.length; ++i) {
                const s = trackedCometD(pool, cluster.nodeUrl(i), {name: `api-sub-n${i + 1}`});
                const inbox = new Inbox(s.name);
                await cometdHandshake(s);
                await cometdConnected(s);
                await cometdSubscribe(s, channel, m => inbox.push(m));
                subs.push(inbox);
            }
            const f = pool.faye(cluster.url);
            const fInbox = new Inbox("faye");
            await fayeSubscribe(f, channel, fInbox);
            subs.push(fInbox);
            for (let i = 0; i < cluster.nodes.length; ++i) {
                const r = await cluster.api("POST", "/api/publish", {channel, data: {via: `n${i + 1}`}}, {node: i});
                assert.equal(r.status, 200, JSON.stringify(r));
                assert.equal(r.body.channel, channel);
            }
            const expected = cluster.nodes.map((_, i) => ({via: `n${i + 1}`}));
            for (const inbox of subs) await inbox.waitFor(expected.length, 10000);
            await sleep(QUIET_MS);
            for (const inbox of subs) assert.deepEqual(inbox.data, expected, inbox.name);
        });
    });

    it("/api/stats on any node sums the cluster and lists every node", {skip: MULTI}, async () => {
        await scenario(cluster, async pool => {
            const clients = [];
            for (let i = 0; i < cluster.nodes.length; ++i) {
                const c = trackedCometD(pool, cluster.nodeUrl(i), {name: `stats-n${i + 1}`});
                await cometdHandshake(c);
                await cometdConnected(c);
                clients.push(c);
            }
            const channel = `/cluster/stats/${nonce("s")}`;
            for (let i = 0; i < cluster.nodes.length; ++i) {
                const r = await cluster.api("POST", "/api/publish", {channel, data: {i}}, {node: i});
                assert.equal(r.status, 200, JSON.stringify(r));
            }
            const sum = (body, key) => body.nodes.reduce((n, node) => n + (node[key] ?? 0), 0);
            for (let i = 0; i < cluster.nodes.length; ++i) {
                // Each node's figures may reach the others a moment later: poll (bounded) until they add up.
                let last;
                await waitUntil(async () => {
                    last = await cluster.api("GET", "/api/stats", undefined, {node: i});
                    const b = last.body;
                    return last.status === 200 && Array.isArray(b.nodes) && b.nodes.length === cluster.nodes.length &&
                        b.sessions === sum(b, "sessions") && b.published === sum(b, "published") &&
                        b.sessions >= clients.length && b.published >= cluster.nodes.length &&
                        // Each node has its pinned client's session and counted its own publish.
                        b.nodes.every(node => node.sessions >= 1 && node.published >= 1);
                }, 5000, `n${i + 1}'s /api/stats to list every node and sum them`).catch(err => {
                    err.message += `: ${JSON.stringify(last)}`;
                    throw err;
                });
                const ids = last.body.nodes.map(n => n.id).sort();
                assert.deepEqual(ids, ["n1", "n2", "n3"], JSON.stringify(last.body));
            }
        });
    });

    it("/api/disconnect on another node ends a session whose connect is held elsewhere", async () => {
        await scenario(cluster, async pool => {
            const c = trackedCometD(pool, cluster.nodeUrl(0), {name: "victim"});
            await cometdHandshake(c);
            await cometdConnected(c);
            const clientId = c.cometd.getClientId();
            await sleep(300); // its next connect is held on n1
            const other = cluster.nodes.length - 1;
            const r = await cluster.api("POST", "/api/disconnect", {clientId}, {node: other});
            assert.equal(r.status, 200, JSON.stringify(r));
            assert.equal(r.body.disconnected, clientId);
            // The held connect is answered at once with reconnect:none (well before the 3 s hold ends).
            await waitUntil(() => c.received.some(x => x.message.channel === "/meta/connect" &&
                x.message.advice?.reconnect === "none"), 2500, "the held connect answered with reconnect:none");
            await waitUntil(() => c.cometd.isDisconnected(), 2000, "the client to be disconnected");
            const again = await cluster.api("POST", "/api/disconnect", {clientId}, {node: 0});
            assert.equal(again.status, 404, `the session is gone cluster-wide: ${JSON.stringify(again)}`);
        });
    });
});

describe("sessions are cluster-wide", () => {
    it("a connect held on one node is superseded (HTTP 500, BAYEUX.md 2.3) when the session connects on another; " +
        "one delivery in all", async () => {
        const cluster = await startCluster({name: "fence", args: ["--timeout", "4000"]});
        const other = cluster.nodes.length - 1;
        try {
            // -> {status, messages} ([] for the superseded connect's empty body).
            const post = (i, messages) => fetch(cluster.nodeUrl(i), {method: "POST",
                headers: {"Content-Type": "application/json"}, body: JSON.stringify(messages),
                signal: AbortSignal.timeout(8000)})
                .then(async r => ({status: r.status, text: await r.text()}))
                .then(({status, text}) => ({status, messages: text ? JSON.parse(text) : []}));
            const {messages: [hs]} = await post(0, [{channel: "/meta/handshake", version: "1.0",
                supportedConnectionTypes: ["long-polling"]}]);
            const clientId = hs.clientId;
            const channel = `/cluster/fence/${nonce("f")}`;
            const {messages: [sub]} = await post(0, [{channel: "/meta/subscribe", clientId, subscription: channel}]);
            assert.equal(sub.successful, true, JSON.stringify(sub));
            const connect = {channel: "/meta/connect", clientId, connectionType: "long-polling"};
            await post(0, [{...connect, advice: {timeout: 0}}]);
            const startedAt = Date.now();
            const first = post(0, [connect]); // held on n1
            await sleep(300);
            const second = post(other, [connect]); // the same session connects on another node
            const firstReply = await first;
            const supersededAfter = Date.now() - startedAt;
            // Published while the second connect is held.
            const r = await cluster.api("POST", "/api/publish", {channel, data: {n: 1}}, {node: 0});
            assert.equal(r.status, 200, JSON.stringify(r));
            const secondReply = await second;
            const replies = {firstReply, secondReply};
            assert.ok(supersededAfter < 3000, `the connect held on n1 was answered only after ${supersededAfter} ms`);
            assert.equal(firstReply.status, 500, `the superseded connect: ${JSON.stringify(replies)}`);
            assert.equal(secondReply.status, 200, JSON.stringify(replies));
            const deliveries = [...firstReply.messages, ...secondReply.messages].filter(m => m.channel === channel);
            assert.deepEqual(deliveries.map(m => m.data), [{n: 1}], JSON.stringify(replies));
        } catch (err) {
            process.stderr.write(cluster.output());
            throw err;
        } finally {
            await cluster.stop();
        }
    });

    it("the session limit and session expiry hold cluster-wide", async () => {
        const cluster = await startCluster({name: "limit",
            args: ["--timeout", "1000", "--max-sessions", "4", "--max-interval", "1500", "--sweep-interval", "200"]});
        const handshake = i => fetch(cluster.nodeUrl(i), {method: "POST", headers: {"Content-Type": "application/json"},
            body: JSON.stringify([{channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"]}]),
            signal: AbortSignal.timeout(5000)}).then(r => r.json()).then(([m]) => m);
        try {
            // Four sessions spread over the nodes fill the cluster's limit; a fifth is refused on every node.
            const accepted = [];
            for (let i = 0; i < 4; ++i) accepted.push(await handshake(i % cluster.nodes.length));
            assert.deepEqual(accepted.map(m => m.successful), [true, true, true, true], JSON.stringify(accepted));
            for (let i = 0; i < cluster.nodes.length; ++i) {
                const refused = await handshake(i);
                assert.equal(refused.successful, false, `n${i + 1} accepted a fifth session: ${JSON.stringify(refused)}`);
            }
            // Nobody connects: the sessions expire cluster-wide, a connect on another node is told 402, and the
            // limit has room again.
            await sleep(1500 + 1500);
            const [connect] = await fetch(cluster.nodeUrl(cluster.nodes.length - 1), {method: "POST",
                headers: {"Content-Type": "application/json"}, body: JSON.stringify([{channel: "/meta/connect",
                    clientId: accepted[0].clientId, connectionType: "long-polling"}]),
                signal: AbortSignal.timeout(5000)}).then(r => r.json());
            assert.equal(connect.successful, false, JSON.stringify(connect));
            assert.match(connect.error ?? "", /^402:/);
            const again = await handshake(1 % cluster.nodes.length);
            assert.equal(again.successful, true, `no room after expiry: ${JSON.stringify(again)}`);
        } catch (err) {
            process.stderr.write(cluster.output());
            throw err;
        } finally {
            await cluster.stop();
        }
    });

    it("a raw session handshaken on one node connects, subscribes and publishes on the others", {skip: MULTI},
        async () => {
            const cluster = await startCluster({name: "raw", args: ["--timeout", "1000"]});
            try {
                const post = async (i, messages) => {
                    const r = await fetch(cluster.nodeUrl(i), {method: "POST", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify(messages)});
                    return r.json();
                };
                const [hs] = await post(0, [{channel: "/meta/handshake", version: "1.0",
                    supportedConnectionTypes: ["long-polling"]}]);
                assert.equal(hs.successful, true);
                const clientId = hs.clientId;
                const [sub] = await post(1, [{channel: "/meta/subscribe", clientId, subscription: "/raw/x"}]);
                assert.equal(sub.successful, true, `subscribe on n2: ${JSON.stringify(sub)}`);
                // The publisher is subscribed: its own message may ride on the publish reply, before the ack.
                const published = await post(2, [{channel: "/raw/x", clientId, data: {n: 1}}]);
                const pub = published.find(m => "successful" in m);
                assert.equal(pub?.successful, true, `publish on n3: ${JSON.stringify(published)}`);
                const replies = await post(0, [{channel: "/meta/connect", clientId, connectionType: "long-polling"}]);
                const connect = replies.find(m => m.channel === "/meta/connect");
                assert.equal(connect?.successful, true, JSON.stringify(replies));
                const deliveries = [...published, ...replies].filter(m => m.channel === "/raw/x" && "data" in m);
                if (deliveries.length === 0) {
                    const next = await post(2, [{channel: "/meta/connect", clientId, connectionType: "long-polling"}]);
                    deliveries.push(...next.filter(m => m.channel === "/raw/x"));
                }
                assert.deepEqual(deliveries.map(m => m.data), [{n: 1}]);
            } catch (err) {
                process.stderr.write(cluster.output());
                throw err;
            } finally {
                await cluster.stop();
            }
        });
});
