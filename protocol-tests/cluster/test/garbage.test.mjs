// Garbage (issue 15): after every client has left, some by /meta/disconnect, some by simply vanishing (long-polling
// and WebSocket, with subscriptions, wildcards, the ack extension and queued messages), and after a node holding
// sessions was SIGKILLed, the sessions expire cluster-wide (short maxInterval) and the keys under the test's
// prefix return to their baseline: nothing a session or the dead node held stays in Redis.
import {it} from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import {SELF_CHECK, withCluster} from "../cluster.mjs";
import {
    Inbox, cometdConnected, cometdHandshake, cometdPublish, cometdSubscribe, nonce, scenario, sleep,
    trackedCometD, waitUntil,
} from "../clients.mjs";

const MAX_INTERVAL = 1500;

async function post(url, messages) {
    const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify(messages), signal: AbortSignal.timeout(5000)});
    return response.json();
}

/** A long-polling session that subscribes, connects once and then vanishes (no disconnect, no more connects). */
async function vanishingSession(url, channels) {
    const [hs] = await post(url, [{channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"],
        ext: {ack: true}}]);
    assert.equal(hs.successful, true, JSON.stringify(hs));
    for (const subscription of channels) {
        const [sub] = await post(url, [{channel: "/meta/subscribe", clientId: hs.clientId, subscription}]);
        assert.equal(sub.successful, true, JSON.stringify(sub));
    }
    await post(url, [{channel: "/meta/connect", clientId: hs.clientId, connectionType: "long-polling",
        advice: {timeout: 0}, ext: {ack: -1}}]);
    return hs.clientId;
}

/** A WebSocket session that subscribes, holds a connect and is then cut without a close handshake. */
async function vanishingSocket(url, channel) {
    const ws = new WebSocket(url.replace(/^http/, "ws"));
    const frames = [];
    ws.on("message", data => frames.push(...JSON.parse(data.toString())));
    await new Promise((resolve, reject) => {
        ws.once("open", resolve);
        ws.once("error", reject);
    });
    const reply = async (pred, what) => waitUntil(() => frames.find(pred), 5000, what);
    ws.send(JSON.stringify([{channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["websocket"]}]));
    const hs = await reply(m => m.channel === "/meta/handshake", "ws handshake reply");
    assert.equal(hs.successful, true, JSON.stringify(hs));
    ws.send(JSON.stringify([{channel: "/meta/subscribe", clientId: hs.clientId, subscription: channel}]));
    await reply(m => m.channel === "/meta/subscribe", "ws subscribe reply");
    ws.send(JSON.stringify([{channel: "/meta/connect", clientId: hs.clientId, connectionType: "websocket",
        advice: {timeout: 0}}]));
    await reply(m => m.channel === "/meta/connect", "ws first connect reply");
    ws.send(JSON.stringify([{channel: "/meta/connect", clientId: hs.clientId, connectionType: "websocket"}]));
    await sleep(100); // held now
    ws.terminate();
    return hs.clientId;
}

it("after every client leaves or vanishes and a node dies, the keys under the prefix return to the baseline",
    async t => {
        const args = ["--timeout", "1000", "--max-interval", String(MAX_INTERVAL), "--sweep-interval", "200"];
        await withCluster({name: "garbage", args}, async cluster => {
            // The baseline is an idle cluster that has carried traffic: keys made once for the whole cluster on its
            // first publish (a shared log, a sequence) are not garbage; anything a session or a node left is.
            const warm = await cluster.api("POST", "/api/publish", {channel: "/cluster/garbage/warm-up", data: {}});
            assert.equal(warm.status, 200, JSON.stringify(warm));
            await sleep(1000); // the nodes have registered whatever they keep
            const baselineKeys = await cluster.keys();
            const baselineStats = await cluster.api("GET", "/api/stats");
            assert.equal(baselineStats.status, 200);
            t.diagnostic(`baseline: ${baselineKeys.length} keys (${baselineKeys.slice(0, 10).join(" ")})`);

            const clientIds = [];
            let peak = 0;
            await scenario(cluster, async pool => {
                const base = `/cluster/garbage/${nonce("g")}`;
                // Clients that leave properly (the pool disconnects them at the end of the scenario).
                const inboxes = [];
                for (const [i, options] of [{}, {ack: true}, {websocket: true}].entries()) {
                    const c = trackedCometD(pool, cluster.url, {name: `leaver${i}`, ...options});
                    const inbox = new Inbox(c.name);
                    await cometdHandshake(c);
                    await cometdConnected(c);
                    await cometdSubscribe(c, `${base}/a`, m => inbox.push(m));
                    await cometdSubscribe(c, `${base}/**`, () => {});
                    clientIds.push(c.cometd.getClientId());
                    inboxes.push(inbox);
                }
                const f = pool.faye(cluster.url);
                await Promise.resolve(f.subscribe(`${base}/a`, () => {}));
                // Clients that vanish: through HAProxy (so their requests are spread) and pinned to the node that
                // will be killed.
                for (let i = 0; i < 3; ++i) clientIds.push(await vanishingSession(cluster.url, [`${base}/a`, `${base}/*`]));
                const victim = cluster.nodes.length - 1;
                clientIds.push(await vanishingSession(cluster.nodeUrl(victim), [`${base}/a`]));
                clientIds.push(await vanishingSocket(cluster.nodeUrl(victim), `${base}/a`));
                clientIds.push(await vanishingSocket(cluster.url, `${base}/a`));
                // Messages queued for everyone, the vanished ones included.
                const pub = trackedCometD(pool, cluster.url, {name: "pub"});
                await cometdHandshake(pub);
                clientIds.push(pub.cometd.getClientId());
                for (let n = 0; n < 20; ++n) await cometdPublish(pub, `${base}/a`, {n});
                for (const inbox of inboxes) await inbox.waitFor(20, 10000);
                peak = await cluster.keyCount();
                if (!SELF_CHECK) {
                    await cluster.killNode(victim);
                    await sleep(500);
                    await cluster.restartNode(victim);
                }
            });

            // Everything left or vanished: sessions expire after maxInterval (+ sweep), the keys go with them.
            let keys;
            let sessions;
            try {
                const deadline = Date.now() + 10 * MAX_INTERVAL + 5000;
                for (;;) {
                    keys = await cluster.keys();
                    sessions = (await cluster.api("GET", "/api/stats")).body.sessions;
                    if (keys.length <= baselineKeys.length && sessions === baselineStats.body.sessions) break;
                    if (Date.now() > deadline) break;
                    await sleep(250);
                }
            } finally {
                t.diagnostic(`keys: baseline ${baselineKeys.length}, peak ${peak}, after expiry ${keys?.length}; ` +
                    `sessions after expiry ${sessions}`);
            }
            const leaked = keys.filter(k => clientIds.some(id => k.includes(id)));
            assert.deepEqual(leaked, [], "keys naming a session that is gone");
            assert.equal(sessions, baselineStats.body.sessions, "sessions in /api/stats after expiry");
            assert.equal(keys.length, baselineKeys.length,
                `keys after expiry (new: ${keys.filter(k => !baselineKeys.includes(k)).join(" ")})`);
            if (!SELF_CHECK) assert.ok(peak > baselineKeys.length, `the sessions wrote no key (peak ${peak})`);
        });
    });
