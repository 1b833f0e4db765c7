// CometD 9 ReloadExtension in Chromium (BAYEUX.md 6.4, 2.3 superseded connects, EXT-RL-1, ADV-5):
// a page on the page server's origin long-polls the broker over CORS, subscribes, then is reloaded
// (page.reload()). While the new document is loading (its script held back by a route), after the
// old page unloaded and before the new page's connect, a message is published: the session queue must
// keep it. The reloaded page must reuse the clientId (no handshake on the wire), get its first connect
// answered at once with full advice, receive the queued message exactly once, and no connect reply may
// ever carry the multiple-clients advice.
import {test} from "node:test";
import assert from "node:assert/strict";
import {startBroker} from "../lib/broker.mjs";
import {startPageServer} from "../lib/pageserver.mjs";
import {withBrowser, until, WAIT_MS} from "../lib/harness.mjs";
import {rawPublish, requestMessages} from "../lib/wire.mjs";

const HOLD_MS = 5000;
const QUIET_MS = 600;

function parseBody(entry) {
    try {
        return [].concat(JSON.parse(entry.body));
    } catch {
        return null;
    }
}

test("CometD 9 ReloadExtension: a reloaded page keeps its session and gets what was published during the reload",
    async t => {
        await withBrowser(t, async h => {
            const broker = h.track(await startBroker(["--timeout", String(HOLD_MS)]));
            const pages = h.track(await startPageServer());
            const channel = "/browser/reload";
            const ctx = await h.newContext();
            const page = await h.newPage(ctx, "reloader");
            const toBroker = () => h.wire("reloader").filter(e => e.url.startsWith(broker.origin + "/"));
            const isConnect = e => requestMessages(e).some(m => m.channel === "/meta/connect");
            const state = () => page.evaluate(() => window.bayeux.state);

            await page.goto(`${pages.origin}/pages/reload.html?url=${encodeURIComponent(broker.url)}` +
                `&channel=${encodeURIComponent(channel)}`);
            await until("the first page to subscribe", () => page.evaluate(() => window.bayeux?.state.subscribed === true));
            const clientId = await page.evaluate(() => window.bayeux.clientId());
            assert.match(clientId ?? "", /\S/);
            const m1 = {n: 1, phase: "before reload"};
            assert.equal((await rawPublish(broker.url, channel, m1)).successful, true);
            await until("m1 on the first page", async () => (await state()).messages.length >= 1);
            assert.deepEqual((await state()).messages, [m1]);
            // The first page now holds a connect at the broker.
            await until("the first page holding a connect", () => toBroker().some(e => e.status === null && isConnect(e)));

            // Reload; hold the new page's script back until the message has been published.
            let scriptRequested;
            const scriptHit = new Promise(resolve => {
                scriptRequested = resolve;
            });
            let releaseScript;
            const gate = new Promise(resolve => {
                releaseScript = resolve;
            });
            await page.route("**/pages/reload.js", async route => {
                scriptRequested();
                await gate;
                await route.continue();
            });
            const wireBefore = toBroker().length;
            const reloadStart = Date.now();
            const reloading = page.reload({timeout: WAIT_MS});
            let timer;
            await Promise.race([scriptHit, new Promise((_, reject) => {
                timer = setTimeout(() => reject(new Error("the reloaded page never requested its script")), WAIT_MS);
            })]).finally(() => clearTimeout(timer));
            // The old document is gone, the new one has no CometD yet: publish now.
            const m2 = {n: 2, phase: "during reload"};
            assert.equal((await rawPublish(broker.url, channel, m2)).successful, true);
            await new Promise(r => setTimeout(r, 300));
            releaseScript();
            await reloading;
            await page.unroute("**/pages/reload.js");

            await until("the reloaded page to receive m2 and resubscribe", async () => {
                const s = await state();
                return s.messages.length >= 1 && s.subscribed;
            });
            const m3 = {n: 3, phase: "after reload"};
            assert.equal((await rawPublish(broker.url, channel, m3)).successful, true);
            await until("m3 on the reloaded page", async () => (await state()).messages.length >= 2);
            await new Promise(r => setTimeout(r, QUIET_MS));
            const s = await state();
            // Exactly the messages published during and after the reload, once each, in order.
            assert.deepEqual(s.messages, [m2, m3]);

            // Same session: the handshake reply was replayed by the extension, never sent.
            assert.equal(await page.evaluate(() => window.bayeux.clientId()), clientId);
            assert.equal(s.handshakes.length, 1);
            assert.equal(s.handshakes[0].clientId, clientId);
            assert.equal(s.handshakes[0].ext?.reload, true, `replayed handshake: ${JSON.stringify(s.handshakes[0])}`);
            const handshakesOnWire = toBroker().filter(e => requestMessages(e).some(m => m.channel === "/meta/handshake"));
            assert.equal(handshakesOnWire.length, 1, "exactly one handshake was ever sent (before the reload)");
            assert.ok(s.sent.every(x => x.message.channel !== "/meta/handshake"), "the reloaded page sent no handshake");

            // The reloaded page's first request is its connect, with the old clientId and timeout 0 ...
            const after = toBroker().slice(wireBefore).filter(e => e.method === "POST");
            assert.ok(after.length >= 1, "requests after the reload");
            const first = requestMessages(after[0]);
            assert.equal(first.length, 1, `first request after the reload: ${JSON.stringify(first)}`);
            assert.equal(first[0].channel, "/meta/connect");
            assert.equal(first[0].clientId, clientId);
            assert.equal(first[0].advice?.timeout, 0);
            assert.equal(after[0].status, 200, `first connect after the reload -> ${after[0].status} ${after[0].body}`);
            // ... answered at once (EXT-RL-1): measured by the page between sending and receiving.
            const sentConnect = s.sent.find(x => x.message.channel === "/meta/connect");
            const connectReply = s.received.find(x => x.message.channel === "/meta/connect" && x.message.id === sentConnect.message.id);
            assert.ok(connectReply, "the reloaded page got its first connect reply");
            const latency = connectReply.at - sentConnect.at;
            assert.ok(latency < 1000, `first connect after the reload answered after ${latency} ms (hold ${HOLD_MS})`);
            assert.ok(connectReply.at - reloadStart < 5000);
            t.diagnostic(`first connect after the reload answered in ${latency} ms; ${after.length} requests after the reload`);
            // ... successful, full advice, no multiple-clients, and carrying m2 (kept in the session queue).
            const body = parseBody(after[0]);
            assert.ok(body, `JSON body: ${after[0].body}`);
            const reply = body.find(m => m.channel === "/meta/connect");
            assert.equal(reply.successful, true, JSON.stringify(reply));
            assert.equal(reply.id, first[0].id);
            assert.deepEqual(reply.advice, {reconnect: "retry", interval: 0, timeout: HOLD_MS}, JSON.stringify(reply));
            assert.deepEqual(body.filter(m => m.channel === channel).map(m => m.data), [m2],
                `m2 rides on the first connect reply: ${after[0].body}`);
            // Only one subscribe after the reload (the application's), acknowledged.
            const resubscribes = after.filter(e => requestMessages(e).some(m => m.channel === "/meta/subscribe"));
            assert.equal(resubscribes.length, 1);

            // ADV-5: no connect reply of either page load ever said multiple-clients.
            for (const e of toBroker().filter(x => isConnect(x) && x.body)) {
                for (const m of parseBody(e) ?? []) {
                    assert.ok(!m.advice?.["multiple-clients"], `multiple-clients advice: ${e.body}`);
                }
            }
            assert.ok(s.connects.every(c => c.successful && !c.advice?.["multiple-clients"]), JSON.stringify(s.connects));
            // The same browser cookie throughout.
            const cookies = toBroker().map(e => /BAYEUX_BROWSER=([^;\s]+)/.exec(e.requestHeaders?.cookie ?? "")?.[1])
                .filter(Boolean);
            assert.ok(cookies.length >= 3 && new Set(cookies).size === 1, `BAYEUX_BROWSER values: ${[...new Set(cookies)]}`);
        });
    });

// Behind an intermediary that does not pass the browser's abort on, the old page's connect is still held
// at the broker when the reloaded page connects: BAYEUX.md 2.3 "superseded connect" — the older request
// fails with HTTP 500, the newer one is answered at once, and the per-browser limit must not count the
// superseded connect (ADV-5, CometD issue 556).
test("CometD 9 ReloadExtension behind a proxy that keeps the aborted connect: superseded with 500, no multiple-clients",
    async t => {
        await withBrowser(t, async h => {
            const broker = h.track(await startBroker(["--timeout", String(HOLD_MS)]));
            const pages = h.track(await startPageServer({proxyPrefix: "/cometd", proxyTarget: broker.origin,
                keepUpstreamOnAbort: true}));
            const bayeuxUrl = `${pages.origin}${new URL(broker.url).pathname}`;
            const channel = "/browser/reload-proxied";
            const ctx = await h.newContext();
            const page = await h.newPage(ctx, "reloader");
            const state = () => page.evaluate(() => window.bayeux.state);
            const connectsAtBroker = () => pages.proxied.filter(e => {
                try {
                    return [].concat(JSON.parse(e.body)).some(m => m.channel === "/meta/connect");
                } catch {
                    return false;
                }
            });

            await page.goto(`${pages.origin}/pages/reload.html?url=${encodeURIComponent(bayeuxUrl)}` +
                `&channel=${encodeURIComponent(channel)}`);
            await until("the first page to subscribe", () => page.evaluate(() => window.bayeux?.state.subscribed === true));
            const clientId = await page.evaluate(() => window.bayeux.clientId());
            // Wait until a connect is held at the broker (the first connect is answered at once).
            await until("a held connect", () => connectsAtBroker().some(e => e.status === null));
            const held = connectsAtBroker().find(e => e.status === null);
            const heldSince = Date.now();

            await page.reload({timeout: WAIT_MS});
            await until("the reloaded page to resubscribe", async () => (await state())?.subscribed === true);
            const s1 = await state();
            assert.equal(await page.evaluate(() => window.bayeux.clientId()), clientId, "same clientId after the reload");
            assert.equal(s1.handshakes[0]?.ext?.reload, true, "handshake replayed, not sent");
            const sentConnect = s1.sent.find(x => x.message.channel === "/meta/connect");
            const reply = s1.received.find(x => x.message.channel === "/meta/connect" && x.message.id === sentConnect.message.id);
            assert.ok(reply, "first connect after the reload answered");
            const latency = reply.at - sentConnect.at;
            t.diagnostic(`first connect after the reload answered in ${latency} ms; old connect -> HTTP ${held.status}`);
            assert.equal(sentConnect.message.clientId, clientId);
            assert.equal(reply.message.successful, true, JSON.stringify(reply.message));
            assert.deepEqual(reply.message.advice, {reconnect: "retry", interval: 0, timeout: HOLD_MS},
                `EXT-RL-1/ADV-5: full advice, no multiple-clients: ${JSON.stringify(reply.message)}`);
            assert.ok(latency < 1000, `first connect after the reload answered after ${latency} ms (hold ${HOLD_MS})`);
            // The old held connect was failed at the HTTP level (500) when the new one arrived, not held to its end.
            await until("the superseded connect's status", () => held.status !== null, 3000);
            assert.equal(held.status, 500, `superseded connect answered with HTTP ${held.status}`);
            assert.ok(Date.now() - heldSince < HOLD_MS, "the superseded connect ended before its hold time");

            // The session still works, once: a message published now arrives exactly once.
            const m = {n: 1, phase: "after reload"};
            assert.equal((await rawPublish(broker.url, channel, m)).successful, true);
            await until("m on the reloaded page", async () => (await state()).messages.length >= 1);
            await new Promise(r => setTimeout(r, QUIET_MS));
            const s2 = await state();
            assert.deepEqual(s2.messages, [m]);
            assert.ok(s2.connects.every(c => c.successful && !c.advice?.["multiple-clients"]), JSON.stringify(s2.connects));
            const handshakes = pages.proxied.filter(e => /\/meta\/handshake/.test(e.body));
            assert.equal(handshakes.length, 1, "one handshake in total");
        });
    });
